"""Fuse LoRA/DoRA adapters into their base layers in float32, and say where precision loses them.

One job: turn an mlx-lm model carrying adapter wrappers (``LoRALinear``, ``DoRALinear``,
``LoRAEmbedding``, ``DoRAEmbedding``) into a plain model whose weights hold the update, computed
in float32 from the dequantized base (A2: fusing into a 4-bit or bf16 base and rounding there
can erase the update), and report per layer how much of the update survives the dtype the
export is written in, or a re-quantization.

Fused weights (mlx-lm conventions: ``a`` is (in, r), ``b`` is (r, out), ``s`` = ``scale``):

* LoRA linear:  ``W' = W + s * b^T a^T``  (out, in)
* DoRA linear:  ``W' = m / ||V||_row * V`` with ``V = W + s * b^T a^T`` (mlx-lm ``DoRALinear``;
  Liu et al. 2024, eq. 5; PEFT's ``lora_magnitude_vector`` is the same ``m``)
* LoRA embedding: ``E' = E + s * a b`` (num_embeddings, dims); DoRA embedding: row-normalised
  like DoRA linear. Biases are kept as they are.

The retained fraction of an update ``D = W' - W`` after rounding both weights to the export
format ``R`` is ``<R(W') - R(W), D> / ||D||^2``: 1 when the update survives (on average, as
rounding of random weights is unbiased), 0 when the layer rounds back to the base.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten

# A layer keeping less than this fraction of its update after rounding gets a warning.
RETAINED_WARN_BELOW = 0.5


class ExportPrecisionWarning(UserWarning):
    """The export's dtype or re-quantization loses (part of) an adapter update."""


@dataclass
class LayerLoss:
    """How much of one fused layer's update an export format keeps."""

    name: str  # mlx-lm path of the fused module, e.g. model.layers.0.self_attn.q_proj
    retained: float  # <R(W') - R(W), D> / ||D||^2 (1 = kept, 0 = erased)
    erased: bool  # R(W') == R(W) exactly: the layer is the base layer again
    fmt: str  # "bfloat16", "4-bit" ...

    def message(self) -> str:
        if self.erased:
            return (
                f"{self.name}: the {self.fmt} export maps the fused layer back to the base weights "
                "(the adapter update is erased); export a wider dtype (float32/float16) or do not re-quantize"
            )
        return (
            f"{self.name}: the {self.fmt} export keeps only {100 * self.retained:.1f}% of the adapter "
            "update; export a wider dtype (float32/float16) or do not re-quantize"
        )


@dataclass
class FuseResult:
    """Names of the fused modules and the float32 base weights they replaced (for checks)."""

    fused: list[str] = field(default_factory=list)
    base_weights: dict = field(default_factory=dict)  # name -> float32 base weight (out, in)


def is_adapter(module: nn.Module) -> bool:
    """True for an mlx-lm LoRA/DoRA wrapper (``lora_a``/``lora_b`` around ``.linear``/``.embedding``)."""
    return (
        hasattr(module, "lora_a")
        and hasattr(module, "lora_b")
        and (hasattr(module, "linear") or hasattr(module, "embedding"))
    )


def dequantized_weight(layer: nn.Module) -> mx.array:
    """The weight of a (possibly quantized) Linear/Embedding as float32, shape (out, in)."""
    if isinstance(layer, (nn.QuantizedLinear, nn.QuantizedEmbedding)):
        biases = layer.get("biases")
        return mx.dequantize(
            layer.weight,
            layer.scales.astype(mx.float32),
            None if biases is None else biases.astype(mx.float32),
            group_size=layer.group_size,
            bits=layer.bits,
            mode=layer.mode,
        ).astype(mx.float32)
    return layer.weight.astype(mx.float32)


def fused_weight(wrapper: nn.Module) -> tuple[mx.array, mx.array]:
    """(base W, fused W') in float32 for one LoRA/DoRA wrapper; formulas in the module docstring.

    Raises:
        ValueError: stacked mixture-of-experts wrappers (``LoRASwitchLinear``).
    """
    if type(wrapper).__name__ == "LoRASwitchLinear":
        raise ValueError("stacked mixture-of-experts LoRA (LoRASwitchLinear) is not fused by tdpo_mlx export")
    s = mx.array(float(wrapper.scale), mx.float32)
    a = wrapper.lora_a.astype(mx.float32)
    b = wrapper.lora_b.astype(mx.float32)
    if hasattr(wrapper, "linear"):
        w = dequantized_weight(wrapper.linear)
        v = w + (s * b.T) @ a.T
    else:
        w = dequantized_weight(wrapper.embedding)
        v = w + (s * a) @ b
    if "m" in wrapper:  # DoRA: rescale each output row (linear) / embedding row to magnitude m
        m = wrapper.m.astype(mx.float32)
        v = (m / mx.linalg.norm(v, axis=1))[:, None] * v
    return w, v


