"""TDPO training of LoRA/DoRA adapters: the run (setup, one step, the loop, checkpoints).

The objective of a batch and gradient accumulation live in :mod:`tdpo_mlx.objective`, the
optimizer in :mod:`tdpo_mlx.optimizers`; their public names are importable from here too.

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

import math
import signal
import threading
import time
from collections.abc import Callable
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
from mlx.utils import tree_flatten
from mlx_lm.utils import maybe_set_recommended_wired_limit

from .atomic import write_json
from .backend import peak_memory_gb, set_buffer_cache_from_memory
from .checkpoint import (
    ADAPTER_CONFIG,
    CHECKPOINTS,
    METRICS_FILE,
    find_checkpoint,
    load_checkpoint,
    read_metrics,
    resume_settings,
    save_adapters,
    save_checkpoint,
)
from .config import TrainConfig
from .data import BatchIterator, load_train_eval, make_batch
from .data import eval_batches as make_eval_batches
from .data import pad_id as data_pad_id
from .distributed import World, check_global_batch, init_world, shard
from .fast_stats import enable_grad_checkpoint
from .models import count_trainable, load_policy, load_reference
from .objective import METRIC_KEYS, StepResult, accumulate_gradients, batch_loss, evaluate, evaluation_sums
from .optimizers import build_optimizer, build_schedule
from .report import Reporters, check_report_to, make_reporters, say

__all__ = [
    "TrainConfig",
    "NonFiniteLossError",
    "METRIC_KEYS",
    "batch_loss",
    "accumulate_gradients",
    "build_schedule",
    "build_optimizer",
    "clip_gradients",
    "evaluate",
    "Run",
    "setup",
    "train_step",
    "train",
]


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
# The run: setup, one step, the loop
# --------------------------------------------------------------------------------------------


@dataclass
class Run:
    """Everything a training run carries between steps (built by :func:`setup`)."""

    config: TrainConfig
    model: nn.Module
    optimizer: optim.Optimizer
    batches: BatchIterator
    eval_batches: list
    loss_kw: dict
    out_dir: Path
    adapter_config: dict
    total_steps: int
    world: World
    say: Callable[[str], None]  # prints on rank 0, nothing on the other ranks
    step: int = 0
    checkpoint: str | None = None
    history: list = field(default_factory=list)  # metric records of earlier runs (resume)
    last: dict = field(default_factory=lambda: {"train": {}, "eval": {}})  # last records logged by this run

    @property
    def epoch(self) -> float:
        """Fractional epochs of training batches served so far."""
        return self.batches.epoch + self.batches.position / max(1, self.batches.batches_per_epoch)


def setup(config: TrainConfig, *, model=None, tokenizer=None, reference=None, train_pairs=None, eval_pairs=None) -> Run:
    """Load what :func:`train` needs (see its arguments), restore a checkpoint on ``config.resume``,
    write ``adapter_config.json``; returns the :class:`Run`."""
    config.validate()
    if config.resume and model is None:  # the checkpoint's adapter settings are the truth
        config = resume_settings(config, given=config.changed_fields())
    check_report_to(config.report_to)
    world = init_world()
    check_global_batch(config.batch_size, config.grad_accum, world)
    log = say if world.is_main else _quiet
    out_dir = Path(config.adapter_path)
    if world.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    mx.random.seed(config.seed)
    maybe_set_recommended_wired_limit()  # as mlx-lm's trainer does (None where the device reports no size)
    set_buffer_cache_from_memory()
    if model is None:
        model, tokenizer = load_policy(config.model, quantize=config.quantize, dtype=config.dtype, **config.lora())
    if reference is None and config.ref_model:
        reference = load_reference(config.ref_model, quantize=config.quantize, dtype=config.dtype)
    if train_pairs is None:
        train_pairs, loaded_eval = load_train_eval(config, tokenizer, log=log)
        eval_pairs = loaded_eval if eval_pairs is None else eval_pairs
    if config.grad_checkpoint:
        enable_grad_checkpoint(model)
    pad_id = data_pad_id(tokenizer)
    batches = BatchIterator(train_pairs, config.batch_size, seed=config.seed, pad_id=pad_id)
    eval_pairs = list(eval_pairs or [])
    eval_batches = make_eval_batches(eval_pairs, config.batch_size, pad_id)  # sorted by length: little padding
    total = _total_steps(config, batches.batches_per_epoch)
    run = Run(
        config=config,
        model=model,
        optimizer=build_optimizer(config, total),
        batches=batches,
        eval_batches=eval_batches,
        loss_kw=_loss_options(config, reference),
        out_dir=out_dir,
        adapter_config=_adapter_config(config, model),
        total_steps=total,
        world=world,
        say=log,
    )
    if config.resume:
        _resume(run)
    if world.is_main:
        write_json(out_dir / ADAPTER_CONFIG, run.adapter_config)
    on = f" over {world.size} processes" if world.size > 1 else ""
    log(
        f"policy: {count_trainable(model):,} trainable parameters; {len(train_pairs)} train pairs, "
        f"{len(eval_pairs)} eval pairs; {total} steps x {config.batch_size * config.grad_accum} pair(s){on} "
        f"({batches.batches_per_epoch} batches/epoch)"
    )
    return run


def _loss_options(config: TrainConfig, reference) -> dict:
    """The keywords of :func:`batch_loss` a run uses for every batch."""
    return dict(
        loss_type=config.loss,
        beta=config.beta,
        alpha=config.alpha,
        reference_model=reference,
        average_log_prob=config.average_log_prob,
        share_prompt=config.share_prompt,
    )


def _quiet(message: str) -> None:
    """``say`` of the ranks other than 0."""


def _adapter_config(config: TrainConfig, model) -> dict:
    """mlx-lm's adapter_config.json of the policy plus the TDPO settings and the whole config."""
    base = getattr(model, "adapter_config", None)
    if base is None:
        raise ValueError("the model carries no adapter_config: load it with tdpo_mlx.models.load_policy")
    tdpo = {
        "loss": config.loss,
        "beta": config.beta,
        "alpha": config.alpha,
        "average_log_prob": config.average_log_prob,
        "reference": config.ref_model or "base (adapters off)",
    }
    return {
        **base,
        "base_model": config.model,
        "quantize": config.quantize,
        "tdpo": tdpo,
        "train_config": config.to_dict(),
    }


