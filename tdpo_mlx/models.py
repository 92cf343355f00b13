"""Load mlx-lm models, attach LoRA/DoRA adapters, and switch adapters off for the reference.

The reference model of TDPO is, by default, the policy's own frozen base weights with the
adapters switched off (no second copy in memory): :func:`adapters_disabled`.
"""

from __future__ import annotations

import contextlib

import mlx.nn as nn
from mlx.utils import tree_unflatten


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
    base = [(name, getattr(m, "linear", None) or getattr(m, "embedding")) for name, m in wrappers]
    model.update_modules(tree_unflatten(base))
    try:
        yield model
    finally:
        model.update_modules(tree_unflatten(wrappers))
