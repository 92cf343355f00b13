"""Where training metrics go: a small list of reporters the trainer calls in turn.

Each reporter has ``on_step(step, info)`` (every optimizer step: the progress bar), ``on_log(record)``
(every logged train or eval record) and ``close()``. :func:`make_reporters` builds the list for a
run: terminal lines, a tqdm progress bar, ``metrics.jsonl``, the caller's callback, and the optional
``--report-to wandb`` / ``tensorboard`` (their packages are optional dependencies).

Records are flat dicts with ``step`` and ``epoch``; train records carry ``loss``, ``rewards/*``,
``logps/*``, ``kl/*``, ``learning_rate``, ``grad_norm``, ``tokens_per_second``, ``step_seconds``,
``peak_memory_gb`` (and ``allreduce_seconds`` with several processes);
evaluation records the same metric names with the prefix ``eval_``.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from tqdm import tqdm

from .checkpoint import METRICS_FILE, write_metrics
from .errors import UserError


def say(message: str) -> None:
    """Print one line (or lines) to stdout without breaking an active progress bar."""
    tqdm.write(message, file=sys.stdout)
    sys.stdout.flush()


def format_train(r: dict, total: int) -> str:
    """The terminal line of a train record."""
    return (
        f"step {r['step']}/{total} | loss {r['loss']:.4f} | acc {r['rewards/accuracies']:.3f} "
        f"| margin {r['rewards/margins']:+.4f} | kl c {r['kl/chosen']:.4f} r {r['kl/rejected']:.4f} "
        f"| lr {r['learning_rate']:.2e} | gnorm {r['grad_norm']:.3f} | {r['tokens_per_second']:.0f} tok/s "
        f"| {r['peak_memory_gb']:.2f} GB"
    )


def format_eval(r: dict) -> str:
    """The terminal line of an evaluation record."""
    return (
        f"eval @ step {r['step']} | loss {r['eval_loss']:.4f} | acc {r['eval_rewards/accuracies']:.3f} "
        f"| margin {r['eval_rewards/margins']:+.4f} | kl c {r['eval_kl/chosen']:.4f} r {r['eval_kl/rejected']:.4f}"
    )


class Reporter:
    """Base class: every hook does nothing."""

    def on_step(self, step: int, info: dict) -> None:
        """After each optimizer step; ``info``: ``loss``, ``accuracy``, ``tokens_per_second``."""

    def on_log(self, record: dict) -> None:
        """After each logged train or evaluation record."""

    def close(self) -> None:
        """At the end of the run (also after an error)."""


class TerminalLines(Reporter):
    """One line per logged record on stdout."""

    def __init__(self, total_steps: int):
        self.total = total_steps

    def on_log(self, record: dict) -> None:
        say(format_eval(record) if "eval_loss" in record else format_train(record, self.total))


class ProgressBar(Reporter):
    """A tqdm bar on stderr over the optimizer steps, with the last step's loss and speed."""

    def __init__(self, total_steps: int, initial: int, enabled: bool = True):
        self.bar = tqdm(
            total=total_steps,
            initial=initial,
            desc="train",
            unit="step",
            disable=not enabled,
            dynamic_ncols=True,
            file=sys.stderr,
        )

    def on_step(self, step: int, info: dict) -> None:
        self.bar.update(1)
        self.bar.set_postfix(
            loss=f"{info['loss']:.4f}",
            acc=f"{info['accuracy']:.2f}",
            tok_s=f"{info['tokens_per_second']:.0f}",
            refresh=False,
        )

    def close(self) -> None:
        self.bar.close()


class MetricsFile(Reporter):
    """``metrics.jsonl``: the whole history, rewritten atomically after each record (so a crash
    never leaves a half line, and a resumed run continues the history it was given)."""

    def __init__(self, path, history: list[dict]):
        self.path, self.history = Path(path), list(history)

    def on_log(self, record: dict) -> None:
        self.history.append(record)
        write_metrics(self.path, self.history)


class Callback(Reporter):
    """The caller's function, called with a copy of every record."""

    def __init__(self, fn):
        self.fn = fn

    def on_log(self, record: dict) -> None:
        self.fn(dict(record))


class WandB(Reporter):
    """Weights & Biases: one run named after the output folder, its files under it
    (``WANDB_MODE=offline`` keeps everything local; ``wandb sync`` uploads later)."""

    def __init__(self, out_dir: Path, config: dict):
        import wandb

        self.run = wandb.init(project="tdpo-mlx", name=out_dir.resolve().name, dir=str(out_dir), config=config)

    def on_log(self, record: dict) -> None:
        self.run.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])

    def close(self) -> None:
        self.run.finish()


class TensorBoard(Reporter):
    """TensorBoard event files in ``ADAPTER_PATH/tensorboard`` (``tensorboard --logdir ...``),
    written by the ``tensorboard`` package's own writer (no TensorFlow, no torch)."""

    def __init__(self, out_dir: Path):
        from tensorboard.summary import Writer

        self.writer = Writer(str(out_dir / "tensorboard"))

    def on_log(self, record: dict) -> None:
        for k, v in record.items():
            if k != "step" and isinstance(v, (int, float)):
                self.writer.add_scalar(k, float(v), step=record["step"])
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class Reporters(list):
    """A list of reporters, called in order."""

    def on_step(self, step: int, info: dict) -> None:
        for r in self:
            r.on_step(step, info)

    def on_log(self, record: dict) -> None:
        for r in self:
            r.on_log(record)

    def close(self) -> None:
        for r in self:
            r.close()


def check_report_to(report_to) -> None:
    """Fail early, in one line, when ``--report-to`` names a target whose package is missing
    (the names themselves are checked by :meth:`tdpo_mlx.config.TrainConfig.validate`).

    Raises:
        UserError: the package is not installed (with the pip command).
    """

    for name in report_to or ():
        if importlib.util.find_spec(name) is None:
            raise UserError(f"--report-to {name}: the {name} package is not installed; pip install {name}")


def make_reporters(
    config, out_dir: Path, total_steps: int, start_step: int, history: list[dict], callback=None
) -> Reporters:
    """The reporters of one run, in call order.

    Args:
        config: the run's :class:`tdpo_mlx.config.TrainConfig` (``progress``, ``report_to``).
        out_dir: the run's output folder (``metrics.jsonl``, ``tensorboard/``, ``wandb/``).
        total_steps, start_step: for the line format and the progress bar.
        history: metric records already in ``metrics.jsonl`` (a resumed run's past).
        callback: optional function called with every record.
    """
    check_report_to(config.report_to)
    reporters = Reporters(
        [
            TerminalLines(total_steps),
            ProgressBar(total_steps, start_step, enabled=config.progress),
            MetricsFile(out_dir / METRICS_FILE, history),
        ]
    )
    if callback is not None:
        reporters.append(Callback(callback))
    if "wandb" in (config.report_to or ()):
        reporters.append(WandB(out_dir, config.to_dict()))
    if "tensorboard" in (config.report_to or ()):
        reporters.append(TensorBoard(out_dir))
    return reporters
