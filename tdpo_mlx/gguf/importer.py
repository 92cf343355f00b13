"""Import llama.cpp GGUF models into mlx-lm model directories, without torch.

A GGUF file (llama.cpp, Ollama, LM Studio) holds the weights, possibly block-quantized
(Q4_K, Q6_K, Q8_0, ...), the architecture hyper-parameters and the tokenizer vocabulary as
metadata. :func:`import_gguf` turns one into a directory that ``mlx_lm.load`` opens:

* ``config.json``       -- mlx-lm/Hugging Face config (``model_type`` gemma3_text, llama or qwen2);
* ``model.safetensors`` -- dequantized weights under Hugging Face names (float32 by default),
  MLX-quantized ones with ``quantize=4|8``, or with ``quantize="gguf"`` the file's own Q4_0 /
  Q4_1 / Q8_0 blocks kept as MLX affine-quantized layers (group size 32, never dequantized;
  other quantized types dequantized and re-quantized by MLX, with a warning naming them);
* ``tokenizer.json`` + ``tokenizer_config.json`` (+ ``special_tokens_map.json``) -- a
  ``tokenizers`` tokenizer rebuilt from the GGUF vocabulary (:mod:`.tokenizer`), loadable by
  ``transformers.AutoTokenizer``;
* ``generation_config.json`` and a completion marker ``tdpo_mlx_import.json``.

Reading is :mod:`.reader`, the per-architecture configs, names and transforms :mod:`.arch`.
Named sources (``"gemma3-270m"``, :mod:`.sources`) resolve through :func:`resolve_model_path`,
which imports once into the cache directory (``$TDPO_MLX_CACHE`` or ``~/.cache/tdpo_mlx``) and
reuses it afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import mlx.core as mx
from filelock import FileLock
from gguf import GGMLQuantizationType as Q
from mlx.utils import tree_flatten
from mlx_lm.utils import load_model, quantize_model

from ..atomic import atomic_directory, save_safetensors, write_json
from ..errors import AlreadyExistsError, UserError
from .arch import (
    DERIVED_TENSORS,
    check_arch,
    hf_tensor_name,
    iter_weights,
    model_config,
    undo_row_transform,
    undo_transform,
)
from .reader import GGUFContents, read_gguf
from .sources import NAMED_SOURCES, cache_dir, gguf_file
from .tokenizer import save_tokenizer

MARKER_FILE = "tdpo_mlx_import.json"
IMPORTER_VERSION = 1

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
    cfg = model_config(g)
    eos = _gemma_eos_ids(g, cfg)
    if eos is not None:
        cfg["eos_token_id"] = eos
    cfg["torch_dtype"] = dtype
    mx_dtype = getattr(mx, dtype)
    weights = {}
    if quantize == "gguf":
        weights = native_quantized_weights(g, cfg, mx_dtype)
        cfg["quantization"] = {"group_size": NATIVE_GROUP_SIZE, "bits": 4, "mode": "affine"}
        cfg["quantization_config"] = dict(cfg["quantization"])
    else:
        for name, w in iter_weights(g, cfg):
            weights[name] = mx.array(w).astype(mx_dtype)
            mx.eval(weights[name])
    if cfg.get("tie_word_embeddings"):
        for k in [k for k in weights if k.startswith("lm_head.")]:
            weights.pop(k)
    if isinstance(quantize, int):
        weights, cfg = _quantize(weights, cfg, quantize, group_size)
    save_safetensors(out / "model.safetensors", weights, metadata={"format": "mlx"})
    write_json(out / "config.json", cfg)
    gen = {k: cfg[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in cfg}
    write_json(out / "generation_config.json", gen)
    save_tokenizer(g, out)


NATIVE_GROUP_SIZE = 32  # one GGUF block (Q4_0, Q4_1, Q8_0) per MLX quantization group


class RequantizedWarning(UserWarning):
    """``quantize="gguf"``: some tensors were not Q4_0/Q4_1/Q8_0 and were re-quantized by MLX."""


def _is_layer_weight(hf: str, w_shape) -> bool:
    """A linear or embedding weight mlx-lm would quantize (2-D, rows split into 32-value groups)."""
    return hf.endswith(".weight") and len(w_shape) == 2 and w_shape[-1] % NATIVE_GROUP_SIZE == 0


def native_quantized_weights(g: GGUFContents, cfg: dict, dtype) -> dict:
    """Weights for ``quantize="gguf"``: HF/mlx-lm name -> ``mx.array``.

    Q4_0/Q4_1/Q8_0 linear and embedding weights keep the file's own blocks as MLX affine triples
    (``name.weight`` uint32 codes, ``name.scales``/``name.biases`` in ``dtype``; llama's Q/K row
    permutation undone on the triples); other quantized 2-D weights (K-quants, Q5_x, ...) are
    dequantized and re-quantized with ``mx.quantize`` (group 32; 8 bits for types of 5+ bits,
    else 4) and named in one :class:`RequantizedWarning`; float tensors stay float (``dtype``).
    """
    arch = g.architecture
    weights, requantized = {}, {}
    floats = (Q.F32, Q.F16, Q.BF16)
    for name, t in g.tensors.items():
        if name in DERIVED_TENSORS:
            continue
        hf = hf_tensor_name(name, arch)
        native = g.quantized(name) if hf.endswith(".weight") else None
        if native is not None:
            w, scales, biases, _ = native
            w, scales, biases = undo_row_transform(name, (w, scales, biases), arch, cfg)
            base = hf[: -len(".weight")]
            weights[hf] = mx.array(w)
            weights[base + ".scales"] = mx.array(scales).astype(dtype)
            weights[base + ".biases"] = mx.array(biases).astype(dtype)
            continue
        value = mx.array(undo_transform(name, g.tensor(name), arch, cfg)).astype(dtype)
        if t.tensor_type not in floats and _is_layer_weight(hf, value.shape):
            bits = 8 if _GGML_BITS.get(t.tensor_type.name, 8) >= 5 else 4
            w, scales, biases = mx.quantize(value, group_size=NATIVE_GROUP_SIZE, bits=bits)
            base = hf[: -len(".weight")]
            weights.update({hf: w, base + ".scales": scales, base + ".biases": biases})
            requantized.setdefault(f"{t.tensor_type.name} -> MLX {bits}-bit", []).append(name)
        else:
            weights[hf] = value
        mx.eval(weights[hf])
    if requantized:
        detail = "; ".join(
            f"{k}: {len(v)} tensors ({', '.join(v[:3])}{', ...' if len(v) > 3 else ''})" for k, v in requantized.items()
        )
        warnings.warn(
            f"{g.path.name}: only Q4_0/Q4_1/Q8_0 blocks are kept as they are; dequantized and re-quantized "
            f"(group size {NATIVE_GROUP_SIZE}): {detail}",
            RequantizedWarning,
            stacklevel=3,
        )
    return weights


# nominal bits per weight of ggml's quantized types (the fallback keeps 8 bits from 5 up)
_GGML_BITS = {"Q2_K": 2, "Q3_K": 3, "Q4_K": 4, "IQ4_NL": 4, "IQ4_XS": 4, "Q5_0": 5, "Q5_1": 5, "Q5_K": 5, "Q6_K": 6}


def _quantize(weights: dict, cfg: dict, bits: int, group_size: int) -> tuple[dict, dict]:
    """MLX affine quantization through mlx-lm (mlx_lm.utils.quantize_model)."""
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
    quantize: int | str | None = None,
    *,
    group_size: int = 64,
    overwrite: bool = False,
) -> Path:
    """Import a GGUF model into an mlx-lm model directory ``out``; returns ``Path(out)``.

    ``source``: path to a ``.gguf`` file or a named source (``"gemma3-270m"``, see NAMED_SOURCES).
    ``dtype``: float32 | bfloat16 | float16 for the stored (non-quantized) weights.
    ``quantize``: None, 4 or 8 -- MLX affine quantization (``group_size``) via mlx-lm; ``"gguf"`` --
    keep the file's Q4_0/Q4_1/Q8_0 blocks as MLX quantized layers (:func:`native_quantized_weights`).
    The directory is built in a temporary sibling and renamed into place, so ``out`` is either
    absent or complete (marked by ``tdpo_mlx_import.json``).

    Raises FileNotFoundError (missing file / named source package not installed),
    FileExistsError (``out`` exists and is not empty, without ``overwrite``),
    GGUFImportError (unsupported architecture, tokenizer or tensor type).
    """
    if dtype not in _DTYPES:
        raise UserError(f"dtype {dtype!r} is not one of {', '.join(_DTYPES)}")
    if quantize not in (None, 4, 8, "gguf"):
        raise UserError(f"quantize must be None, 4, 8 (bits) or 'gguf' (the file's own blocks), got {quantize!r}")
    out = Path(out).expanduser()
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise AlreadyExistsError(f"{out} exists and is not empty; choose another --out or pass overwrite (--force)")
    t0 = time.perf_counter()
    gguf_path = gguf_file(source)
    g = read_gguf(gguf_path)
    check_arch(g)
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
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(cache_dir() / "models" / f".{s}.lock"):
        if not is_complete_import(out):
            # leftovers of an interrupted import (we hold the lock: nobody else is building)
            # (atomic_directory names them .NAME.XXXX.tmp; older versions .NAME.tmpXXXX)
            for stale in [*out.parent.glob(f".{s}.*.tmp"), *out.parent.glob(f".{s}.tmp*")]:
                shutil.rmtree(stale, ignore_errors=True)
            import_gguf(s, out, dtype="float32", overwrite=True)
    return str(out)
