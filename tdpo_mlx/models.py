"""Load mlx-lm models, attach LoRA/DoRA adapters, and switch adapters off for the reference.

The reference model of TDPO is, by default, the policy's own frozen base weights with the
adapters switched off (no second copy in memory): :func:`adapters_disabled`.
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten
from mlx_lm import load as mlx_load
from mlx_lm.models.switch_layers import QuantizedSwitchLinear, SwitchLinear
from mlx_lm.tuner.utils import linear_to_lora_layers, load_adapters

from .backend import default_compute_dtype
from .checkpoint import ADAPTER_CONFIG, ADAPTER_FILE
from .config import TrainConfig
from .errors import NotFoundError, UserError
from .gguf import resolve_model_path

log = logging.getLogger(__name__)
_QUANTIZED = (nn.QuantizedLinear, nn.QuantizedEmbedding)


def adapter_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(path, module) of every mlx-lm LoRA/DoRA wrapper (anything with a ``.linear`` base and
    ``lora_a``/``lora_b`` factors) in ``model``."""
    return [
        (name, m)
        for name, m in model.named_modules()
        if hasattr(m, "lora_a") and hasattr(m, "lora_b") and (hasattr(m, "linear") or hasattr(m, "embedding"))
    ]


@contextlib.contextmanager
def adapters_disabled(model: nn.Module):
    """Temporarily replace every LoRA/DoRA wrapper by its frozen base layer.

    Inside the block ``model(x)`` is the base model exactly (no dropout, no DoRA magnitude),
    which is the TDPO reference pi_ref. Nothing is copied: the wrappers are swapped back on exit,
    also when the block raises.
    """
    wrappers = adapter_modules(model)
    if not wrappers:
        yield model
        return
    base = [(name, getattr(m, "linear", None) or m.embedding) for name, m in wrappers]
    model.update_modules(tree_unflatten(base))
    try:
        yield model
    finally:
        model.update_modules(tree_unflatten(wrappers))


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """Temporarily put ``model`` in eval mode (no dropout), restoring its training flag on exit:
    for one-time numeric checks that compare two forward passes."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


# --------------------------------------------------------------------------------------------
# Loading a policy: base model (optionally quantized, QLoRA) + mlx-lm LoRA/DoRA adapters.
# --------------------------------------------------------------------------------------------

QUANT_GROUP_SIZE = 64


def resolve_model(name_or_path: str | Path) -> str:
    """The one model resolver: a local mlx-lm model directory or hub id for ``name_or_path``.

    A named source such as ``gemma3-270m`` is imported once from its GGUF file into the cache
    (:func:`tdpo_mlx.gguf.resolve_model_path`); a directory or hub id comes back unchanged (mlx-lm
    resolves and downloads hub ids itself).

    Raises:
        NotFoundError: a named source whose package is not installed.
    """
    return str(resolve_model_path(str(name_or_path)))


def parse_dtype(dtype):
    """``None`` -> the backend's compute dtype (float32 on CPU); a name or an mx.Dtype -> mx.Dtype.

    Raises:
        ValueError: unknown name.
    """
    if dtype is None:
        return default_compute_dtype()
    if isinstance(dtype, mx.Dtype):
        return dtype
    names = {
        "float32": mx.float32,
        "fp32": mx.float32,
        "bfloat16": mx.bfloat16,
        "bf16": mx.bfloat16,
        "float16": mx.float16,
        "fp16": mx.float16,
    }
    try:
        return names[str(dtype).lower()]
    except KeyError:
        raise UserError(f"unknown dtype {dtype!r}; choose float32, bfloat16 or float16") from None


def _load_base(path: str, dtype, quantize):
    """mlx-lm model + tokenizer with floating weights cast to ``dtype`` and, optionally, the
    linear and embedding weights quantized to ``quantize`` bits (group size 64)."""
    model, tokenizer = mlx_load(resolve_model(path))
    dtype = parse_dtype(dtype)
    model.set_dtype(dtype)  # floating parameters only; quantized codes stay integer
    if quantize is not None:
        bits = int(quantize)
        if bits not in (4, 8):
            raise UserError(f"quantize must be 4 or 8 bits, got {quantize!r}")

        def predicate(_path, m):
            return type(m) in (nn.Linear, nn.Embedding) and m.weight.shape[-1] % QUANT_GROUP_SIZE == 0

        nn.quantize(model, group_size=QUANT_GROUP_SIZE, bits=bits, class_predicate=predicate)
    mx.eval(model.parameters())
    if mx.default_device() == mx.cpu and any(isinstance(m, _QUANTIZED) for _, m in model.named_modules()):
        log.warning(
            "the base model is quantized and MLX runs on the CPU: its quantized matmuls are ~40x slower than "
            "float32 ones here (SmolLM2-135M on its Q4_1 blocks trained at ~4 tokens/s on 2 cores); on a CPU "
            "prefer a float base (drop --quantize, or import the GGUF without --quantize gguf) if memory allows"
        )
    return model, tokenizer


def block_linear_keys(model: nn.Module) -> list[str]:
    """Module paths inside each transformer block (``model.layers[i]``) that LoRA can wrap
    (linear, quantized linear, mixture-of-experts switch layers), sorted, e.g.
    ``['mlp.down_proj', ..., 'self_attn.v_proj']``."""
    types = (nn.Linear, nn.QuantizedLinear, SwitchLinear, QuantizedSwitchLinear)
    keys = set()
    for layer in model.layers:
        for p, m in layer.named_modules():
            if p and (isinstance(m, types) or hasattr(m, "to_lora")):
                keys.add(p)
    return sorted(keys)


def resolve_lora_keys(model: nn.Module, keys) -> list[str]:
    """Expand user keys into block-relative module paths.

    ``None`` -> every linear layer of each block. Full paths (``self_attn.q_proj``) are kept;
    a bare name (``q_proj``) matches every path ending in it. Keys may also be one
    comma-separated string.

    Raises:
        ValueError: a key matches no module (the message lists the available ones).
    """
    available = block_linear_keys(model)
    if keys is None:
        return available
    if isinstance(keys, str):
        keys = [keys]
    wanted = [k.strip() for key in keys for k in str(key).split(",") if k.strip()]
    out: list[str] = []
    for k in wanted:
        hits = [a for a in available if a == k or a.endswith("." + k)]
        if not hits:
            raise UserError(
                f"LoRA key {k!r} matches no linear layer in the model's blocks; available: {', '.join(available)}"
            )
        out.extend(h for h in hits if h not in out)
    return out


def attach_adapters(
    model: nn.Module,
    *,
    lora_rank: int = TrainConfig.lora_rank,
    lora_alpha: float = TrainConfig.lora_alpha,
    lora_scale: float | None = TrainConfig.lora_scale,
    lora_dropout: float = TrainConfig.lora_dropout,
    lora_layers: int = TrainConfig.lora_layers,
    lora_keys=TrainConfig.lora_keys,
    dora: bool = TrainConfig.dora,
) -> dict:
    """Freeze ``model`` and wrap the chosen linear layers with mlx-lm LoRA (or DoRA) layers.

    The defaults are :class:`tdpo_mlx.config.TrainConfig`'s (one place for every knob).

    Uses :func:`mlx_lm.tuner.utils.linear_to_lora_layers`; LoRA factors are the only trainable
    parameters afterwards (and DoRA's magnitude ``m``).

    Args:
        lora_rank: r. lora_alpha: scale = alpha / r unless ``lora_scale`` is given.
        lora_dropout: dropout on the adapter input (training mode only).
        lora_layers: -1 = every block, N = the last N blocks.
        lora_keys: block-relative module paths (see :func:`resolve_lora_keys`).
        dora: weight-decomposed LoRA (Liu et al., 2024).

    Returns:
        The mlx-lm adapter config: ``{"fine_tune_type", "num_layers", "lora_parameters":
        {"rank", "scale", "dropout", "keys"}}`` as written to ``adapter_config.json``.

    Raises:
        ValueError: bad rank, layer count or key.
    """
    n_blocks = len(model.layers)
    if lora_rank < 1:
        raise UserError(f"lora_rank must be >= 1, got {lora_rank}")
    if lora_layers == 0 or lora_layers < -1 or lora_layers > n_blocks:
        raise UserError(f"lora_layers must be -1 (all) or 1..{n_blocks} for this model, got {lora_layers}")
    keys = resolve_lora_keys(model, lora_keys)
    scale = float(lora_scale) if lora_scale is not None else float(lora_alpha) / float(lora_rank)
    params = {"rank": int(lora_rank), "scale": scale, "dropout": float(lora_dropout), "keys": keys}
    model.freeze()
    linear_to_lora_layers(model, int(lora_layers), params, use_dora=bool(dora))
    if not adapter_modules(model):
        raise UserError(f"no LoRA layer was attached (keys {keys}, layers {lora_layers})")
    return {"fine_tune_type": "dora" if dora else "lora", "num_layers": int(lora_layers), "lora_parameters": params}


def load_policy(
    model: str,
    *,
    quantize: int | None = None,
    dtype=None,
    adapters: bool = True,
    adapter_path: str | Path | None = None,
    **lora,
):
    """Load a trainable policy: base model (frozen; quantized with ``quantize`` = QLoRA) + adapters.

    Args:
        model: mlx-lm model directory, hub id, or named source (``gemma3-270m``).
        lora: the LoRA settings ``lora_rank``, ``lora_alpha``, ``lora_scale``, ``lora_dropout``,
            ``lora_layers``, ``lora_keys``, ``dora``: see :func:`attach_adapters`.
        quantize: None, 4 or 8: quantize the frozen base's linear/embedding weights at load
            (mlx ``nn.quantize``, affine, group size 64).
        dtype: compute dtype of the floating weights; None = float32 on the CPU backend,
            bfloat16 on Metal/CUDA (:func:`tdpo_mlx.backend.default_compute_dtype`).
        adapters: False returns the frozen base without adapters.
        adapter_path: an mlx-lm adapter directory (``adapters.safetensors`` +
            ``adapter_config.json``, e.g. a finished run's ``--adapter-path``): its adapters are
            attached and loaded (:func:`load_trained_adapters`) instead of fresh ones; the
            LoRA settings are then ignored.

    Returns:
        ``(model, tokenizer)``; ``model.adapter_config`` holds the mlx-lm adapter config dict
        (None without adapters). The reference policy is ``adapters_disabled(model)``.
    """
    m, tokenizer = _load_base(model, dtype, quantize)
    if adapter_path is not None:
        full = load_trained_adapters(m, adapter_path)
        cfg = {k: full[k] for k in ("fine_tune_type", "num_layers", "lora_parameters") if k in full}
    elif adapters:
        cfg = attach_adapters(m, **lora)
    else:
        m.freeze()
        cfg = None
    # a plain attribute (not a child in the parameter tree: Module.__setattr__ would store dicts there)
    object.__setattr__(m, "adapter_config", cfg)
    return m, tokenizer


def read_adapter_config(adapter_path: str | Path) -> dict:
    """The ``adapter_config.json`` of an mlx-lm adapter directory, checked: both files there
    (``adapters.safetensors`` + ``adapter_config.json``, as written by ``tdpo-mlx train`` or
    ``mlx_lm.lora``), valid JSON, adapters rather than a full fine-tune.

    Raises:
        NotFoundError: a file missing. UserError: not JSON, or ``fine_tune_type`` ``full``.
    """
    ap = Path(adapter_path)
    for name in (ADAPTER_CONFIG, ADAPTER_FILE):
        if not (ap / name).is_file():
            raise NotFoundError(
                f"{ap / name} not found: --adapter-path must be an mlx-lm adapter directory "
                "(adapters.safetensors + adapter_config.json, as written by tdpo-mlx train or mlx_lm.lora)"
            )
    try:
        cfg = json.loads((ap / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{ap / ADAPTER_CONFIG}: not valid JSON (line {e.lineno}: {e.msg})") from None
    if cfg.get("fine_tune_type", "lora") == "full":
        raise UserError(f"{ap}: a full fine-tune (fine_tune_type full) is not an adapter; load it as a model instead")
    return cfg


def load_trained_adapters(model: nn.Module, adapter_path: str | Path) -> dict:
    """The one way to attach trained adapters: freeze ``model``, wrap the layers that
    ``adapter_config.json`` names and load ``adapters.safetensors`` into them, with mlx-lm's own
    ``load_adapters`` (which refuses tensors of other names or shapes).

    Returns:
        The directory's adapter config (see :func:`read_adapter_config`).

    Raises:
        NotFoundError, UserError: see :func:`read_adapter_config`; ValueError: tensors that do not
        fit the model (from mlx-lm).
    """
    cfg = read_adapter_config(adapter_path)
    model.freeze()  # the new LoRA factors are trainable, the base stays frozen
    load_adapters(model, str(adapter_path))
    return cfg


def load_reference(model: str, *, quantize: int | None = None, dtype=None) -> nn.Module:
    """A separate frozen reference model (``--ref-model``), in eval mode, no trainable parameters."""
    m, _ = _load_base(model, dtype, quantize)
    m.freeze()
    m.eval()
    return m


def count_trainable(model: nn.Module) -> int:
    """Number of trainable scalars (LoRA factors and DoRA magnitudes)."""
    return sum(v.size for _, v in tree_flatten(model.trainable_parameters()))
