"""Tiny GGUF files written here with ``gguf.GGUFWriter`` (nothing is downloaded).

Random weights in Hugging Face layout (``random_llama_hf``), transformed the way llama.cpp's
convert_hf_to_gguf.py does (llama Q/K row permutation, ``llamacpp_permute``), stored with several
ggml types (``add_tensor``; ``stored`` gives back what a type keeps), with a tiny SentencePiece or
byte-level tokenizer (``sentencepiece_vocab``, ``byte_level_vocab``): ``write_llama_like`` writes a
whole file. ``mlx_forward_from_weights`` is the reference forward, ``loaded_weights`` reads an
imported model back.
"""

from __future__ import annotations

import importlib

import mlx.core as mx
import numpy as np
from gguf import GGMLQuantizationType as Q
from gguf import GGUFWriter
from gguf.quants import dequantize, quantize
from transformers.convert_slow_tokenizer import bytes_to_unicode


def llamacpp_permute(weights: np.ndarray, n_head: int, n_head_kv: int | None = None) -> np.ndarray:
    """Verbatim from llama.cpp convert_hf_to_gguf.py (LlamaModel.permute)."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def stored(w: np.ndarray, qtype) -> np.ndarray:
    """What a GGUF tensor of type ``qtype`` gives back for ``w`` (quantize -> dequantize)."""
    if qtype == Q.F32:
        return w.astype(np.float32)
    if qtype == Q.F16:
        return w.astype(np.float16).astype(np.float32)
    return dequantize(quantize(w.astype(np.float32), qtype), qtype).reshape(w.shape)


def add_tensor(writer, name: str, w: np.ndarray, qtype) -> None:
    if qtype == Q.F32:
        writer.add_tensor(name, w.astype(np.float32))
    elif qtype == Q.F16:
        writer.add_tensor(name, w.astype(np.float16))
    else:
        writer.add_tensor(name, quantize(w.astype(np.float32), qtype), raw_dtype=qtype)


SP_PIECES = ["\u2581", "h", "e", "l", "o", "w", "r", "d", "a", "b", "ll", "\u2581h", "\u2581he", "llo", "\u2581hello"]


def sentencepiece_vocab():
    """A tiny llama-style (SentencePiece BPE, byte fallback) vocabulary: tokens, scores, types."""
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + SP_PIECES
    types = [2, 3, 3] + [6] * 256 + [1] * len(SP_PIECES)
    scores = [0.0] * 259 + [-float(i) for i in range(len(SP_PIECES))]
    return tokens, scores, types


def byte_level_vocab():
    """A tiny gpt2/qwen2-style byte-level BPE vocabulary with merges."""
    alphabet = list(bytes_to_unicode().values())
    merges = ["h e", "l l", "he ll", "hell o", "\u0120 w", "o r", "\u0120w or", "\u0120wor l", "\u0120worl d"]
    tokens = alphabet + ["".join(m.split(" ")) for m in merges] + ["<|endoftext|>"]
    types = [1] * (len(tokens) - 1) + [3]
    return tokens, types, merges


def write_header(w, arch, *, n_layers, hidden, ffn, heads, kv_heads, head_dim=None, eps=1e-6, theta=10000.0):
    w.add_block_count(n_layers)
    w.add_context_length(256)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_layer_norm_rms_eps(eps)
    w.add_rope_freq_base(theta)
    if head_dim is not None:
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)


def finish(w):
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


# tiny llama: hidden 64, 4 heads of 16, 2 kv heads (GQA), ffn 96
LLAMA = dict(n_layers=2, hidden=64, ffn=96, heads=4, kv_heads=2)


def random_llama_hf(rng, vocab: int, *, qkv_bias: bool = False, tied: bool = False):
    h, f, nh, nkv = LLAMA["hidden"], LLAMA["ffn"], LLAMA["heads"], LLAMA["kv_heads"]
    hd = h // nh
    w = {"model.embed_tokens.weight": rng.normal(0, 0.5, (vocab, h)), "model.norm.weight": 1 + 0.1 * rng.normal(size=h)}
    if not tied:
        w["lm_head.weight"] = rng.normal(0, 0.2, (vocab, h))
    for i in range(LLAMA["n_layers"]):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = 1 + 0.1 * rng.normal(size=h)
        w[p + "post_attention_layernorm.weight"] = 1 + 0.1 * rng.normal(size=h)
        w[p + "self_attn.q_proj.weight"] = rng.normal(0, 0.2, (nh * hd, h))
        w[p + "self_attn.k_proj.weight"] = rng.normal(0, 0.2, (nkv * hd, h))
        w[p + "self_attn.v_proj.weight"] = rng.normal(0, 0.2, (nkv * hd, h))
        w[p + "self_attn.o_proj.weight"] = rng.normal(0, 0.2, (h, nh * hd))
        w[p + "mlp.gate_proj.weight"] = rng.normal(0, 0.2, (f, h))
        w[p + "mlp.up_proj.weight"] = rng.normal(0, 0.2, (f, h))
        w[p + "mlp.down_proj.weight"] = rng.normal(0, 0.2, (h, f))
        if qkv_bias:
            w[p + "self_attn.q_proj.bias"] = rng.normal(0, 0.2, nh * hd)
            w[p + "self_attn.k_proj.bias"] = rng.normal(0, 0.2, nkv * hd)
            w[p + "self_attn.v_proj.bias"] = rng.normal(0, 0.2, nkv * hd)
    return {k: v.astype(np.float32) for k, v in w.items()}


HF_TO_GGUF = {
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
}
GEMMA_HF_TO_GGUF = dict(
    HF_TO_GGUF,
    **{
        "post_attention_layernorm.weight": "post_attention_norm.weight",
        "pre_feedforward_layernorm.weight": "ffn_norm.weight",
        "post_feedforward_layernorm.weight": "post_ffw_norm.weight",
    },
)


def gguf_name(hf: str, table=HF_TO_GGUF) -> str:
    top = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight",
    }
    if hf in top:
        return top[hf]
    _, _, i, rest = hf.split(".", 3)
    return f"blk.{i}.{table[rest]}"


def qtype_for(hf: str, types: dict) -> object:
    if hf.endswith("norm.weight") or hf.endswith(".bias"):
        return Q.F32
    for key, q in types.items():
        if key in hf:
            return q
    return types["default"]


def add_sentencepiece_tokenizer(w) -> None:
    """The metadata of :func:`sentencepiece_vocab`: a ``llama`` tokenizer, BOS 1 (added), EOS 2."""
    tokens, scores, ttypes = sentencepiece_vocab()
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(ttypes)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(True)


def write_llama_like(path, arch, hf, types, tokenizer="sp", permute=True):
    nh, nkv = LLAMA["heads"], LLAMA["kv_heads"]
    w = GGUFWriter(str(path), arch)
    write_header(w, arch, **LLAMA)
    w.add_rope_dimension_count(LLAMA["hidden"] // nh)
    if tokenizer == "sp":
        add_sentencepiece_tokenizer(w)
        w.add_unk_token_id(0)
    else:
        tokens, ttypes, merges = byte_level_vocab()
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("qwen2")
        w.add_token_list(tokens)
        w.add_token_types(ttypes)
        w.add_token_merges(merges)
        w.add_eos_token_id(len(tokens) - 1)
        w.add_pad_token_id(len(tokens) - 1)
        w.add_add_bos_token(False)
        w.add_chat_template("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}")
    for name, arr in hf.items():
        if permute and name.endswith(("q_proj.weight", "q_proj.bias")):
            arr = llamacpp_permute(arr, nh, nh)
        elif permute and name.endswith(("k_proj.weight", "k_proj.bias")):
            arr = llamacpp_permute(arr, nh, nkv)
        add_tensor(w, gguf_name(name), arr, qtype_for(name, types))
    finish(w)


def mlx_forward_from_weights(model_type, args: dict, weights: dict, ids):
    """Logits of an mlx-lm model built directly from Hugging Face weights (the reference)."""
    mod = importlib.import_module(f"mlx_lm.models.{model_type}")
    model = mod.Model(mod.ModelArgs.from_dict(args))
    ws = {k: mx.array(v) for k, v in weights.items()}
    ws = model.sanitize(ws) if hasattr(model, "sanitize") else ws
    model.load_weights(list(ws.items()), strict=True)
    return np.array(model(mx.array([ids]))[0])


def loaded_weights(model_dir):
    """The float32 weights of an imported model directory, by name."""
    return {k: np.array(v.astype(mx.float32)) for k, v in mx.load(str(model_dir / "model.safetensors")).items()}


# tiny gemma3: hidden 64, 2 heads of 32, 1 kv head, ffn 128; mlx-lm's gemma3_text needs
# >= sliding_window_pattern (6) layers, and layer 5 is the global one
GEMMA3 = dict(n_layers=6, hidden=64, ffn=128, heads=2, kv_heads=1, head_dim=32)


def random_gemma3_hf(rng, vocab: int) -> dict:
    """Random float32 gemma3 weights in Hugging Face layout (norm weights around 0: Gemma adds 1)."""
    h, f, nh, hd = GEMMA3["hidden"], GEMMA3["ffn"], GEMMA3["heads"], GEMMA3["head_dim"]
    hf = {"model.embed_tokens.weight": rng.normal(0, 0.5, (vocab, h)), "model.norm.weight": 0.1 * rng.normal(size=h)}
    for i in range(GEMMA3["n_layers"]):
        p = f"model.layers.{i}."
        for n in (
            "input_layernorm",
            "post_attention_layernorm",
            "pre_feedforward_layernorm",
            "post_feedforward_layernorm",
        ):
            hf[p + n + ".weight"] = 0.1 * rng.normal(size=h)
        hf[p + "self_attn.q_norm.weight"] = 0.1 * rng.normal(size=hd)
        hf[p + "self_attn.k_norm.weight"] = 0.1 * rng.normal(size=hd)
        hf[p + "self_attn.q_proj.weight"] = rng.normal(0, 0.2, (nh * hd, h))
        hf[p + "self_attn.k_proj.weight"] = rng.normal(0, 0.2, (hd, h))
        hf[p + "self_attn.v_proj.weight"] = rng.normal(0, 0.2, (hd, h))
        hf[p + "self_attn.o_proj.weight"] = rng.normal(0, 0.2, (h, nh * hd))
        hf[p + "mlp.gate_proj.weight"] = rng.normal(0, 0.2, (f, h))
        hf[p + "mlp.up_proj.weight"] = rng.normal(0, 0.2, (f, h))
        hf[p + "mlp.down_proj.weight"] = rng.normal(0, 0.2, (h, f))
    return {k: v.astype(np.float32) for k, v in hf.items()}


def write_gemma3_like(path, hf: dict, chat_template: str | None = None) -> None:
    """A gemma3 GGUF of ``hf`` (F32) with the SentencePiece vocabulary, no space prefix (as Gemma)."""
    w = GGUFWriter(str(path), "gemma3")
    write_header(w, "gemma3", **GEMMA3, theta=1e6)
    w.add_sliding_window(4)
    add_sentencepiece_tokenizer(w)
    w.add_add_space_prefix(False)
    if chat_template is not None:
        w.add_chat_template(chat_template)
    for name, arr in hf.items():
        if name.endswith("norm.weight"):
            arr = arr + 1.0  # convert_hf_to_gguf.py Gemma3Model: norm weights stored as w + 1
        add_tensor(w, gguf_name(name, GEMMA_HF_TO_GGUF), arr, Q.F32)
    finish(w)