def _resume(run: Run) -> None:
    """Adapters, optimizer state, data position, step and metric history from ``--resume``."""
    ck = find_checkpoint(run.config.resume, run.out_dir)
    state = load_checkpoint(ck, run.model, run.optimizer)
    run.step, run.checkpoint = int(state["step"]), str(ck)
    run.batches.load_state_dict(state["data"])
    run.history = read_metrics(run.out_dir / METRICS_FILE, run.step)
    if run.world.sum([run.step])[0] != run.step * run.world.size:
        raise ValueError(f"--resume {run.config.resume}: the processes found checkpoints of different steps")
    run.say(
        f"resumed from {ck} at step {run.step} (epoch {run.batches.epoch}, batch {run.batches.position}); "
        f"continuing at step {run.step + 1}"
    )


def train_step(run: Run) -> StepResult:
    """One optimizer step: reseed dropout from (seed, step), accumulate ``grad_accum`` micro-batches,
    clip the global norm, stop on a non-finite loss or norm, update. Returns the step's
    :class:`StepResult` with ``grad_norm`` and ``seconds`` filled in.

    Raises:
        NonFiniteLossError: nothing of this step applied.
    """
    config, world = run.config, run.world
    mx.random.seed(_step_seed(config.seed, run.step))
    pairs = [p for _ in range(config.grad_accum) for p in run.batches.next_pairs()]
    batches = [make_batch(m, run.batches.pad_id) for m in shard(pairs, world, config.batch_size)]
    t0 = time.perf_counter()
    res = accumulate_gradients(run.model, batches, total_pairs=len(pairs) / world.size, **run.loss_kw)
    if world.size > 1:
        _reduce_step(res, world)
    grads, res.grad_norm = clip_gradients(res.grads, config.max_grad_norm)
    if not (math.isfinite(res.loss) and math.isfinite(res.grad_norm)):
        raise NonFiniteLossError(run.step + 1, res.loss, res.grad_norm, run.checkpoint)
    run.optimizer.update(run.model, grads)
    mx.eval(run.model.trainable_parameters(), run.optimizer.state)
    res.seconds = time.perf_counter() - t0
    run.step += 1
    return res


