"""Fast tests of tdpo_mlx.gguf on tiny GGUF files written here with gguf.GGUFWriter.

Each test writes a small model (random weights in Hugging Face layout), transforms it the way
llama.cpp's convert_hf_to_gguf.py does (llama Q/K row permutation, Gemma norm + 1), stores it
with several ggml types, imports it, and checks the MLX weights, the mlx-lm forward pass and
the tokenizer against values computed here.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import subprocess
import sys

import gguf
import mlx.core as mx
import mlx.nn as nn
import mlx_lm
import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from support.gguf_files import (
    GEMMA3,
    LLAMA,
    add_tensor,
    byte_level_vocab,
    finish,
    gguf_name,
    llamacpp_permute,
    loaded_weights,
    mlx_forward_from_weights,
    qtype_for,
    random_gemma3_hf,
    random_llama_hf,
    sentencepiece_vocab,
    stored,
    write_gemma3_like,
    write_header,
    write_llama_like,
)
from support.no_torch import SITECUSTOMIZE as _HIDE_TORCH
from transformers import AutoTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

from tdpo_mlx.atomic import write_json
from tdpo_mlx.cli import main
from tdpo_mlx.gguf import arch, reader, tokenizer
from tdpo_mlx.gguf import importer as gi

# --------------------------------------------------------------------------------------------
# permutation
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_head,rows,cols", [(4, 64, 8), (2, 32, 3), (1, 8, 1)])
def test_unpermute_inverts_llamacpp_permute(n_head, rows, cols):
    w = np.arange(rows * cols, dtype=np.float32).reshape(rows, cols)
    p = llamacpp_permute(w, n_head)
    assert not np.array_equal(p, w)  # the permutation moves rows
    np.testing.assert_array_equal(arch.unpermute_qk(p, n_head), w)
    np.testing.assert_array_equal(arch.permute_qk(w, n_head), p)


def test_permute_hand_example():
    # one head of dim 4: HF rows [r0 r1 | r2 r3] (rotate-half pairs r0-r2, r1-r3) -> llama.cpp [r0 r2 r1 r3]
    w = np.array([[0.0], [1.0], [2.0], [3.0]])
    np.testing.assert_array_equal(llamacpp_permute(w, 1)[:, 0], [0, 2, 1, 3])
    np.testing.assert_array_equal(arch.unpermute_qk(np.array([[0.0], [2.0], [1.0], [3.0]]), 1)[:, 0], [0, 1, 2, 3])


# --------------------------------------------------------------------------------------------
# llama / qwen2 / gemma3 round trips
# --------------------------------------------------------------------------------------------


def test_llama_f32_roundtrip_weights_and_forward(tmp_path):
    rng = np.random.default_rng(0)
    vocab = len(sentencepiece_vocab()[0])
    hf = random_llama_hf(rng, vocab)
    src = tmp_path / "tiny-llama.gguf"
    write_llama_like(src, "llama", hf, {"default": Q.F32})
    out = gi.import_gguf(src, tmp_path / "out")

    got = loaded_weights(out)
    assert set(got) == set(hf)
    for k, v in hf.items():
        np.testing.assert_array_equal(got[k], v, err_msg=k)  # exact: F32 storage, permutation undone

    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "llama"
    assert (cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]) == (4, 2, 16)
    assert cfg["tie_word_embeddings"] is False and cfg["rope_theta"] == 10000.0

    model, tok = mlx_lm.load(str(out))
    ids = [1, 270, 260, 265, 266, 267, 268]
    args = dict(
        model_type="llama",
        hidden_size=64,
        num_hidden_layers=2,
        intermediate_size=96,
        num_attention_heads=4,
        num_key_value_heads=2,
        rms_norm_eps=1e-6,
        vocab_size=vocab,
        rope_theta=10000.0,
        tie_word_embeddings=False,
    )
    want = mlx_forward_from_weights("llama", args, hf, ids)
    np.testing.assert_allclose(np.array(model(mx.array([ids]))[0]), want, rtol=1e-5, atol=1e-5)


def test_llama_quantized_types_roundtrip(tmp_path):
    """Q8_0 attention, Q4_0 MLP, F16 embeddings/head: the import equals quantize->dequantize of the
    Hugging Face weights, so Q/K rows (quantized after llama.cpp's permutation) land back in place."""
    rng = np.random.default_rng(1)
    vocab = len(sentencepiece_vocab()[0])
    hf = random_llama_hf(rng, vocab)
    types = {"self_attn": Q.Q8_0, "mlp": Q.Q4_0, "default": Q.F16}
    src = tmp_path / "tiny-llama-q.gguf"
    write_llama_like(src, "llama", hf, types)
    g = reader.read_gguf(src)
    assert {t.tensor_type for t in g.tensors.values()} == {Q.Q8_0, Q.Q4_0, Q.F16, Q.F32}

    got = loaded_weights(gi.import_gguf(src, tmp_path / "out"))
    for k, v in hf.items():
        want = stored(v, qtype_for(k, types))
        np.testing.assert_allclose(got[k], want, rtol=0, atol=1e-6, err_msg=k)
    # and the quantization error itself is what the type promises (rows not shuffled)
    q = "model.layers.1.self_attn.q_proj.weight"
    assert np.abs(got[q] - hf[q]).max() < 0.02
    d = "model.layers.0.mlp.down_proj.weight"
    assert np.abs(got[d] - hf[d]).max() < 0.15


def test_qwen2_names_bias_tied_and_bytelevel(tmp_path):
    rng = np.random.default_rng(2)
    vocab = len(byte_level_vocab()[0])
    hf = random_llama_hf(rng, vocab, qkv_bias=True, tied=True)
    types = {"self_attn": Q.Q8_0, "mlp": Q.Q5_0, "default": Q.F16}
    src = tmp_path / "tiny-qwen2.gguf"
    write_llama_like(src, "qwen2", hf, types, tokenizer="bytelevel", permute=False)
    out = gi.import_gguf(src, tmp_path / "out", dtype="float16")

    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "qwen2" and cfg["tie_word_embeddings"] is True
    got = loaded_weights(out)
    assert set(got) == set(hf) and "lm_head.weight" not in got
    for k, v in hf.items():
        want = stored(v, qtype_for(k, types)).astype(np.float16).astype(np.float32)
        np.testing.assert_allclose(got[k], want, rtol=0, atol=1e-6, err_msg=k)

    model, tok = mlx_lm.load(str(out))
    ids = tok.encode("hello world")
    args = dict(
        model_type="qwen2",
        hidden_size=64,
        num_hidden_layers=2,
        intermediate_size=96,
        num_attention_heads=4,
        num_key_value_heads=2,
        rms_norm_eps=1e-6,
        vocab_size=vocab,
        rope_theta=10000.0,
        tie_word_embeddings=True,
    )
    want = mlx_forward_from_weights("qwen2", args, {k: got[k] for k in got}, ids)
    logits = np.array(model(mx.array([ids]))[0].astype(mx.float32))
    np.testing.assert_allclose(logits, want, rtol=1e-2, atol=5e-2)  # float16 model vs float32 reference (|logit| ~ 10)
    assert tok.chat_template is not None and "messages" in tok.chat_template


def test_gemma3_norms_minus_one_and_config(tmp_path):
    rng = np.random.default_rng(3)
    vocab = len(sentencepiece_vocab()[0])
    h, f, nh, hd = GEMMA3["hidden"], GEMMA3["ffn"], GEMMA3["heads"], GEMMA3["head_dim"]
    hf = random_gemma3_hf(rng, vocab)
    src = tmp_path / "tiny-gemma3.gguf"
    write_gemma3_like(src, hf)

    out = gi.import_gguf(src, tmp_path / "out")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "gemma3_text"
    assert (cfg["head_dim"], cfg["query_pre_attn_scalar"], cfg["sliding_window"]) == (32, 32, 4)
    assert (cfg["rope_local_base_freq"], cfg["rope_theta"], cfg["sliding_window_pattern"]) == (10000.0, 1e6, 6)
    got = loaded_weights(out)
    assert set(got) == set(hf)
    for k, v in hf.items():
        np.testing.assert_allclose(got[k], v, rtol=0, atol=1e-6, err_msg=k)

    model, tok = mlx_lm.load(str(out))
    ids = [1, 268, 262, 269, 270, 271]
    args = dict(
        model_type="gemma3_text",
        hidden_size=h,
        num_hidden_layers=6,
        intermediate_size=f,
        num_attention_heads=nh,
        head_dim=hd,
        num_key_value_heads=1,
        vocab_size=vocab,
        sliding_window=4,
        query_pre_attn_scalar=hd,
    )
    want = mlx_forward_from_weights("gemma3_text", args, hf, ids)
    np.testing.assert_allclose(np.array(model(mx.array([ids]))[0]), want, rtol=1e-5, atol=1e-5)


def test_unsupported_architecture_names_supported_ones(tmp_path):
    src = tmp_path / "phi.gguf"
    w = gguf.GGUFWriter(str(src), "phi2")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((4, 32), np.float32))
    finish(w)
    with pytest.raises(reader.GGUFImportError, match=r"'phi2'.*gemma3, llama, qwen2"):
        gi.import_gguf(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a file nor a named source"):
        gi.import_gguf(tmp_path / "missing.gguf", tmp_path / "out")
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"NOPE" + b"\0" * 64)
    with pytest.raises(reader.GGUFImportError, match="not a GGUF file"):
        gi.import_gguf(junk, tmp_path / "out")
    with pytest.raises(ValueError, match="dtype"):
        gi.import_gguf(junk, tmp_path / "out", dtype="int8")
    assert gi.resolve_model_path("mlx-community/some-model") == "mlx-community/some-model"