def fuse_float32(model: nn.Module, keep_base: bool = True) -> FuseResult:
    """Replace every adapter wrapper in ``model`` (in place) by a plain float32 ``nn.Linear`` /
    ``nn.Embedding`` holding the fused weight; the base layer's bias is kept (float32).

    Args:
        keep_base: keep each replaced layer's float32 base weight in the result (for the
            precision checks), at the cost of one extra copy of the adapted weights.
    """
    result = FuseResult()
    replaced = []
    for name, module in model.named_modules():
        if not is_adapter(module):
            continue
        w, v = fused_weight(module)
        if hasattr(module, "linear"):
            base = module.linear
            layer = nn.Linear(v.shape[1], v.shape[0], bias="bias" in base)
            if "bias" in base:
                layer.bias = base.bias.astype(mx.float32)
        else:
            layer = nn.Embedding(v.shape[0], v.shape[1])
        layer.weight = v
        mx.eval(layer.parameters())
        replaced.append((name, layer))
        result.fused.append(name)
        if keep_base:
            mx.eval(w)
            result.base_weights[name] = w
    if replaced:
        model.update_modules(tree_unflatten(replaced))
    return result


def dequantize_float32(model: nn.Module) -> None:
    """Replace every quantized Linear/Embedding in ``model`` (in place) by a float32 one."""
    layers = []
    for name, module in model.named_modules():
        if isinstance(module, nn.QuantizedLinear):
            w = dequantized_weight(module)
            layer = nn.Linear(w.shape[1], w.shape[0], bias="bias" in module)
            if "bias" in module:
                layer.bias = module.bias.astype(mx.float32)
        elif isinstance(module, nn.QuantizedEmbedding):
            w = dequantized_weight(module)
            layer = nn.Embedding(*w.shape)
        elif type(module).__name__ == "QuantizedSwitchLinear":
            raise ValueError(f"{name}: stacked quantized experts are not dequantized by tdpo_mlx export")
        else:
            continue
        layer.weight = w
        layers.append((name, layer))
    if layers:
        model.update_modules(tree_unflatten(layers))


def retained_fraction(rounded_base: mx.array, rounded_fused: mx.array, delta: mx.array) -> tuple[float, bool]:
    """``<R(W') - R(W), D> / ||D||^2`` in float32 and whether ``R(W') == R(W)`` exactly."""
    kept = rounded_fused.astype(mx.float32) - rounded_base.astype(mx.float32)
    denom = mx.sum(delta * delta)
    erased = bool(mx.all(kept == 0).item())
    if float(denom.item()) == 0.0:
        return 1.0, False
    return float((mx.sum(kept * delta) / denom).item()), erased


def rounding_losses(model: nn.Module, result: FuseResult, rounder, fmt: str) -> list[LayerLoss]:
    """Per fused layer, how much of its float32 update ``D = W' - W`` the rounding
    ``rounder`` (float32 array -> its rounded value as an array) keeps. Call while the fused
    weights are still float32 (before the cast to the export dtype or quantization). Layers for which
    ``rounder`` returns None (e.g. not quantizable) are skipped. Returns only the layers that
    keep less than :data:`RETAINED_WARN_BELOW` of their update or are erased."""
    modules = dict(model.named_modules())
    out = []
    for name, w in result.base_weights.items():
        fused = modules[name].weight.astype(mx.float32)
        r_fused, r_base = rounder(fused), rounder(w)
        if r_fused is None or r_base is None:
            continue
        retained, erased = retained_fraction(r_base, r_fused, fused - w)
        if erased or retained < RETAINED_WARN_BELOW:
            out.append(LayerLoss(name, retained, erased, fmt))
    return out


def dtype_rounder(dtype: mx.Dtype):
    """Rounding of a float32 array to ``dtype`` (for :func:`rounding_losses`)."""
    return lambda x: x.astype(dtype)


def quant_rounder(group_size: int, bits: int, mode: str = "affine"):
    """Affine re-quantization then dequantization of a float32 (out, in) weight; None when
    ``in`` is not a multiple of ``group_size`` (mlx-lm leaves such layers unquantized)."""

    def rnd(x):
        if x.shape[-1] % group_size:
            return None
        q = mx.quantize(x, group_size=group_size, bits=bits, mode=mode)
        return mx.dequantize(*q, group_size=group_size, bits=bits, mode=mode)

    return rnd


def dtype_name(dtype: mx.Dtype) -> str:
    return str(dtype).split(".")[-1]


def warn_losses(losses: list[LayerLoss]) -> list[str]:
    """Issue one :class:`ExportPrecisionWarning` per lossy layer; return the messages."""
    msgs = [loss.message() for loss in losses]
    for msg in msgs:
        warnings.warn(msg, ExportPrecisionWarning, stacklevel=3)
    return msgs


def float_dtype_of(model: nn.Module) -> mx.Dtype:
    """The most common floating dtype among ``model``'s parameters, by element count
    (for a quantized model: the dtype of its scales and unquantized layers)."""
    counts: dict = {}
    for _, a in tree_flatten(model.parameters()):
        if mx.issubdtype(a.dtype, mx.floating):
            counts[a.dtype] = counts.get(a.dtype, 0) + a.size
    if not counts:
        return mx.float32
    return max(counts.items(), key=lambda kv: kv[1])[0]