def _reduce_step(res: StepResult, world: World) -> None:
    """Make ``res`` global: gradients averaged over the processes (each holds its share's
    sum / (G / N), so the average is sum / G), loss, metric sums, pairs and tokens summed."""
    t0 = time.perf_counter()
    res.grads = world.average(res.grads)
    res.comm_seconds = time.perf_counter() - t0
    values = world.sum([res.loss, res.n_pairs, res.n_tokens, *(res.sums[k] for k in METRIC_KEYS)])
    res.loss = values[0] / world.size
    res.n_pairs, res.n_tokens = round(values[1]), round(values[2])
    res.sums = dict(zip(METRIC_KEYS, values[3:]))


def clip_gradients(grads, max_norm: float) -> tuple[dict, float]:
    """``(grads scaled to global L2 norm <= max_norm, norm before clipping)``; 0 = no clipping."""
    if max_norm > 0:
        grads, norm = optim.clip_grad_norm(grads, max_norm)
    else:
        norm = mx.sqrt(sum(mx.sum(g.astype(mx.float32) ** 2) for _, g in tree_flatten(grads)))
    return grads, float(norm.item())


class Window:
    """Train metrics between two reports: pair-weighted means (sums / pairs, never a mean of
    step means), mean gradient norm, tokens (of all processes) per second of step time, mean
    step time and, with several processes, mean time of the gradient all-reduce."""

    def __init__(self):
        self.sums, self.pairs, self.tokens, self.seconds, self.comm, self.norms = {}, 0, 0, 0.0, 0.0, []

    def add(self, res: StepResult) -> None:
        for k, v in res.sums.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.pairs += res.n_pairs
        self.tokens += res.n_tokens
        self.seconds += res.seconds
        self.comm += res.comm_seconds
        self.norms.append(res.grad_norm)

    def record(self, run: Run) -> dict:
        r = {k: self.sums[k] / self.pairs for k in METRIC_KEYS}
        r.update(
            learning_rate=float(run.optimizer.learning_rate.item()),
            grad_norm=sum(self.norms) / len(self.norms),
            tokens_per_second=self.tokens / max(self.seconds, 1e-9),
            step_seconds=self.seconds / len(self.norms),
            peak_memory_gb=run.world.max(peak_memory_gb()),
            step=run.step,
            epoch=run.epoch,
        )
        if run.world.size > 1:
            r["allreduce_seconds"] = self.comm / len(self.norms)
        self.__init__()
        return r


def evaluate_run(run: Run) -> dict | None:
    """The held-out metrics at the current step (``eval_*``, ``step``, ``epoch``); None without
    held-out pairs. With N processes each evaluates every N-th batch; sums and pair counts are
    added over the processes before dividing."""
    if not run.eval_batches:
        return None
    world = run.world
    sums, n = evaluation_sums(run.model, run.eval_batches[world.rank :: world.size], **run.loss_kw)
    if world.size > 1:
        n, *values = world.sum([n, *(sums[k] for k in METRIC_KEYS)])
        sums = dict(zip(METRIC_KEYS, values))
    return {**{f"eval_{k}": sums[k] / n for k in METRIC_KEYS}, "step": run.step, "epoch": run.epoch}


def save(run: Run) -> str:
    """Adapters into the output folder and a full checkpoint of the current step (written by
    rank 0 only); returns its path."""
    run.adapter_config["steps"] = run.step
    if not run.world.is_main:
        run.checkpoint = str(run.out_dir / CHECKPOINTS / f"step-{run.step:07d}")
        return run.checkpoint  # optimizer steps behind these adapters (read by the model card)
    save_adapters(run.out_dir, run.model, run.adapter_config)
    state = {
        "data": run.batches.state_dict(),
        "epoch": run.epoch,
        "total_steps": run.total_steps,
        "rng": {"scheme": "mx.random.seed((seed * 1000003 + step) mod 2^32) before each step", "seed": run.config.seed},
        "config": run.config.to_dict(),
    }
    path = save_checkpoint(
        run.out_dir, run.step, run.model, run.optimizer, run.adapter_config, state, keep=run.config.keep_checkpoints
    )
    run.checkpoint = str(path)
    return run.checkpoint


def warm_up(run: Run) -> None:
    """One 1-pair, 2-token batch in eval mode: one-time setup inside the statistics (the fast
    path's check of its LM-head plan) runs without dropout and before the per-step reseeding,
    so fresh and resumed runs draw identical dropout masks."""
    p = run.batches.pairs[0]
    tiny = make_batch([type(p)(p.prompt_ids[:1], p.chosen_ids[:1], p.rejected_ids[:1])], run.batches.pad_id)
    run.model.eval()
    mx.eval(batch_loss(run.model, tiny, differentiable=False, **run.loss_kw))
    run.model.train()