def test_existing_output_needs_overwrite(tmp_path):
    rng = np.random.default_rng(4)
    hf = random_llama_hf(rng, len(sentencepiece_vocab()[0]))
    src = tmp_path / "m.gguf"
    write_llama_like(src, "llama", hf, {"default": Q.F16})
    out = tmp_path / "out"
    out.mkdir()
    (out / "x").write_text("keep")
    with pytest.raises(FileExistsError, match="--force"):
        gi.import_gguf(src, out)
    assert (out / "x").read_text() == "keep"
    gi.import_gguf(src, out, overwrite=True)
    assert not (out / "x").exists() and gi.is_complete_import(out)


def test_quantize_4bit(tmp_path):

    rng = np.random.default_rng(5)
    vocab = len(sentencepiece_vocab()[0])
    hf = random_llama_hf(rng, vocab)
    src = tmp_path / "m.gguf"
    write_llama_like(src, "llama", hf, {"default": Q.F32})
    out = gi.import_gguf(src, tmp_path / "q4", quantize=4, group_size=32)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["quantization"]["bits"] == 4 and cfg["quantization"]["group_size"] == 32
    model, _ = mlx_lm.load(str(out))

    q = model.model.layers[0].self_attn.q_proj
    assert isinstance(q, nn.QuantizedLinear) and q.bits == 4
    deq = np.array(mx.dequantize(q.weight, q.scales, q.biases, group_size=32, bits=4))
    w = hf["model.layers.0.self_attn.q_proj.weight"]
    assert np.abs(deq - w).max() < 0.1 < np.abs(w).max()  # 4-bit error, still the same matrix


