"""Torch-free export of mlx-lm adapters: PEFT adapters, fused Hugging Face models, fused MLX models.

:func:`export` is the one entry point (the ``tdpo-mlx export`` command calls it):

* ``to="peft"``: ``adapter_model.safetensors`` + ``adapter_config.json`` for PEFT
  (:mod:`tdpo_mlx.export.peft`);
* ``to="hf"``: the adapter fused in float32 into the dequantized base, saved in the requested
  dtype in transformers layout (:mod:`tdpo_mlx.export.fuse`, :mod:`tdpo_mlx.export.hf`);
* ``to="mlx"``: the same fused model as an mlx-lm directory, optionally re-quantized;
* ``to="gguf"``: the same fused model as one llama.cpp GGUF file (f32, f16 or q8_0), for
  gemma3/llama/qwen2 bases imported from GGUF (:mod:`tdpo_mlx.export.gguf`).

Every export also gets a model card (``README.md``, :mod:`tdpo_mlx.export.card`). The export is
assembled in a temporary directory beside ``out`` and renamed into place only when complete.
Where the chosen dtype or re-quantization loses an adapter update, an
:class:`~tdpo_mlx.export.fuse.ExportPrecisionWarning` names the layer (case A2).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import mlx.core as mx
from huggingface_hub import HfApi
from mlx_lm.utils import load_model, quantize_model

from ..atomic import atomic_directory, write_text
from ..errors import NotFoundError, UserError
from ..models import load_trained_adapters, read_adapter_config, resolve_model
from . import card as cards
from .files import parse_size
from .fuse import (
    dequantize_float32,
    dtype_name,
    dtype_rounder,
    float_dtype_of,
    fuse_float32,
    is_adapter,
    quant_rounder,
    rounding_losses,
    warn_losses,
)
from .gguf import GGUF_FILE, GGUF_TYPES, gguf_architecture, source_gguf, write_gguf
from .hf import hf_weights, write_hf, write_mlx
from .names import check_supported
from .peft import write_peft

TARGETS = ("peft", "hf", "mlx", "gguf")
DTYPES = ("float32", "bfloat16", "float16")
DEFAULT_MAX_SHARD_SIZE = "5GB"


@dataclass
class ExportResult:
    """What an export wrote."""

    out: Path
    to: str
    files: list[str]
    dtype: str | None = None  # dtype of the saved weights (hf/mlx); None for PEFT in adapter dtype
    adapted_modules: list[str] = field(default_factory=list)  # mlx-lm paths of fused/exported adapters
    warnings: list[str] = field(default_factory=list)  # precision/base-name warnings issued
    base_model: str | None = None
    hub_url: str | None = None


def resolve_model_dir(model: str | Path) -> Path:
    """The local mlx-lm model directory of ``model`` (:func:`tdpo_mlx.models.resolve_model`),
    checked: exports read its ``config.json`` and tokenizer files, so a hub id is not enough.

    Raises:
        NotFoundError: no ``config.json`` there.
    """
    p = Path(resolve_model(model))
    if not (p / "config.json").is_file():
        raise NotFoundError(
            f"{p}: not an mlx-lm model directory (no config.json). Pass the directory of the base "
            "model the adapter was trained on (e.g. one written by mlx_lm.convert or tdpo-mlx import-gguf)"
        )
    return p


def _read_json(path: Path) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from None


def load_for_export(model_dir: str | Path, adapter_path: str | Path | None, lazy: bool = False):
    """(mlx-lm model with adapters attached, adapter_config dict): the base with mlx-lm's loader
    as stored (no dtype cast), the adapters with :func:`tdpo_mlx.models.load_trained_adapters`;
    ``model_dir`` is resolved with :func:`resolve_model_dir`.

    Raises:
        NotFoundError: ``adapter_path`` lacks ``adapter_config.json``/``adapters.safetensors``.
        UserError: a full fine-tune instead of adapters; ValueError: adapter tensors that do not
        fit the model (from mlx-lm's loader).
    """
    if adapter_path is not None:
        read_adapter_config(adapter_path)  # a wrong path fails before the base is loaded
    model, _ = load_model(resolve_model_dir(model_dir), lazy=lazy)
    adapter_cfg = {} if adapter_path is None else load_trained_adapters(model, adapter_path)
    model.eval()
    return model, adapter_cfg


def _parse_dtype(name: str | None):
    if name is None:
        return None
    if name not in DTYPES:
        raise UserError(f"dtype {name!r}: choose one of {', '.join(DTYPES)}")
    return getattr(mx, name)


def _base_model_name(explicit, info: dict, raw_config: dict, model) -> tuple[str, str | None]:
    """(name for base_model_name_or_path / the card, a warning or None).

    Warns when no explicit name was given and the one found is a quantized MLX model, or is
    neither a Hugging Face id (``org/name``) nor an existing directory (e.g. a named source).
    """
    name = explicit or info.get("base_model") or raw_config.get("base_model_name_or_path")
    name = str(name or raw_config.get("_name_or_path") or info.get("model") or model)
    if explicit:
        return name, None
    hint = (
        "pass --base-model-name HF_ID, or export the base itself with "
        f"`tdpo-mlx export --model {model} --to hf --out BASE_DIR` and pass that directory"
    )
    if "quantization" in raw_config or "quantization_config" in raw_config:
        return (
            name,
            f"base model {name!r} is a quantized MLX model; PEFT and transformers need an unquantized base: {hint}",
        )
    if not cards.is_hub_id(name) and not Path(name).is_dir():
        return name, f"base model {name!r} is neither a Hugging Face id nor a directory: {hint}"
    return name, None


def fuse_for_export(model, dtype, quantize: int | None = None, group_size: int = 64):
    """Fuse ``model``'s adapters in float32 into its dequantized base, optionally re-quantize,
    and cast the float parameters to ``dtype``.

    Returns:
        (model, quantization, warnings): ``quantization`` is mlx-lm's ``{"group_size", "bits",
        "mode"}`` when re-quantized, else None; ``warnings`` the
        :class:`~tdpo_mlx.export.fuse.ExportPrecisionWarning` messages issued for layers whose
        update the dtype or the re-quantization does not keep (case A2).
    """
    check = dtype != mx.float32 or quantize is not None
    fused = fuse_float32(model, keep_base=check)
    dequantize_float32(model)
    losses = []
    quantization = None
    if quantize is not None:
        qr = quant_rounder(group_size, quantize)
        losses += rounding_losses(model, fused, qr, f"{quantize}-bit")
        if dtype != mx.float32:  # layers that stay unquantized are rounded to dtype
            dr = dtype_rounder(dtype)
            losses += rounding_losses(model, fused, lambda x: None if qr(x) is not None else dr(x), dtype_name(dtype))
        model, qcfg = quantize_model(model, {}, group_size=group_size, bits=quantize)
        quantization = qcfg["quantization"]
    elif dtype != mx.float32:
        losses += rounding_losses(model, fused, dtype_rounder(dtype), dtype_name(dtype))
    fused.base_weights.clear()
    messages = warn_losses(losses)
    model.set_dtype(dtype)  # floating parameters only; quantized codes stay integer
    return model, quantization, messages


def _check_options(to: str, adapter_path, quantize: int | None, dtype: str | None, gguf_type: str) -> None:
    """Refuse option combinations that cannot be exported (one line naming the option)."""
    if to not in TARGETS:
        raise UserError(f"--to {to!r}: choose one of {', '.join(TARGETS)}")
    if to == "peft" and adapter_path is None:
        raise UserError("--to peft needs --adapter-path")
    if quantize is not None and to != "mlx":
        raise UserError("--quantize applies to --to mlx only (Hugging Face exports are dequantized)")
    if quantize is not None and quantize not in (2, 3, 4, 5, 6, 8):
        raise UserError(f"--quantize {quantize}: choose 2, 3, 4, 5, 6 or 8 bits (mlx-lm affine)")
    if gguf_type not in GGUF_TYPES:
        raise UserError(f"--gguf-type {gguf_type!r}: choose one of {', '.join(GGUF_TYPES)}")
    if to == "gguf" and dtype is not None:
        raise UserError("--to gguf takes --gguf-type (f32, f16, q8_0) instead of --dtype")


def export(
    model: str | Path,
    adapter_path: str | Path | None = None,
    *,
    to: str,
    out: str | Path,
    dtype: str | None = None,
    quantize: int | None = None,
    group_size: int = 64,
    base_model_name: str | None = None,
    max_shard_size: str | int = DEFAULT_MAX_SHARD_SIZE,
    push_to_hub: str | None = None,
    private: bool = False,
    overwrite: bool = False,
    gguf_type: str = "f16",
) -> ExportResult:
    """Export an mlx-lm base model plus adapter as a PEFT adapter, a fused HF model or a fused
    MLX model.

    Args:
        model: mlx-lm model directory (or named source) the adapter was trained on.
        adapter_path: mlx-lm adapter directory; required for ``peft``, optional for ``hf``/``mlx``
            (without it the base itself is converted).
        to: ``peft``, ``hf``, ``mlx`` or ``gguf``.
        out: output directory (created; must be empty unless ``overwrite``).
        dtype: ``float32``, ``bfloat16`` or ``float16`` for the saved weights; default: the
            base's float dtype (PEFT: the adapter's dtype).
        quantize: 4 or 8 to re-quantize an ``mlx`` export (affine, ``group_size``).
        base_model_name: Hugging Face id of the unquantized base (``base_model_name_or_path``
            and the card); default: recorded in the adapter/model config, else the model path.
        max_shard_size: weights above this size are split into shards plus an index.
        push_to_hub: repository id to upload the export to (huggingface_hub).
        gguf_type: ``f32``, ``f16`` or ``q8_0`` for a ``gguf`` export.

    Returns:
        :class:`ExportResult`.

    Raises:
        ValueError: bad option combination or dtype.
        UnsupportedExportError: no safe Hugging Face mapping for the architecture or adapter.
        FileNotFoundError: model or adapter directory incomplete; FileExistsError: ``out`` not empty.
    """
    _check_options(to, adapter_path, quantize, dtype, gguf_type)
    want_dtype = _parse_dtype(dtype)
    max_bytes = parse_size(max_shard_size)

    model_dir = resolve_model_dir(model)
    raw_config = _read_json(model_dir / "config.json")
    model_type = raw_config.get("model_type")
    _check_target(to, model_type, model_dir)

    mlx_model, adapter_cfg = load_for_export(model_dir, adapter_path, lazy=(to == "peft"))
    info = cards.training_info(adapter_path)
    base_name, name_warning = _base_model_name(base_model_name, info, raw_config, model)
    issued: list[str] = []
    if name_warning and to == "peft":
        warnings.warn(name_warning, UserWarning, stacklevel=2)
        issued.append(name_warning)

    adapted = [n for n, m in mlx_model.named_modules() if is_adapter(m)]
    with atomic_directory(out, overwrite=overwrite) as tmp:
        if to == "peft":
            files = write_peft(tmp, mlx_model, model_type, adapter_cfg, base_name, want_dtype)
            saved = dtype_name(want_dtype) if want_dtype is not None else None
        else:
            fused = dict(quantize=quantize, group_size=group_size, max_bytes=max_bytes, gguf_type=gguf_type)
            files, saved, lost = _write_fused(tmp, to, mlx_model, raw_config, model_dir, want_dtype, **fused)
            issued += lost
        write_text(tmp / "README.md", cards.model_card(to, info, base_name, notes=issued or None))
        files.append("README.md")
    result = ExportResult(
        out=Path(out).resolve(),
        to=to,
        files=files,
        dtype=saved,
        adapted_modules=adapted,
        warnings=issued,
        base_model=base_name,
    )
    if push_to_hub:
        result.hub_url = upload_to_hub(result.out, push_to_hub, private=private)
    return result


def _check_target(to: str, model_type: str | None, model_dir: Path) -> None:
    """Refuse early what the target cannot hold.

    Raises:
        UnsupportedExportError: no Hugging Face mapping (``peft``, ``hf``) or GGUF architecture
            (``gguf``) for ``model_type``; a ``gguf`` export without the model's source GGUF.
    """
    if to in ("peft", "hf"):
        check_supported(model_type)
    if to == "gguf":
        gguf_architecture(model_type)
        source_gguf(model_dir)


def _write_fused(
    tmp: Path,
    to: str,
    model,
    raw_config: dict,
    model_dir: Path,
    want_dtype,
    *,
    quantize,
    group_size,
    max_bytes,
    gguf_type,
):
    """Fuse the adapters into ``model`` and write it as ``to`` (``hf``, ``mlx`` or ``gguf``) into
    ``tmp``; returns (files, saved dtype or GGUF type, warnings about what fusing lost)."""
    model_type = raw_config.get("model_type")
    if to == "gguf":
        model, _, lost = fuse_for_export(model, mx.float32)
        write_gguf(tmp / GGUF_FILE, hf_weights(model, model_type), raw_config, model_dir, gguf_type)
        return [GGUF_FILE], gguf_type, lost
    dt = want_dtype or float_dtype_of(model)
    model, quantization, lost = fuse_for_export(model, dt, quantize, group_size)
    if to == "hf":
        files = write_hf(tmp, model, model_type, raw_config, model_dir, dt, max_bytes)
    else:
        files = write_mlx(tmp, model, raw_config, model_dir, dt, max_bytes, quantization)
    return files, dtype_name(dt), lost


def upload_to_hub(folder: str | Path, repo_id: str, *, private: bool = False, token: str | None = None) -> str:
    """Create (if needed) the model repository ``repo_id`` and upload ``folder`` into it with
    ``huggingface_hub.HfApi`` (``create_repo`` + ``upload_folder``). Returns the repo URL.

    Needs a Hugging Face token (``huggingface-cli login`` or ``HF_TOKEN``) and network access.
    """
    api = HfApi(token=token)
    repo = api.create_repo(repo_id=repo_id, repo_type="model", private=private, exist_ok=True)
    api.upload_folder(
        folder_path=str(folder),
        repo_id=repo_id,
        repo_type="model",
        commit_message="Upload tdpo-mlx export",
    )
    return str(getattr(repo, "url", None) or f"https://huggingface.co/{repo_id}")
