"""Import llama.cpp GGUF models into mlx-lm model directories, without torch.

A GGUF file (llama.cpp, Ollama, LM Studio) holds the weights, possibly block-quantized
(Q4_K, Q6_K, Q8_0, ...), the architecture hyper-parameters and the tokenizer vocabulary as
metadata. :func:`import_gguf` turns one into a directory that ``mlx_lm.load`` opens:

* ``config.json``       -- mlx-lm/Hugging Face config (``model_type`` gemma3_text, llama or qwen2);
* ``model.safetensors`` -- dequantized weights under Hugging Face names (float32 by default), or
  MLX-quantized ones with ``quantize=4|8``;
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
from pathlib import Path

import mlx.core as mx
from filelock import FileLock
from mlx.utils import tree_flatten
from mlx_lm.utils import load_model, quantize_model

from ..atomic import atomic_directory, save_safetensors, write_json
from ..errors import AlreadyExistsError, UserError
from .arch import check_arch, iter_weights, model_config
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