# --------------------------------------------------------------------------------------------
# tokenizers
# --------------------------------------------------------------------------------------------


def _tokenizer_from(tmp_path, write):
    src = tmp_path / "tok.gguf"
    w = gguf.GGUFWriter(str(src), "llama")
    write_header(w, "llama", **LLAMA)
    write(w)
    w.add_tensor("token_embd.weight", np.zeros((4, 32), np.float32))
    finish(w)
    out = tmp_path / "tok"
    out.mkdir()
    tokenizer.save_tokenizer(reader.read_gguf(src), out)

    return AutoTokenizer.from_pretrained(str(out))


def test_sentencepiece_tokenizer(tmp_path):
    tokens, scores, types = sentencepiece_vocab()

    def write(w):
        w.add_tokenizer_model("llama")
        w.add_token_list(tokens)
        w.add_token_scores(scores)
        w.add_token_types(types)
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
        w.add_unk_token_id(0)
        w.add_add_bos_token(True)

    tok = _tokenizer_from(tmp_path, write)
    idx = {t: i for i, t in enumerate(tokens)}
    # "hello world" -> "▁hello▁world": merges ll, ▁h, ▁he, llo, ▁hello; "▁w" is no token
    want = [1, idx["\u2581hello"], idx["\u2581"], idx["w"], idx["o"], idx["r"], idx["l"], idx["d"]]
    assert tok("hello world")["input_ids"] == want
    # é is not in the vocabulary: byte fallback to its UTF-8 bytes C3 A9
    assert tok("\u00e9")["input_ids"] == [1, idx["\u2581"], 3 + 0xC3, 3 + 0xA9]
    for s in ["hello world", "h\u00e9llo w\u00f6rld \u2713", "bad  spacing"]:
        assert tok.decode(tok(s)["input_ids"], skip_special_tokens=True) == s
    assert (tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (1, 2, 0)
    assert tok.pad_token is None or tok.pad_token_id == 2  # no pad in the file: EOS pads


def test_byte_level_tokenizer(tmp_path):
    tokens, types, merges = byte_level_vocab()

    def write(w):
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("qwen2")
        w.add_token_list(tokens)
        w.add_token_types(types)
        w.add_token_merges(merges)
        w.add_eos_token_id(len(tokens) - 1)
        w.add_add_bos_token(False)

    tok = _tokenizer_from(tmp_path, write)
    idx = {t: i for i, t in enumerate(tokens)}
    assert tok("hello world<|endoftext|>")["input_ids"] == [idx["hello"], idx["\u0120world"], len(tokens) - 1]
    # é = C3 A9 -> the two byte-alphabet characters
    b2u = bytes_to_unicode()
    assert tok("\u00e9")["input_ids"] == [idx[b2u[0xC3]], idx[b2u[0xA9]]]
    for s in ["hello world", "h\u00e9llo w\u00f6rld \u2713 \u4e16\u754c", "  spaced\n\nlines\t"]:
        assert tok.decode(tok(s)["input_ids"]) == s
    assert tok.eos_token == "<|endoftext|>" and tok.pad_token_id == len(tokens) - 1


def test_gemma_style_tokenizer_no_prefix_and_space_tokens(tmp_path):
    """Gemma files: no space prefix, runs of spaces stored as real spaces, '\\n\\n' user-defined."""
    tokens, scores, types = sentencepiece_vocab()
    tokens = tokens + ["  ", "\n\n"]
    scores = scores + [-100.0, -101.0]
    types = types + [1, 4]

    def write(w):
        w.add_tokenizer_model("llama")
        w.add_token_list(tokens)
        w.add_token_scores(scores)
        w.add_token_types(types)
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
        w.add_add_bos_token(True)
        w.add_add_space_prefix(False)

    # the architecture decides Gemma handling: rewrite the file's arch via a gemma3 writer
    src = tmp_path / "g.gguf"
    w = gguf.GGUFWriter(str(src), "gemma3")
    write(w)
    w.add_tensor("token_embd.weight", np.zeros((4, 32), np.float32))
    finish(w)
    out = tmp_path / "gtok"
    out.mkdir()
    tokenizer.save_tokenizer(reader.read_gguf(src), out)

    tok = AutoTokenizer.from_pretrained(str(out))
    idx = {t: i for i, t in enumerate(tokens)}
    two, nn_ = len(tokens) - 2, len(tokens) - 1
    assert tok("hello")["input_ids"] == [1, idx["h"], idx["e"], idx["llo"]]  # no "▁hello": no prefix space
    assert tok("a  b")["input_ids"] == [1, idx["a"], two, idx["b"]]
    assert tok("a\n\nb")["input_ids"] == [1, idx["a"], nn_, idx["b"]]
    for s in ["a  b", "a\n\nb", "hello world"]:
        assert tok.decode(tok(s)["input_ids"], skip_special_tokens=True) == s


# --------------------------------------------------------------------------------------------
# named sources and the cache
# --------------------------------------------------------------------------------------------


def test_resolve_model_path_reuses_complete_import(tmp_path, monkeypatch):
    monkeypatch.setenv("TDPO_MLX_CACHE", str(tmp_path / "cache"))
    calls = []

    def fake_import(source, out, dtype="float32", quantize=None, **kw):
        calls.append(source)
        out.mkdir(parents=True)
        write_json(out / gi.MARKER_FILE, {"importer_version": gi.IMPORTER_VERSION})
        return out

    monkeypatch.setattr(gi, "import_gguf", fake_import)
    stale = tmp_path / "cache" / "models" / ".gemma3-270m.tmpabc"  # an interrupted earlier import
    stale.mkdir(parents=True)
    p1 = gi.resolve_model_path("gemma3-270m")
    p2 = gi.resolve_model_path("gemma3-270m")
    assert p1 == p2 == str(tmp_path / "cache" / "models" / "gemma3-270m")
    assert calls == ["gemma3-270m"]
    assert not stale.exists()


def test_cli_import_gguf(tmp_path, capsys):

    rng = np.random.default_rng(6)
    hf = random_llama_hf(rng, len(sentencepiece_vocab()[0]))
    src = tmp_path / "m.gguf"
    write_llama_like(src, "llama", hf, {"default": Q.Q8_0})
    out = tmp_path / "cli-out"
    assert main(["import-gguf", str(src), "--out", str(out), "--dtype", "bfloat16"]) == 0
    assert "imported" in (text := capsys.readouterr().out) and "(weights bfloat16;" in text  # read back
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["torch_dtype"] == "bfloat16" and gi.is_complete_import(out)

    assert mx.load(str(out / "model.safetensors"))["model.norm.weight"].dtype == mx.bfloat16
    # existing output without --force: error exit, message names the fix
    assert main(["import-gguf", str(src), "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err


def test_llama3_rope_freqs_become_llama3_rope_scaling(tmp_path):
    """Llama 3.x files carry rope_freqs.weight (llama.cpp LlamaModel.generate_extra_tensors) instead of
    the rope_scaling config; the importer recognises the published parameters."""

    head_dim, base, factor = 16, 500000.0, 32.0
    freqs = [1.0 / base ** (i / head_dim) for i in range(0, head_dim, 2)]
    low_wl, high_wl = 8192 / 1.0, 8192 / 4.0
    rope_factors = []  # verbatim logic of convert_hf_to_gguf.py
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < high_wl:
            rope_factors.append(1)
        elif wavelen > low_wl:
            rope_factors.append(factor)
        else:
            smooth = (8192 / wavelen - 1.0) / (4.0 - 1.0)
            rope_factors.append(1 / ((1 - smooth) / factor + smooth))
    rng = np.random.default_rng(7)
    hf = random_llama_hf(rng, len(sentencepiece_vocab()[0]))
    src = tmp_path / "l3.gguf"
    w = gguf.GGUFWriter(str(src), "llama")
    write_header(w, "llama", **LLAMA, theta=base)
    w.add_rope_dimension_count(head_dim)
    w.add_tensor("rope_freqs.weight", np.asarray(rope_factors, np.float32))
    for name, arr in hf.items():
        add_tensor(w, gguf_name(name), arr, Q.F16)
    finish(w)
    g = reader.read_gguf(src)
    cfg = arch.model_config(g)
    assert cfg["rope_scaling"] == {
        "rope_type": "llama3",
        "factor": 32.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }
    assert cfg["rope_theta"] == base
    assert "rope_freqs.weight" not in dict(arch.iter_weights(g, cfg))


def test_unknown_rope_freqs_is_an_error(tmp_path):
    rng = np.random.default_rng(8)
    hf = random_llama_hf(rng, len(sentencepiece_vocab()[0]))
    src = tmp_path / "odd.gguf"
    w = gguf.GGUFWriter(str(src), "llama")
    write_header(w, "llama", **LLAMA)
    w.add_rope_dimension_count(16)
    w.add_tensor("rope_freqs.weight", np.full(8, 3.0, np.float32))
    for name, arr in hf.items():
        add_tensor(w, gguf_name(name), arr, Q.F16)
    finish(w)
    with pytest.raises(reader.GGUFImportError, match="rope_freqs"):
        gi.import_gguf(src, tmp_path / "out")


def test_import_works_without_torch(tmp_path):
    """With torch unimportable (as on a machine without it): import, quantize, mlx_lm.load, AutoTokenizer."""

    rng = np.random.default_rng(9)
    src = tmp_path / "m.gguf"
    write_llama_like(src, "llama", random_llama_hf(rng, len(sentencepiece_vocab()[0])), {"default": Q.Q8_0})
    code = (
        _HIDE_TORCH
        + f"""
try:
    import torch
except ModuleNotFoundError:
    pass
else:
    raise SystemExit("torch blocker failed")
import tdpo_mlx.gguf.importer as gi, mlx_lm, mlx.core as mx
out = gi.import_gguf({str(src)!r}, {str(tmp_path / "o")!r}, quantize=8, group_size=32)
model, tok = mlx_lm.load(str(out))
assert tok.encode("hello world")[0] == 1
mx.eval(model(mx.array([[1, 2, 3]])))
from transformers import AutoTokenizer
assert AutoTokenizer.from_pretrained(str(out))("hello")["input_ids"][0] == 1
assert "torch" not in sys.modules
"""
    )
    root = pathlib.Path(__file__).resolve().parents[1]
    r = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=str(tmp_path),
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    assert r.returncode == 0, r.stderr[-3000:]


PARITY_TEXTS = [
    "hello world",
    "hello  hello\n\nworld",
    "h\u00e9llo w\u00f6rld \u2713",
    " lead",
    "trail ",
    "\u4e16\u754c ab ba",
    "",
]


@pytest.mark.parametrize("kind", ["sp", "bytelevel"])
def test_tokenizer_parity_with_transformers_gguf_builders(tmp_path, kind):
    """Same ids as transformers' own GGUF tokenizer builders (transformers >= 5; torch-free)."""
    mapping = pytest.importorskip("transformers.integrations.gguf.gguf_tokenizer_mapping")
    src = tmp_path / "t.gguf"
    rng = np.random.default_rng(10)
    arch = "llama" if kind == "sp" else "qwen2"
    write_llama_like(src, arch, random_llama_hf(rng, 8), {"default": Q.F16}, tokenizer=kind, permute=False)
    g = reader.read_gguf(src)
    md = g.metadata
    d = {
        "tokenizer_type": md["tokenizer.ggml.model"],
        "tokens": md["tokenizer.ggml.tokens"],
        "token_type": md["tokenizer.ggml.token_type"],
        "pre_tokenizer_type": md.get("tokenizer.ggml.pre"),
    }
    if kind == "sp":
        d["scores"] = md["tokenizer.ggml.scores"]
    else:
        d["merges"] = md["tokenizer.ggml.merges"]
    ref, _ = mapping.convert_gguf_tokenizer(arch, d)
    ours, _ = tokenizer.build_tokenizer(g)
    for s in PARITY_TEXTS:
        if kind == "sp" and s.startswith(" "):
            # llama.cpp (and sentencepiece's add_dummy_prefix) always prepend "▁": " lead" -> "▁▁lead";
            # transformers' Metaspace skips the prefix when the text already starts with a space.
            ids = ours.encode(s, add_special_tokens=False).ids
            assert ids[:2] == [259, 259] and ref.encode(s, add_special_tokens=False).ids == ids[1:]
            continue
        assert ours.encode(s, add_special_tokens=False).ids == ref.encode(s, add_special_tokens=False).ids, s
