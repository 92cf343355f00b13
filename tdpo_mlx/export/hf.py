"""Write a fused (adapter-free, dequantized) model in Hugging Face transformers layout, or as an
mlx-lm model directory (optionally re-quantized).

One job: given a model whose adapters were already fused (:mod:`tdpo_mlx.export.fuse`), write
its weights, ``config.json``, ``generation_config.json`` and tokenizer files. Torch-free:
safetensors are written by MLX with ``format: pt`` metadata (HF) or ``format: mlx`` (MLX).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from ..atomic import copy_file, write_json
from .files import copy_tokenizer_files, save_sharded
from .fuse import dtype_name
from .names import check_supported, hf_name

QUANT_KEYS = ("quantization", "quantization_config")


def hf_weights(model: nn.Module, model_type: str) -> dict:
    """HF name -> MLX array for every parameter of a fused, dequantized ``model``.

    Raises:
        ValueError: a quantized layer is left (``dequantize_float32`` was not called).
    """
    weights = {}
    for name, arr in tree_flatten(model.parameters()):
        if name.endswith(".scales") or name.endswith(".biases") or not mx.issubdtype(arr.dtype, mx.floating):
            raise ValueError(f"{name}: quantized tensor in an HF export; dequantize the model first")
        weights[hf_name(model_type, name)] = arr
    return weights


def hf_config(raw_config: dict, model_type: str, dtype: mx.Dtype, tied: bool) -> dict:
    """The base ``config.json`` made right for the fused HF export: no quantization block,
    ``torch_dtype``/``dtype`` = the saved dtype, ``architectures`` and ``tie_word_embeddings``
    set from what was written."""
    cfg = copy.deepcopy(raw_config)
    for k in QUANT_KEYS:
        cfg.pop(k, None)
    if isinstance(cfg.get("text_config"), dict):
        for k in QUANT_KEYS:
            cfg["text_config"].pop(k, None)
    cfg["architectures"] = [check_supported(model_type)]
    cfg["model_type"] = model_type
    cfg["torch_dtype"] = dtype_name(dtype)
    cfg["dtype"] = dtype_name(dtype)
    cfg["tie_word_embeddings"] = bool(tied)
    return cfg


def generation_config(model_dir: Path, raw_config: dict) -> dict:
    """The base's ``generation_config.json``, or one built from the config's special token ids."""
    path = model_dir / "generation_config.json"
    if path.is_file():
        with open(path) as f:
            return json.load(f)
    gen = {k: raw_config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if raw_config.get(k) is not None}
    gen["_from_model_config"] = True
    return gen


def write_hf(
    out: Path,
    model: nn.Module,
    model_type: str,
    raw_config: dict,
    model_dir: Path,
    dtype: mx.Dtype,
    max_shard_bytes: int,
) -> list[str]:
    """Write the fused ``model`` (already cast to ``dtype``) into ``out`` in HF layout."""
    weights = hf_weights(model, model_type)
    tied = "lm_head.weight" not in weights
    files = save_sharded(out, weights, max_shard_bytes, {"format": "pt"})
    write_json(out / "config.json", hf_config(raw_config, model_type, dtype, tied))
    write_json(out / "generation_config.json", generation_config(model_dir, raw_config))
    files += ["config.json", "generation_config.json"]
    files += copy_tokenizer_files(model_dir, out)
    return files


def write_mlx(
    out: Path,
    model: nn.Module,
    raw_config: dict,
    model_dir: Path,
    dtype: mx.Dtype,
    max_shard_bytes: int,
    quantization: dict | None = None,
) -> list[str]:
    """Write the fused ``model`` as an mlx-lm directory (``mlx_lm.load`` / ``mlx_lm.generate``).

    Args:
        quantization: ``{"group_size", "bits", "mode"}`` when the model was re-quantized
            (written to ``config.json`` as mlx-lm expects), else None (float weights in ``dtype``).
    """
    weights = dict(tree_flatten(model.parameters()))
    files = save_sharded(out, weights, max_shard_bytes, {"format": "mlx"})
    cfg = copy.deepcopy(raw_config)
    for k in QUANT_KEYS:
        cfg.pop(k, None)
    if quantization is not None:
        cfg["quantization"] = dict(quantization)
        cfg["quantization_config"] = dict(quantization)
    cfg["torch_dtype"] = dtype_name(dtype)
    if "lm_head.weight" not in weights and "tie_word_embeddings" in cfg:
        cfg["tie_word_embeddings"] = True
    write_json(out / "config.json", cfg)
    files.append("config.json")
    if (model_dir / "generation_config.json").is_file():
        copy_file(model_dir / "generation_config.json", out / "generation_config.json")
        files.append("generation_config.json")
    files += copy_tokenizer_files(model_dir, out)
    return files
