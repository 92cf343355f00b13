"""Preference data: sources and formats -> records -> token ids with boundaries -> batches.

The entry point is :func:`load_preference_data` (sources and formats live in
:mod:`tdpo_mlx.data.sources`, the token rules and truncation in :mod:`tdpo_mlx.data.encode`);
this module turns the encoded pairs into padded batches.

Batch contract (used by :mod:`tdpo_mlx.stats` and the trainer): see :class:`Batch`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from ..errors import UserError

log = logging.getLogger(__name__)


@dataclass
class Batch:
    """A padded batch of B preference pairs as 2B rows.

    Attributes:
        input_ids: (2B, L) int32, right-padded. Rows [0, B) are the chosen sequences and rows
            [B, 2B) the rejected ones; row i and row B + i come from the same pair and share
            the same prompt ids.
        lengths: (2B,) int32, real tokens per row (prompt + response).
        prompt_lengths: (2B,) int32, prompt tokens per row.
        n_pairs: B.
    """

    input_ids: mx.array
    lengths: mx.array
    prompt_lengths: mx.array
    n_pairs: int

    @property
    def targets(self) -> mx.array:
        """(2B, L-1) int32 next-token targets: ``targets[:, t] = input_ids[:, t + 1]``."""
        return self.input_ids[:, 1:]

    @property
    def target_mask(self) -> mx.array:
        """(2B, L-1) bool response-target mask built from lengths (never from token ids)."""
        return response_target_mask(self.lengths, self.prompt_lengths, self.input_ids.shape[1] - 1)

    @property
    def n_tokens(self) -> int:
        """Total number of real tokens in the batch."""
        return int(mx.sum(self.lengths).item())


def response_target_mask(lengths: mx.array, prompt_lengths: mx.array, width: int) -> mx.array:
    """Mask over next-token target positions 0..width-1 that predict response tokens.

    Target t predicts token t + 1, which is a response token iff
    ``prompt_length <= t + 1 < length``.

    Args:
        lengths: (N,) int, real tokens per row; prompt_lengths: (N,) int; width: L - 1.

    Returns:
        (N, width) bool.
    """
    t = mx.arange(width)[None, :] + 1
    return (t >= prompt_lengths[:, None]) & (t < lengths[:, None])


@dataclass
class EncodedPair:
    """One preference pair as token ids.

    Attributes:
        prompt_ids: prompt tokens (with the single BOS, if the tokenizer has one), shared by
            both responses.
        chosen_ids / rejected_ids: response tokens only (EOS / end-of-turn included once).
        index: the record's index in its source (for error messages and reports).
    """

    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    index: int = -1

    @property
    def max_length(self) -> int:
        return len(self.prompt_ids) + max(len(self.chosen_ids), len(self.rejected_ids))


def pad_id(tokenizer) -> int:
    """The id written into padding: the tokenizer's pad token, else its EOS, else 0 (padding is
    masked by lengths, so the value never changes a result)."""
    for name in ("pad_token_id", "eos_token_id"):
        v = getattr(tokenizer, name, None)
        if isinstance(v, int):
            return v
    return 0


def make_batch(pairs, pad_id: int = 0, pad_to: int | None = None) -> Batch:
    """Right-pad B pairs into a :class:`Batch` of 2B rows (chosen rows first).

    Args:
        pairs: sequence of :class:`EncodedPair`.
        pad_id: id written into padding (never used to build masks).
        pad_to: optional width L (>= the longest row); default the longest row.
    """
    pairs = list(pairs)
    if not pairs:
        raise ValueError("make_batch needs at least one pair")
    rows = [p.prompt_ids + p.chosen_ids for p in pairs] + [p.prompt_ids + p.rejected_ids for p in pairs]
    width = max(len(r) for r in rows)
    if pad_to is not None:
        if pad_to < width:
            raise ValueError(f"pad_to={pad_to} is shorter than the longest row ({width})")
        width = pad_to
    ids = [r + [pad_id] * (width - len(r)) for r in rows]
    prompt = [len(p.prompt_ids) for p in pairs] * 2
    return Batch(
        input_ids=mx.array(ids, dtype=mx.int32),
        lengths=mx.array([len(r) for r in rows], dtype=mx.int32),
        prompt_lengths=mx.array(prompt, dtype=mx.int32),
        n_pairs=len(pairs),
    )


def eval_batches(pairs, batch_size: int, pad_id: int = 0) -> list[Batch]:
    """Batches of ``batch_size`` pairs for evaluation, pairs sorted by length first (stable).

    Evaluation metrics are sums over pairs, so the order is free: sorting puts similar lengths
    together and cuts the padding the bodies compute (on HH held-out pairs at batch 4, most of
    it). The last batch may be smaller; every pair is used once.
    """
    pairs = sorted(pairs, key=lambda p: p.max_length)
    return [make_batch(pairs[i : i + batch_size], pad_id) for i in range(0, len(pairs), batch_size)]


class BatchIterator:
    """Deterministic, resumable batches over epochs.

    Each epoch's order is a permutation drawn from ``seed + epoch``; with ``group_by_length``
    the pairs are sorted by length inside windows of ``batch_size * 50`` pairs, cut into batches,
    and the batches shuffled, so batches hold similar lengths (less padding) while the order
    stays random. ``state_dict()`` / ``load_state_dict()`` give the exact position for resuming.

    Args:
        pairs: list of :class:`EncodedPair` (at least ``batch_size``).
        batch_size: pairs per batch; the last incomplete batch of an epoch is dropped.
        seed: data-order seed.
        pad_id: padding id for :func:`make_batch`.
    """

    def __init__(
        self, pairs, batch_size: int, seed: int = 0, pad_id: int = 0, shuffle: bool = True, group_by_length: bool = True
    ):

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if len(pairs) < batch_size:
            raise UserError(f"{len(pairs)} training pairs are fewer than one batch of {batch_size}; lower --batch-size")
        self._np = np
        self.pairs = list(pairs)
        self.batch_size = batch_size
        self.seed = seed
        self.pad_id = pad_id
        self.shuffle = shuffle
        self.group_by_length = group_by_length
        self.epoch = 0
        self.position = 0  # batches already served in this epoch
        self._order = None

    @property
    def batches_per_epoch(self) -> int:
        return len(self.pairs) // self.batch_size

    def _epoch_batches(self, epoch: int) -> list[list[int]]:
        np = self._np
        n, b = len(self.pairs), self.batch_size
        rng = np.random.default_rng([self.seed, epoch])
        idx = rng.permutation(n) if self.shuffle else np.arange(n)
        if self.group_by_length:
            win = b * 50
            lens = np.array([self.pairs[i].max_length for i in range(n)])
            chunks = [idx[s : s + win] for s in range(0, n, win)]
            idx = np.concatenate([c[np.argsort(lens[c], kind="stable")] for c in chunks])
        batches = [idx[s : s + b].tolist() for s in range(0, n - b + 1, b)]
        if self.shuffle and self.group_by_length:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def __iter__(self):
        return self

    def __next__(self) -> Batch:
        return make_batch(self.next_pairs(), self.pad_id)

    def next_pairs(self) -> list[EncodedPair]:
        """The next batch's pairs, unpadded (what ``next()`` pads into a :class:`Batch`)."""
        if self._order is None:
            self._order = self._epoch_batches(self.epoch)
        if self.position >= len(self._order):
            self.epoch += 1
            self.position = 0
            self._order = self._epoch_batches(self.epoch)
        sel = self._order[self.position]
        self.position += 1
        return [self.pairs[i] for i in sel]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._order = None
