"""Architectures: GGUF hyper-parameters -> mlx-lm config, GGUF tensor names -> Hugging Face
names, and the transforms llama.cpp's ``convert_hf_to_gguf.py`` applies, undone:

* gemma3: every ``*norm.weight`` is stored as ``w + 1`` (llama.cpp's RMSNorm multiplies by the
  weight; Gemma's by ``1 + w``). mlx-lm's ``gemma3_text.RMSNorm`` computes ``rms_norm(x, 1 + w)``,
  so we store ``w = gguf - 1``. Fields the GGUF lacks (local rope base 10000, sliding-window
  pattern 6, ``query_pre_attn_scalar``) come from Google's published Gemma 3 configs.
* llama: Q and K rows are permuted for llama.cpp's interleaved rotary layout
  (``convert_hf_to_gguf.LlamaModel.permute``); :func:`unpermute_qk` inverts it.
* qwen2: names only (llama.cpp keeps the NeoX rotary layout there).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from .reader import GGUFContents, GGUFImportError

SUPPORTED_ARCHITECTURES = ("gemma3", "llama", "qwen2")


# GGUF per-layer suffix -> Hugging Face per-layer name (shared by llama/qwen2; gemma3 below)
_LLAMA_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.bias": "self_attn.o_proj.bias",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}

_GEMMA3_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q_norm.weight": "self_attn.q_norm.weight",
    "attn_k_norm.weight": "self_attn.k_norm.weight",
    "post_attention_norm.weight": "post_attention_layernorm.weight",
    "ffn_norm.weight": "pre_feedforward_layernorm.weight",
    "post_ffw_norm.weight": "post_feedforward_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}

_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}

# tensors llama.cpp derives at conversion time and that have no HF counterpart
DERIVED_TENSORS = {"rope_freqs.weight"}

_LAYER_RE = re.compile(r"^blk\.(\d+)\.(.+)$")


def hf_tensor_name(gguf_name: str, architecture: str) -> str:
    """Hugging Face / mlx-lm name for a GGUF tensor name (``blk.3.attn_q.weight`` ->
    ``model.layers.3.self_attn.q_proj.weight``). Raises GGUFImportError for unknown names."""
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    m = _LAYER_RE.match(gguf_name)
    table = _GEMMA3_LAYER_NAMES if architecture == "gemma3" else _LLAMA_LAYER_NAMES
    if m and m.group(2) in table:
        return f"model.layers.{m.group(1)}.{table[m.group(2)]}"
    raise GGUFImportError(
        f"tensor {gguf_name!r} has no known counterpart for architecture {architecture!r}; "
        f"this GGUF variant is not supported (known layer tensors: {sorted(table)})"
    )


def gguf_tensor_name(hf_name: str, architecture: str) -> str:
    """Inverse of :func:`hf_tensor_name`: GGUF name of a Hugging Face tensor name
    (``model.layers.3.self_attn.q_proj.weight`` -> ``blk.3.attn_q.weight``).
    Raises GGUFImportError for names without a GGUF counterpart."""
    for g, h in _GLOBAL_NAMES.items():
        if h == hf_name:
            return g
    table = _GEMMA3_LAYER_NAMES if architecture == "gemma3" else _LLAMA_LAYER_NAMES
    m = re.match(r"^model\.layers\.(\d+)\.(.+)$", hf_name)
    if m:
        for g, h in table.items():
            if h == m.group(2):
                return f"blk.{m.group(1)}.{g}"
    raise GGUFImportError(f"tensor {hf_name!r} has no GGUF counterpart for architecture {architecture!r}")


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's ``LlamaModel.permute`` (convert_hf_to_gguf.py): HF rotate-half row layout ->
    llama.cpp's interleaved pairs. ``w``: (n_head*head_dim, ...) rows; returns the same shape."""
    shape = w.shape
    return w.reshape(n_head, 2, shape[0] // n_head // 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of :func:`permute_qk`: GGUF llama Q/K rows back to the Hugging Face layout."""
    shape = w.shape
    if shape[0] % (2 * n_head):
        raise GGUFImportError(f"cannot un-permute a Q/K tensor with {shape[0]} rows over {n_head} heads")
    return w.reshape(n_head, shape[0] // n_head // 2, 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def _vocab_size(g: GGUFContents) -> int:
    t = g.tensors.get("token_embd.weight")
    if t is not None:
        return int(t.shape.tolist()[1])
    return len(g.metadata.get("tokenizer.ggml.tokens") or [])


def _common_config(g: GGUFContents) -> dict[str, Any]:
    n_heads = int(g.require("attention.head_count"))
    n_kv = g.arch_value("attention.head_count_kv", n_heads)
    hidden = int(g.require("embedding_length"))
    cfg = {
        "hidden_size": hidden,
        "num_hidden_layers": int(g.require("block_count")),
        "intermediate_size": int(g.require("feed_forward_length")),
        "num_attention_heads": n_heads,
        "num_key_value_heads": int(n_kv),
        "rms_norm_eps": float(g.arch_value("attention.layer_norm_rms_epsilon", 1e-6)),
        "vocab_size": _vocab_size(g),
        "max_position_embeddings": int(g.arch_value("context_length", 4096)),
        "rope_theta": float(g.arch_value("rope.freq_base", 10000.0)),
    }
    md = g.metadata
    for key, hf in (
        ("bos_token_id", "bos_token_id"),
        ("eos_token_id", "eos_token_id"),
        ("padding_token_id", "pad_token_id"),
    ):
        if f"tokenizer.ggml.{key}" in md:
            cfg[hf] = int(md[f"tokenizer.ggml.{key}"])
    return cfg


def _rope_scaling(g: GGUFContents) -> dict[str, Any] | None:
    kind = g.arch_value("rope.scaling.type")
    factor = g.arch_value("rope.scaling.factor")
    if kind in (None, "none") or not factor or float(factor) == 1.0:
        return None
    if kind == "linear":
        return {"rope_type": "linear", "factor": float(factor)}
    if kind == "yarn":
        out = {"rope_type": "yarn", "factor": float(factor)}
        orig = g.arch_value("rope.scaling.original_context_length")
        if orig:
            out["original_max_position_embeddings"] = int(orig)
        return out
    raise GGUFImportError(f"{g.path}: rope scaling type {kind!r} is not supported (supported: linear, yarn)")


def _gemma3_config(g: GGUFContents) -> dict[str, Any]:
    cfg = _common_config(g)
    head_dim = int(g.arch_value("attention.key_length", cfg["hidden_size"] // cfg["num_attention_heads"]))
    # Published Gemma 3 configs: query_pre_attn_scalar = head_dim, except 27B (hidden/heads = 168).
    # llama.cpp (src/llama-model.cpp, LLM_ARCH_GEMMA3) uses the same rule.
    if cfg["hidden_size"] == 5376 and cfg["num_attention_heads"] == 32:
        qscale = cfg["hidden_size"] // cfg["num_attention_heads"]
    else:
        qscale = head_dim
    n = cfg["num_hidden_layers"]
    pattern = _sliding_window_pattern(g, n)
    cfg.update(
        {
            "architectures": ["Gemma3ForCausalLM"],
            "model_type": "gemma3_text",
            "head_dim": head_dim,
            "query_pre_attn_scalar": qscale,
            "rope_local_base_freq": float(g.arch_value("rope.freq_base_swa", 10000.0)),
            "sliding_window": int(g.arch_value("attention.sliding_window", 512)),
            "sliding_window_pattern": pattern,
            "layer_types": ["full_attention" if (i + 1) % pattern == 0 else "sliding_attention" for i in range(n)],
            "hidden_activation": "gelu_pytorch_tanh",
            "final_logit_softcapping": None,
            "attn_logit_softcapping": None,
            "attention_bias": False,
            "rope_scaling": _rope_scaling(g),
            "tie_word_embeddings": "output.weight" not in g.tensors,
        }
    )
    return cfg


def _sliding_window_pattern(g: GGUFContents, n_layers: int) -> int:
    """Gemma 3's period of sliding-window layers (every ``pattern``-th layer is global).

    Newer converters write ``{arch}.attention.sliding_window_pattern`` (an int, or one bool per
    layer, True = sliding); older files omit it and llama.cpp hard-codes 6 (published configs)."""
    value = g.arch_value("attention.sliding_window_pattern")
    if value is None:
        return 6
    if isinstance(value, list):
        flags = [bool(v) for v in value]
        if all(flags) or not flags:
            raise GGUFImportError(
                f"{g.path}: no global-attention layer in sliding_window_pattern; not a Gemma 3 layout"
            )
        pattern = flags.index(False) + 1
        if flags != [(i + 1) % pattern != 0 for i in range(len(flags))]:
            raise GGUFImportError(
                f"{g.path}: sliding-window layers {flags} do not repeat with a fixed period; "
                "mlx-lm's gemma3_text needs a periodic pattern"
            )
        return pattern
    return int(value)


def _llama_config(g: GGUFContents) -> dict[str, Any]:
    cfg = _common_config(g)
    head_dim = g.arch_value("rope.dimension_count") or g.arch_value("attention.key_length")
    head_dim = int(head_dim or cfg["hidden_size"] // cfg["num_attention_heads"])
    if "rope_freqs.weight" in g.tensors:
        scaling = _llama3_rope_scaling(g, head_dim, cfg["rope_theta"])
    else:
        scaling = _rope_scaling(g)
    cfg.update(
        {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "head_dim": head_dim,
            "hidden_act": "silu",
            "attention_bias": "blk.0.attn_q.bias" in g.tensors,
            "mlp_bias": False,
            "rope_scaling": scaling,
            "tie_word_embeddings": "output.weight" not in g.tensors,
        }
    )
    return cfg


def llama3_inv_freq_factors(
    head_dim: int, base: float, factor: float, low: float, high: float, orig: int
) -> np.ndarray:
    """Per-frequency divisors llama.cpp stores in ``rope_freqs.weight`` for Llama 3.x rope scaling
    (convert_hf_to_gguf.py, LlamaModel.generate_extra_tensors)."""
    freqs = 1.0 / (base ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    low_wl, high_wl = orig / low, orig / high
    out = []
    for f in freqs:
        wl = 2 * np.pi / f
        if wl < high_wl:
            out.append(1.0)
        elif wl > low_wl:
            out.append(factor)
        else:
            smooth = (orig / wl - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.asarray(out, dtype=np.float32)


def _llama3_rope_scaling(g: GGUFContents, head_dim: int, base: float) -> dict[str, Any]:
    stored = g.tensor("rope_freqs.weight").reshape(-1)
    # the published Llama 3.1/3.2 parameters; the file stores only their result
    for factor, orig in ((8.0, 8192), (32.0, 8192)):
        want = llama3_inv_freq_factors(head_dim, base, factor, 1.0, 4.0, orig)
        if want.shape == stored.shape and np.allclose(want, stored, rtol=1e-3):
            return {
                "rope_type": "llama3",
                "factor": factor,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": orig,
            }
    raise GGUFImportError(
        f"{g.path}: rope_freqs.weight does not match Llama 3 rope scaling with the published parameters; "
        "this rope scaling cannot be expressed in an mlx-lm config"
    )


def _qwen2_config(g: GGUFContents) -> dict[str, Any]:
    cfg = _common_config(g)
    cfg.update(
        {
            "architectures": ["Qwen2ForCausalLM"],
            "model_type": "qwen2",
            "hidden_act": "silu",
            "rope_scaling": _rope_scaling(g),
            "tie_word_embeddings": "output.weight" not in g.tensors,
        }
    )
    return cfg


def _gemma3_transform(name: str, w: np.ndarray, cfg: dict) -> np.ndarray:
    # convert_hf_to_gguf.py Gemma3Model.modify_tensors: norm weights get +1 (llama.cpp multiplies by w)
    if name.endswith("norm.weight"):
        return w - 1.0
    return w


def _llama_transform(name: str, w: np.ndarray, cfg: dict) -> np.ndarray:
    if name.endswith("attn_q.weight") or name.endswith("attn_q.bias"):
        return unpermute_qk(w, cfg["num_attention_heads"])
    if name.endswith("attn_k.weight") or name.endswith("attn_k.bias"):
        return unpermute_qk(w, cfg["num_key_value_heads"])
    return w


def _gemma3_forward(name: str, w: np.ndarray, cfg: dict) -> np.ndarray:
    return w + 1.0 if name.endswith("norm.weight") else w


def _llama_forward(name: str, w: np.ndarray, cfg: dict) -> np.ndarray:
    if name.endswith("attn_q.weight") or name.endswith("attn_q.bias"):
        return permute_qk(w, cfg["num_attention_heads"])
    if name.endswith("attn_k.weight") or name.endswith("attn_k.bias"):
        return permute_qk(w, cfg["num_key_value_heads"])
    return w


def _identity(name: str, w: np.ndarray, cfg: dict) -> np.ndarray:
    return w


_ARCHS: dict[str, tuple[Callable[[GGUFContents], dict], Callable[[str, np.ndarray, dict], np.ndarray]]] = {
    "gemma3": (_gemma3_config, _gemma3_transform),
    "llama": (_llama_config, _llama_transform),
    "qwen2": (_qwen2_config, _identity),
}


# the transforms convert_hf_to_gguf.py applies (Hugging Face -> GGUF), per architecture
_FORWARD: dict[str, Callable[[str, np.ndarray, dict], np.ndarray]] = {
    "gemma3": _gemma3_forward,
    "llama": _llama_forward,
    "qwen2": _identity,
}


def undo_transform(gguf_name: str, w: np.ndarray, architecture: str, cfg: dict) -> np.ndarray:
    """Undo llama.cpp's conversion transform on one dequantized GGUF tensor (float32, HF
    orientation): Gemma's norm ``- 1``, llama's Q/K :func:`unpermute_qk`."""
    return _ARCHS[architecture][1](gguf_name, w, cfg)


def to_gguf_tensor(gguf_name: str, w: np.ndarray, architecture: str, cfg: dict) -> np.ndarray:
    """Re-apply llama.cpp's conversion transform to a Hugging Face tensor (``w``: float32, HF
    orientation) stored as ``gguf_name``: Gemma's norm ``+ 1``, llama's Q/K :func:`permute_qk`;
    the inverse of what :func:`iter_weights` undoes. ``cfg``: the mlx-lm/HF config dict."""
    return _FORWARD[architecture](gguf_name, w, cfg)


def model_config(g: GGUFContents) -> dict[str, Any]:
    """The mlx-lm ``config.json`` dict for a GGUF file. Raises GGUFImportError for other architectures."""
    check_arch(g)
    return _ARCHS[g.architecture][0](g)


def check_arch(g: GGUFContents) -> None:
    if g.architecture not in _ARCHS:
        raise GGUFImportError(
            f"{g.path}: architecture {g.architecture or '(missing)'!r} is not supported; "
            f"supported architectures: {', '.join(SUPPORTED_ARCHITECTURES)}"
        )


def undo_row_transform(name: str, arrays: tuple[np.ndarray, ...], architecture: str, cfg: dict) -> tuple:
    """Undo llama.cpp's conversion transform on a quantized tensor's arrays (packed codes,
    scales, biases: one row per output feature). Only row permutations can be undone without
    dequantizing, and llama's Q/K permutation is one (rows are quantized independently).

    Raises GGUFImportError for a transform that changes values (Gemma's norm + 1)."""
    if architecture == "gemma3" and name.endswith("norm.weight"):
        raise GGUFImportError(f"{name}: a quantized Gemma norm cannot be shifted by -1 without dequantizing")
    if architecture == "llama":
        return tuple(_llama_transform(name, a, cfg) for a in arrays)
    return arrays


def iter_weights(g: GGUFContents, cfg: dict | None = None) -> Iterator[tuple[str, np.ndarray]]:
    """Yield ``(hf_name, float32 array)`` for every model tensor, transforms undone.

    Shapes follow Hugging Face (linear weights ``(out_features, in_features)``)."""
    check_arch(g)
    cfg = cfg or model_config(g)
    transform = _ARCHS[g.architecture][1]
    for name in g.tensors:
        if name in DERIVED_TENSORS:
            continue
        yield hf_tensor_name(name, g.architecture), transform(name, g.tensor(name), cfg)
