"""TDPO training of LoRA/DoRA adapters: loss over a batch, gradient accumulation, the loop.

One optimizer step, top to bottom (:func:`train`):

1. reseed the RNG from (seed, step) so dropout is reproducible and resumable;
2. take ``grad_accum`` micro-batches of ``batch_size`` pairs from the deterministic
   :class:`tdpo_mlx.data.BatchIterator`;
3. for each micro-batch: statistics (policy vs. reference = adapters off, under stop-gradient),
   per-pair TDPO/DPO/SFT losses, and the gradient of ``sum(pair losses) / total pairs of the
   step``; summing these gradients gives exactly the gradient of the mean loss over all pairs
   (micro-batches weighted by their pair counts);
4. clip the global gradient norm (``max_grad_norm``, paper code: 10.0), stop on a non-finite
   loss or norm, and apply the optimizer (RMSprop by default, as in the paper);
5. log metrics averaged over pairs; evaluate, save adapters and a full checkpoint on schedule.

Metrics use TRL's names (``loss``, ``rewards/chosen`` ...) plus ``kl/chosen``, ``kl/rejected``,
``kl/margin``; evaluation metrics carry the prefix ``eval_``.
"""

from __future__ import annotations

import json
import math
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
from mlx.utils import tree_flatten, tree_map

from .atomic import write_json, write_jsonl
from .checkpoint import (
    ADAPTER_CONFIG,
    find_checkpoint,
    load_checkpoint,
    save_adapters,
    save_checkpoint,
)
from .config import TrainConfig
from .data import BatchIterator, make_batch
from .fast_stats import batch_statistics, enable_grad_checkpoint
from .losses import pair_metrics, preference_loss
from .stats import split_pairs

__all__ = [
    "TrainConfig",
    "NonFiniteLossError",
    "METRIC_KEYS",
    "batch_loss",
    "accumulate_gradients",
    "build_schedule",
    "build_optimizer",
    "evaluate",
    "load_data",
    "split_holdout",
    "train",
]

METRIC_KEYS = (
    "loss",
    "rewards/chosen",
    "rewards/rejected",
    "rewards/accuracies",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
    "kl/chosen",
    "kl/rejected",
    "kl/margin",
)
METRICS_FILE = "metrics.jsonl"


class NonFiniteLossError(RuntimeError):
    """The loss or gradient norm of a step was NaN/inf; the run stops before applying it."""

    def __init__(self, step: int, loss: float, grad_norm: float, checkpoint: str | None):
        self.step, self.loss, self.grad_norm, self.checkpoint = step, loss, grad_norm, checkpoint
        where = f"the last good checkpoint is {checkpoint}" if checkpoint else "no checkpoint was written yet"
        super().__init__(
            f"non-finite loss at step {step} (loss={loss}, grad_norm={grad_norm}); training stopped "
            f"without applying this step; {where}. Try a lower --lr, --max-grad-norm, or check the data."
        )


# --------------------------------------------------------------------------------------------
# Loss over one batch and gradient accumulation
# --------------------------------------------------------------------------------------------


def _statistics(model, batch, reference_model=None, average_log_prob=False, differentiable=True):
    """Per-sequence statistics of a batch through :func:`tdpo_mlx.fast_stats.batch_statistics`
    (response-only LM head; ``differentiable=False`` skips the work only backward needs)."""
    return batch_statistics(
        model, batch, reference_model=reference_model, average_log_prob=average_log_prob, differentiable=differentiable
    )


def batch_loss(
    model,
    batch,
    *,
    loss_type="tdpo2",
    beta=0.1,
    alpha=0.5,
    reference_model=None,
    average_log_prob=False,
    total_pairs=None,
    differentiable=True,
):
    """Training objective of one (micro-)batch.

    Args:
        model: the policy (with adapters); reference = ``reference_model`` or the adapters off.
        batch: :class:`tdpo_mlx.data.Batch` of B pairs (2B rows).
        loss_type, beta, alpha: see :func:`tdpo_mlx.losses.preference_loss`.
        total_pairs: divisor of the summed per-pair losses (default B). With gradient
            accumulation pass the number of pairs of the whole step, so that summing the
            micro-batch gradients gives the gradient of the mean over all pairs.
        differentiable: False for evaluation (no gradient will be taken).

    Returns:
        ``(loss, sums)``: loss a scalar float32 = sum_i loss_i / total_pairs; ``sums`` a dict of
        scalar sums over the B pairs for each key of :data:`METRIC_KEYS` (stop-gradient).
    """
    stats = _statistics(
        model, batch, reference_model=reference_model, average_log_prob=average_log_prob, differentiable=differentiable
    )
    chosen, rejected = split_pairs(stats)
    out = preference_loss(chosen, rejected, loss_type, beta, alpha)
    per_pair = pair_metrics(chosen, rejected, out)
    sums = {k: mx.stop_gradient(mx.sum(v)) for k, v in per_pair.items()}
    n = float(total_pairs if total_pairs is not None else batch.n_pairs)
    return mx.sum(out.losses) / n, sums


