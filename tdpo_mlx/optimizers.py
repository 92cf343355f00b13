"""The optimizer and learning-rate schedule of a run (paper: RMSprop, linear warm-up)."""

from __future__ import annotations

import mlx.core as mx
import mlx.optimizers as optim

from .config import TrainConfig


def build_schedule(lr: float, warmup_steps: int, lr_schedule: str = "constant", total_steps: int = 1):
    """Learning rate as a function of the optimizer step s (0-based).

    Warm-up as in the TDPO/DPO reference code: ``lr * min(1, (s + 1) / (warmup + 1))``, then
    constant, or cosine decay from ``lr`` to 0 over the remaining ``total_steps - warmup`` steps.
    Returns a callable step -> float32 scalar array (mlx.optimizers schedules).
    """
    if lr_schedule == "constant":
        main = lambda _step: mx.array(lr, dtype=mx.float32)  # noqa: E731
    elif lr_schedule == "cosine":
        main = optim.cosine_decay(lr, max(1, total_steps - warmup_steps), 0.0)
    else:
        raise ValueError(f"unknown lr_schedule {lr_schedule!r}; choose constant or cosine")
    if warmup_steps <= 0:
        return main
    warm = optim.linear_schedule(lr / (warmup_steps + 1), lr, warmup_steps)
    return optim.join_schedules([warm, main], [warmup_steps])


def build_optimizer(config: TrainConfig, total_steps: int) -> optim.Optimizer:
    """The optimizer named by ``config.optimizer`` with the schedule of :func:`build_schedule`.

    rmsprop: alpha 0.99, eps 1e-8 (PyTorch defaults, the paper's optimizer); adam/adamw with
    bias correction (as PyTorch); adamw uses ``config.weight_decay``; sgd without momentum.
    """
    sched = build_schedule(config.lr, config.warmup_for(total_steps), config.lr_schedule, total_steps)
    name = config.optimizer
    if name == "rmsprop":
        return optim.RMSprop(learning_rate=sched, alpha=0.99, eps=1e-8)
    if name == "adamw":
        return optim.AdamW(learning_rate=sched, weight_decay=config.weight_decay, bias_correction=True)
    if name == "adam":
        return optim.Adam(learning_rate=sched, bias_correction=True)
    if name == "sgd":
        return optim.SGD(learning_rate=sched)
    raise ValueError(f"unknown optimizer {name!r}; choose rmsprop, adamw, adam or sgd")