@contextmanager
def sigint_flag():
    """Ctrl-C sets ``flag.is_set()`` (the loop finishes its step, checkpoints, returns); a second
    Ctrl-C raises KeyboardInterrupt at once. Only in the main thread (signals live there)."""
    flag = threading.Event()

    def handler(signum, frame):
        if flag.is_set():
            raise KeyboardInterrupt
        flag.set()

    old = signal.signal(signal.SIGINT, handler) if threading.current_thread() is threading.main_thread() else None
    try:
        yield flag
    finally:
        if old is not None:
            signal.signal(signal.SIGINT, old)


def loop(run: Run, reporters: Reporters, stop: threading.Event) -> bool:
    """Optimizer steps up to ``run.total_steps``: log every ``steps_per_report`` steps, evaluate
    every ``eval_every`` and save every ``save_every`` (the final ones are :func:`train`'s). Returns
    True when Ctrl-C (``stop``) ended it early, right after the step in progress was logged."""
    config, window = run.config, Window()
    while run.step < run.total_steps:
        res = train_step(run)
        window.add(res)
        reporters.on_step(run.step, res.progress())
        stopping = run.world.any(stop.is_set())  # Ctrl-C in any process stops all
        if run.step % config.steps_per_report == 0 or run.step == run.total_steps or stopping:
            log(run, reporters, window.record(run))
        if stopping or run.world.any(stop.is_set()):  # also when set during that log (a callback)
            if window.norms:
                log(run, reporters, window.record(run))
            return True
        if _due(config.eval_every, run):
            log(run, reporters, evaluate_run(run))
        if _due(config.save_every, run):
            save(run)
    return False


def log(run: Run, reporters: Reporters, record: dict | None) -> None:
    """Send a train or evaluation record (None: nothing to log) to every reporter."""
    if record is not None:
        run.last["eval" if "eval_loss" in record else "train"] = record
        reporters.on_log(record)


def _step_seed(seed: int, step: int) -> int:
    return (int(seed) * 1_000_003 + int(step)) % (2**32)


def _total_steps(config: TrainConfig, batches_per_epoch: int) -> int:
    if config.iters:
        return int(config.iters)
    epochs = config.epochs if config.epochs else 1.0
    return max(1, math.ceil(epochs * batches_per_epoch / config.grad_accum))


def _due(every: int, run: Run) -> bool:
    return bool(every) and run.step % every == 0 and run.step < run.total_steps


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
        ``adapter_path``, ``checkpoint``, ``interrupted`` (True after Ctrl-C) and
        ``trainable_parameters``.

    Raises:
        NonFiniteLossError: a step had a NaN/inf loss or gradient norm (nothing of it applied;
            earlier checkpoints untouched).
        ValueError / FileNotFoundError: bad configuration, data or resume path.
    """
    run = setup(
        config, model=model, tokenizer=tokenizer, reference=reference, train_pairs=train_pairs, eval_pairs=eval_pairs
    )
    reporters = (
        make_reporters(config, run.out_dir, run.total_steps, run.step, run.history, callback)
        if run.world.is_main
        else Reporters()
    )
    with sigint_flag() as stop, closing(reporters):
        warm_up(run)
        if run.step == 0:
            log(run, reporters, evaluate_run(run))
        try:
            interrupted = loop(run, reporters, stop)
        except NonFiniteLossError as e:
            run.say(str(e))
            raise
        if interrupted:
            ck = save(run)
            run.say(
                f"interrupted: checkpoint at step {run.step} written to {ck}; continue with --resume latest "
                f"--adapter-path {run.out_dir}"
            )
        else:
            if run.last["eval"].get("step") != run.step:
                log(run, reporters, evaluate_run(run))
            run.say(f"saved adapters to {run.out_dir} (checkpoint {save(run)})")
        run.world.barrier()  # the others wait for rank 0's files
    return {
        **run.last["train"],
        **run.last["eval"],
        "step": run.step,
        "adapter_path": str(run.out_dir),
        "checkpoint": run.checkpoint,
        "interrupted": interrupted,
        "trainable_parameters": count_trainable(run.model),
    }