@dataclass
class StepResult:
    """Output of :func:`accumulate_gradients`: ``loss`` (mean over pairs, float), ``grads``
    (tree like ``model.trainable_parameters()``), ``sums`` (metric sums over pairs, floats),
    ``n_pairs`` and ``n_tokens`` (real tokens in the micro-batches)."""

    loss: float
    grads: dict
    sums: dict
    n_pairs: int
    n_tokens: int


def accumulate_gradients(model, batches, **loss_kw) -> StepResult:
    """Gradient of the mean per-pair loss over all pairs of ``batches`` (any sizes).

    Each micro-batch contributes grad(sum of its pair losses / total pairs); the sum equals the
    gradient of one big batch exactly (up to float rounding). Arrays are evaluated after each
    micro-batch so only one micro-batch's graph is alive at a time.

    Args:
        model: policy; gradients are taken w.r.t. ``model.trainable_parameters()``.
        batches: list of :class:`tdpo_mlx.data.Batch`.
        **loss_kw: loss_type, beta, alpha, reference_model, average_log_prob (see :func:`batch_loss`).
    """
    batches = list(batches)
    total = sum(b.n_pairs for b in batches)
    if total == 0:
        raise ValueError("accumulate_gradients needs at least one pair")

    def fn(b):
        return batch_loss(model, b, total_pairs=total, **loss_kw)

    value_and_grad = nn.value_and_grad(model, fn)
    grads, loss, sums, tokens = None, 0.0, {}, 0
    for b in batches:
        (part_loss, s), g = value_and_grad(b)
        grads = g if grads is None else tree_map(mx.add, grads, g)
        mx.eval(grads, part_loss, s)
        loss += part_loss.item()
        for k, v in s.items():
            sums[k] = sums.get(k, 0.0) + v.item()
        tokens += b.n_tokens
    return StepResult(loss, grads, sums, total, tokens)


# --------------------------------------------------------------------------------------------
# Optimizer and schedule
# --------------------------------------------------------------------------------------------


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


def _global_norm(grads) -> mx.array:
    return mx.sqrt(sum(mx.sum(g.astype(mx.float32) ** 2) for _, g in tree_flatten(grads)))


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def split_holdout(pairs, fraction: float, seed: int = 0):
    """Deterministically hold out ``round(fraction * n)`` pairs (at least 1 when fraction > 0).

    Uses :func:`tdpo_mlx.data.split_holdout` when the data module provides it.
    Returns ``(train, heldout)``, each in the original order.
    """
    from . import data

    own = getattr(data, "split_holdout", None)
    if own is not None:
        return own(pairs, fraction, seed)
    import numpy as np

    pairs = list(pairs)
    if fraction <= 0 or len(pairs) < 2:
        return pairs, []
    k = min(len(pairs) - 1, max(1, round(fraction * len(pairs))))
    held = set(np.random.default_rng([seed, 7919]).permutation(len(pairs))[:k].tolist())
    return [p for i, p in enumerate(pairs) if i not in held], [p for i, p in enumerate(pairs) if i in held]


def load_data(config: TrainConfig, tokenizer, log=print):
    """Training and held-out :class:`EncodedPair` lists (:func:`tdpo_mlx.data.load_train_eval`)."""
    from .data import load_train_eval

    return load_train_eval(config, tokenizer, log=log)


def _summary_text(summary) -> str:
    fmt = getattr(summary, "format", None)
    return fmt() if callable(fmt) else str(summary)


def _pad_id(tokenizer) -> int:
    for name in ("pad_token_id", "eos_token_id"):
        v = getattr(tokenizer, name, None) if tokenizer is not None else None
        if isinstance(v, int):
            return v
    return 0


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------


