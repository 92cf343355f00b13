"""Data parallelism over ``mx.distributed``: which rank this is, its share of a batch, reductions.

``mlx.launch -n 2 ...`` (or any launcher that sets MLX's ring/jaccl/mpi/nccl environment) starts
N copies of the same training command; :func:`init_world` asks ``mx.distributed.init()`` which one
this is. Each optimizer step's global batch (``batch_size x grad_accum`` pairs, the same on every
rank: the data order comes from the seed) is cut into N equal contiguous shares
(:func:`shard`); each rank accumulates its share's gradient of ``sum(pair losses) / (G / N)``
and ``nn.average_gradients`` (mlx-lm's LoRA trainer does the same) averages over the ranks,
which gives ``sum over all G pairs / G``: the update of one process with the same global batch.
Metrics are reduced as sums and counts (:meth:`World.sum`), never as means of per-rank means.
A singleton group (no launcher) skips every collective, so one process behaves exactly as
without this module.

A rank that dies closes its sockets and the others' next collective fails (ring backend): they
raise :class:`DistributedError`. A rank that hangs is caught by a watchdog: a collective waiting
longer than ``TDPO_MLX_DIST_TIMEOUT`` seconds (default 900) ends the process with exit code 3.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import dataclass, field

import mlx.core as mx
import mlx.nn as nn

DEFAULT_TIMEOUT = 900.0  # seconds a collective may wait for the other processes


class DistributedError(RuntimeError):
    """A collective failed: another process died or the connection was lost."""


@dataclass
class World:
    """The process group of a run: ``rank`` in ``[0, size)``; rank 0 writes every file."""

    group: mx.distributed.Group | None
    rank: int = 0
    size: int = 1
    timeout: float = DEFAULT_TIMEOUT
    _waiting_since: list = field(default_factory=list, repr=False)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over the processes of a list of numbers (one float32 all-reduce;
        returned unchanged in a singleton group)."""
        if self.size == 1:
            return list(values)
        x = mx.array([float(v) for v in values], dtype=mx.float32)
        return self._run(lambda: mx.distributed.all_sum(x, group=self.group, stream=mx.cpu)).tolist()

    def max(self, value: float) -> float:
        """The largest ``value`` over the processes."""
        if self.size == 1:
            return value
        x = mx.array([value], dtype=mx.float32)
        return self._run(lambda: mx.distributed.all_max(x, group=self.group, stream=mx.cpu)).item()

    def any(self, flag: bool) -> bool:
        """True in every process when ``flag`` is True in any (Ctrl-C in one process stops all)."""
        return bool(self.sum([float(flag)])[0]) if self.size > 1 else bool(flag)

    def average(self, grads):
        """``nn.average_gradients`` of a gradient tree, evaluated."""
        if self.size == 1:
            return grads
        return self._run(lambda: nn.average_gradients(grads, group=self.group))

    def barrier(self) -> None:
        """Wait until every process gets here."""
        self.sum([0.0])

    def _run(self, collective):
        """Evaluate a collective under the watchdog; a lost peer becomes a DistributedError."""
        self._waiting_since.append(time.monotonic())
        try:
            out = collective()
            mx.eval(out)
            return out
        except RuntimeError as e:
            raise DistributedError(
                f"process {self.rank} of {self.size}: lost the other processes ({e}); training stopped "
                "(resume from the last checkpoint with --resume latest)"
            ) from None
        finally:
            self._waiting_since.clear()

    def _watch(self) -> None:
        while True:
            time.sleep(min(5.0, self.timeout / 4))
            since = self._waiting_since[0] if self._waiting_since else None
            if since is not None and time.monotonic() - since > self.timeout:
                print(
                    f"process {self.rank} of {self.size}: waited {self.timeout:.0f} s for the other processes "
                    "(one hangs or died); exiting (TDPO_MLX_DIST_TIMEOUT sets the limit)",
                    file=sys.stderr,
                    flush=True,
                )
                os._exit(3)


def init_world() -> World:
    """The group that MLX's launcher environment describes (a singleton without one); with more
    than one process, a watchdog thread ends a collective that waits past the timeout."""
    group = mx.distributed.init()
    world = World(group, group.rank(), group.size(), float(os.environ.get("TDPO_MLX_DIST_TIMEOUT", DEFAULT_TIMEOUT)))
    if world.size > 1:
        threading.Thread(target=world._watch, name="tdpo-mlx-dist-watchdog", daemon=True).start()
    return world


def process_rank() -> int:
    """This process's rank (0 without a launcher), without starting anything else."""
    return mx.distributed.init().rank()


def check_global_batch(batch_size: int, grad_accum: int, world: World) -> None:
    """Raises ValueError, naming the numbers, when the global batch ``batch_size * grad_accum``
    cannot be split into ``world.size`` equal shares."""
    n = batch_size * grad_accum
    if n % world.size:
        raise ValueError(
            f"the global batch of {n} pairs (--batch-size {batch_size} x --grad-accum {grad_accum}) cannot be "
            f"split evenly over {world.size} processes: make batch-size x grad-accum a multiple of {world.size}"
        )


def shard(pairs: list, world: World, batch_size: int) -> list[list]:
    """This rank's share of one optimizer step's global batch (checked by
    :func:`check_global_batch`), as micro-batches of at most ``batch_size`` pairs (the last one
    may be smaller).

    Args:
        pairs: the step's G pairs, in the same order in every process.

    Returns:
        Lists of pairs; rank r gets the contiguous pairs ``[r * G / N, (r + 1) * G / N)``.
    """
    per = len(pairs) // world.size
    mine = pairs[world.rank * per : (world.rank + 1) * per]
    return [mine[i : i + batch_size] for i in range(0, per, batch_size)]