def evaluate(model, batches, *, prefix="eval_", **loss_kw) -> dict:
    """Metrics averaged over all pairs of ``batches`` (no gradient, eval mode: no dropout).

    Returns:
        ``{prefix + key: float}`` for every key of :data:`METRIC_KEYS`.
    """
    was_training = model.training
    model.eval()
    sums, n = {}, 0
    try:
        for b in batches:
            _, s = batch_loss(model, b, differentiable=False, **loss_kw)
            mx.eval(s)
            for k, v in s.items():
                sums[k] = sums.get(k, 0.0) + v.item()
            n += b.n_pairs
    finally:
        model.train(was_training)
    return {prefix + k: sums[k] / max(n, 1) for k in METRIC_KEYS if k in sums}


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------


def _step_seed(seed: int, step: int) -> int:
    return (int(seed) * 1_000_003 + int(step)) % (2**32)


def _total_steps(config: TrainConfig, batches_per_epoch: int) -> int:
    if config.iters:
        return int(config.iters)
    epochs = config.epochs if config.epochs else 1.0
    return max(1, math.ceil(epochs * batches_per_epoch / config.grad_accum))


def _format_line(r: dict, total: int) -> str:
    return (
        f"step {r['step']}/{total} | loss {r['loss']:.4f} | acc {r['rewards/accuracies']:.3f} "
        f"| margin {r['rewards/margins']:+.4f} | kl c {r['kl/chosen']:.4f} r {r['kl/rejected']:.4f} "
        f"| lr {r['learning_rate']:.2e} | gnorm {r['grad_norm']:.3f} | {r['tokens_per_second']:.0f} tok/s "
        f"| {r['peak_memory_gb']:.2f} GB"
    )


def _format_eval(r: dict) -> str:
    return (
        f"eval @ step {r['step']} | loss {r['eval_loss']:.4f} | acc {r['eval_rewards/accuracies']:.3f} "
        f"| margin {r['eval_rewards/margins']:+.4f} | kl c {r['eval_kl/chosen']:.4f} r {r['eval_kl/rejected']:.4f}"
    )


def _peak_gb() -> float:
    try:
        from .backend import peak_memory_gb

        return float(peak_memory_gb())
    except Exception:  # pragma: no cover - metal-only calls guarded
        return float("nan")


def _read_metrics(path: Path, upto_step: int) -> list[dict]:
    if not path.exists():
        return []
    out = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if line:
                r = json.loads(line)
                if r.get("step", 0) <= upto_step:
                    out.append(r)
    return out


def train(
    config: TrainConfig, *, callback=None, model=None, tokenizer=None, reference=None, train_pairs=None, eval_pairs=None
) -> dict:
    """Train adapters with TDPO (or DPO/SFT) and write them to ``config.adapter_path``.

    Args:
        config: :class:`TrainConfig`.
        callback: called with every logged record (dict; train records have ``loss`` ...,
            evaluation records ``eval_loss`` ...; both have ``step`` and ``epoch``).
        model, tokenizer: an already loaded policy with adapters (from
            :func:`tdpo_mlx.models.load_policy`); loaded from ``config`` when None.
        reference: a separate frozen reference model (default: ``config.ref_model`` if set,
            else the policy with adapters off).
        train_pairs, eval_pairs: lists of :class:`tdpo_mlx.data.EncodedPair`; loaded from
            ``config.data`` when None.

    Returns:
        dict: the last training metrics merged with the last evaluation metrics, plus ``step``,
        ``adapter_path``, ``checkpoint`` and ``interrupted`` (True after Ctrl-C).

    Raises:
        NonFiniteLossError: a step had a NaN/inf loss or gradient norm (nothing of it applied;
            earlier checkpoints untouched).
        ValueError / FileNotFoundError: bad configuration, data or resume path.
    """
    from .models import load_policy, load_reference

    config.validate()
    out_dir = Path(config.adapter_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    pbar = None

    def say(msg: str) -> None:
        if pbar is not None:
            pbar.write(msg)
        else:
            print(msg, flush=True)

    mx.random.seed(config.seed)
    if model is None:
        model, tokenizer = load_policy(
            config.model,
            lora_rank=config.lora_rank,
            lora_alpha=config.lora_alpha,
            lora_scale=config.lora_scale,
            lora_dropout=config.lora_dropout,
            lora_layers=config.lora_layers,
            lora_keys=config.lora_keys,
            dora=config.dora,
            quantize=config.quantize,
            dtype=config.dtype,
        )
    if reference is None and config.ref_model:
        reference = load_reference(config.ref_model, quantize=config.quantize, dtype=config.dtype)
    if train_pairs is None:
        train_pairs, loaded_eval = load_data(config, tokenizer, log=say)
        if eval_pairs is None:
            eval_pairs = loaded_eval
    eval_pairs = list(eval_pairs or [])
    if config.grad_checkpoint:
        enable_grad_checkpoint(model)

    loss_kw = dict(
        loss_type=config.loss,
        beta=config.beta,
        alpha=config.alpha,
        reference_model=reference,
        average_log_prob=config.average_log_prob,
    )
    pad_id = _pad_id(tokenizer)
    it = BatchIterator(train_pairs, config.batch_size, seed=config.seed, pad_id=pad_id)
    eval_batches = [
        make_batch(eval_pairs[i : i + config.batch_size], pad_id) for i in range(0, len(eval_pairs), config.batch_size)
    ]
    total = _total_steps(config, it.batches_per_epoch)
    optimizer = build_optimizer(config, total)

    base_cfg = getattr(model, "adapter_config", None)
    if base_cfg is None:
        raise ValueError("the model carries no adapter_config: load it with tdpo_mlx.models.load_policy")
    adapter_cfg = {
        **base_cfg,
        "base_model": config.model,
        "quantize": config.quantize,
        "tdpo": {
            "loss": config.loss,
            "beta": config.beta,
            "alpha": config.alpha,
            "average_log_prob": config.average_log_prob,
            "reference": config.ref_model or "base (adapters off)",
        },
        "train_config": config.to_dict(),
    }

    step, history, last_ckpt = 0, [], None
    metrics_path = out_dir / METRICS_FILE
    if config.resume:
        ck = find_checkpoint(config.resume, out_dir)
        state = load_checkpoint(ck, model, optimizer)
        step = int(state["step"])
        it.load_state_dict(state["data"])
        history = _read_metrics(metrics_path, step)
        last_ckpt = str(ck)
        say(f"resumed from {ck} at step {step} (epoch {it.epoch}, batch {it.position}); continuing at step {step + 1}")
    write_json(out_dir / ADAPTER_CONFIG, adapter_cfg)

    from .models import count_trainable

    n_trainable = count_trainable(model)
    say(
        f"policy: {n_trainable:,} trainable parameters; {len(train_pairs)} train pairs, {len(eval_pairs)} eval pairs; "
        f"{total} steps x {config.batch_size * config.grad_accum} pair(s) ({it.batches_per_epoch} batches/epoch)"
    )

    def log(record: dict) -> None:
        history.append(record)
        write_jsonl(metrics_path, history)
        if callback is not None:
            callback(dict(record))

    def epoch_pos() -> float:
        return it.epoch + it.position / max(1, it.batches_per_epoch)

    last_train, last_eval = {}, {}

    def run_eval() -> None:
        nonlocal last_eval
        if not eval_batches:
            return
        r = {**evaluate(model, eval_batches, **loss_kw), "step": step, "epoch": epoch_pos()}
        last_eval = r
        say(_format_eval(r))
        log(r)

    def checkpoint() -> str:
        nonlocal last_ckpt
        adapter_cfg["steps"] = step  # optimizer steps behind these adapters (read by the model card)
        save_adapters(out_dir, model, adapter_cfg)
        state = {
            "data": it.state_dict(),
            "epoch": epoch_pos(),
            "total_steps": total,
            "rng": {"scheme": "mx.random.seed((seed * 1000003 + step) mod 2^32) before each step", "seed": config.seed},
            "config": config.to_dict(),
        }
        last_ckpt = str(
            save_checkpoint(out_dir, step, model, optimizer, adapter_cfg, state, keep=config.keep_checkpoints)
        )
        return last_ckpt

    # Ctrl-C: finish the current step, checkpoint, return. A second Ctrl-C aborts at once.
    stop = {"flag": False}
    old_handler = None
    if threading.current_thread() is threading.main_thread():

        def handler(signum, frame):
            if stop["flag"]:
                raise KeyboardInterrupt
            stop["flag"] = True

        old_handler = signal.signal(signal.SIGINT, handler)

    # Warm-up on a 1-pair, 2-token batch in eval mode: one-time setup inside the statistics
    # (e.g. the fast path's numerical check of the LM-head plan) then runs without dropout and
    # before the per-step RNG reseeding, so fresh and resumed runs draw identical dropout masks.
    p0 = train_pairs[0]
    warm = make_batch([type(p0)(p0.prompt_ids[:1], p0.chosen_ids[:1], p0.rejected_ids[:1])], pad_id)
    model.eval()
    mx.eval(batch_loss(model, warm, differentiable=False, **loss_kw))
    model.train()
    if step == 0:
        run_eval()
    window = {"sums": {}, "pairs": 0, "tokens": 0, "time": 0.0, "gnorm": 0.0, "steps": 0}
    interrupted = False
    try:
        from tqdm import tqdm

        pbar = tqdm(
            total=total,
            initial=step,
            desc="train",
            unit="step",
            disable=not config.progress,
            dynamic_ncols=True,
            file=sys.stderr,
        )
        while step < total:
            mx.random.seed(_step_seed(config.seed, step))
            batches = [next(it) for _ in range(config.grad_accum)]
            t0 = time.perf_counter()
            res = accumulate_gradients(model, batches, **loss_kw)
            grads = res.grads
            if config.max_grad_norm > 0:
                grads, gnorm = optim.clip_grad_norm(grads, config.max_grad_norm)
            else:
                gnorm = _global_norm(grads)
            gnorm = float(gnorm.item() if hasattr(gnorm, "item") else gnorm)
            if not (math.isfinite(res.loss) and math.isfinite(gnorm)):
                raise NonFiniteLossError(step + 1, res.loss, gnorm, last_ckpt)
            optimizer.update(model, grads)
            mx.eval(model.trainable_parameters(), optimizer.state)
            dt = time.perf_counter() - t0
            step += 1
            lr = float(optimizer.learning_rate.item())

            for k, v in res.sums.items():
                window["sums"][k] = window["sums"].get(k, 0.0) + v
            window["pairs"] += res.n_pairs
            window["tokens"] += res.n_tokens
            window["time"] += dt
            window["gnorm"] += gnorm
            window["steps"] += 1
            pbar.update(1)
            pbar.set_postfix(
                loss=f"{res.loss:.4f}",
                acc=f"{res.sums['rewards/accuracies'] / res.n_pairs:.2f}",
                tok_s=f"{res.n_tokens / max(dt, 1e-9):.0f}",
                refresh=False,
            )

            if step % config.steps_per_report == 0 or step == total or stop["flag"]:
                r = {k: window["sums"][k] / window["pairs"] for k in METRIC_KEYS}
                r.update(
                    learning_rate=lr,
                    grad_norm=window["gnorm"] / window["steps"],
                    tokens_per_second=window["tokens"] / max(window["time"], 1e-9),
                    peak_memory_gb=_peak_gb(),
                    step=step,
                    epoch=epoch_pos(),
                )
                last_train = r
                say(_format_line(r, total))
                log(r)
                window = {"sums": {}, "pairs": 0, "tokens": 0, "time": 0.0, "gnorm": 0.0, "steps": 0}
            if stop["flag"]:
                interrupted = True
                ck = checkpoint()
                say(
                    f"interrupted: checkpoint at step {step} written to {ck}; continue with --resume latest "
                    f"--adapter-path {out_dir}"
                )
                break
            if config.eval_every and step % config.eval_every == 0 and step < total:
                run_eval()
            if config.save_every and step % config.save_every == 0 and step < total:
                checkpoint()
        if not interrupted:
            if not last_eval or last_eval.get("step") != step:
                run_eval()
            ck = checkpoint()
            say(f"saved adapters to {out_dir} (checkpoint {ck})")
    except NonFiniteLossError as e:
        say(str(e))
        raise
    finally:
        if pbar is not None:
            pbar.close()
        if old_handler is not None:
            signal.signal(signal.SIGINT, old_handler)
    return {
        **last_train,
        **last_eval,
        "step": step,
        "adapter_path": str(out_dir),
        "checkpoint": last_ckpt,
        "interrupted": interrupted,
        "trainable_parameters": n_trainable,
    }
