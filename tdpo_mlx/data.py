"""Preference data: sources and formats -> records -> token ids with boundaries -> batches.

The entry point is :func:`load_preference_data` (sources and formats live in
:mod:`tdpo_mlx.data_sources`, the token rules and truncation in :mod:`tdpo_mlx.data_encode`);
this module turns the encoded pairs into padded batches.

Batch contract (used by :mod:`tdpo_mlx.stats` and the trainer): see :class:`Batch`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import mlx.core as mx

from .data_encode import (  # noqa: F401  (re-exported)
    DROP_REASONS,
    HH_MARKER,
    DataSummary,
    TokenRules,
    _percentiles,
    encode_chat_record,
    encode_text_record,
    truncate_pair,
)
from .data_sources import DataError, RecordRefused, detect_format, normalize_format, read_rows, to_record

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

    def __init__(self, pairs, batch_size: int, seed: int = 0, pad_id: int = 0,
                 shuffle: bool = True, group_by_length: bool = True):
        import numpy as np

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if len(pairs) < batch_size:
            raise ValueError(f"{len(pairs)} pairs are fewer than one batch of {batch_size}")
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
            chunks = [idx[s:s + win] for s in range(0, n, win)]
            idx = np.concatenate([c[np.argsort(lens[c], kind="stable")] for c in chunks])
        batches = [idx[s:s + b].tolist() for s in range(0, n - b + 1, b)]
        if self.shuffle and self.group_by_length:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def __iter__(self):
        return self

    def __next__(self) -> Batch:
        if self._order is None:
            self._order = self._epoch_batches(self.epoch)
        if self.position >= len(self._order):
            self.epoch += 1
            self.position = 0
            self._order = self._epoch_batches(self.epoch)
        sel = self._order[self.position]
        self.position += 1
        return make_batch([self.pairs[i] for i in sel], self.pad_id)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._order = None


# ----------------------------------------------------------------------------- loading


def load_preference_data(
    data,
    *,
    tokenizer,
    split: str = "train",
    max_length: int = 512,
    max_prompt_length: int = 256,
    truncation_mode: str = "keep_end",
    prompt_key: str = "prompt",
    chosen_key: str = "chosen",
    rejected_key: str = "rejected",
    system_key: str = "system",
    data_format: str = "auto",
    chat_template: str | None = None,
    add_bos: bool | None = None,
    implicit_marker: str | None = HH_MARKER,
    strict: bool = False,
    limit: int | None = None,
) -> tuple[list[EncodedPair], DataSummary]:
    """Read preference data and encode it into :class:`EncodedPair` s with exact boundaries.

    Args:
        data: a file (``.jsonl``, ``.jsonl.gz``, ``.json``, ``.parquet``, ``.csv``), a
            directory with ``train``/``valid``/``test`` files, a ``datasets`` folder, a Hugging
            Face dataset id, a ``datasets.Dataset`` or a list of dicts (see
            :func:`tdpo_mlx.data_sources.read_rows`).
        tokenizer: a ``transformers`` tokenizer or an mlx-lm ``TokenizerWrapper``.
        split: split of a directory / dataset (``"valid"`` also matches validation/eval/dev).
        max_length: tokens per sequence (prompt + response), at most.
        max_prompt_length: prompt tokens always kept when a pair is too long
            (``1 <= max_prompt_length < max_length``).
        truncation_mode: ``"keep_end"`` (keep the prompt's last tokens, default, for dialogue)
            or ``"keep_start"``.
        prompt_key, chosen_key, rejected_key, system_key: field names.
        data_format: ``"auto"`` (per source: message lists -> conversational; a prompt key ->
            standard; else implicit), ``"standard"``, ``"implicit"`` (HH: whole texts) or
            ``"conversational"`` (also renders standard string records as a one-turn chat).
        chat_template: Jinja string or file overriding the tokenizer's template.
        add_bos: force BOS on/off; None follows the tokenizer.
        implicit_marker: the implicit format's prompt end (HH ``"\n\nAssistant:"``); None uses
            only the longest common prefix on a token boundary.
        strict: raise on the first refused record instead of dropping and counting it.
        limit: read only the first ``limit`` records.

    Returns:
        (pairs, summary): pairs in source order, ``pair.index`` the record index;
        :class:`DataSummary` with kept/dropped counts and token-length percentiles.

    Raises:
        DataError (a ValueError): malformed input (file and line), a missing key (keys found and
            the option to map them), a chat template that breaks the boundary (the record);
            with ``strict``, any refused record; no pair kept at all.
        FileNotFoundError: missing file or split.
    """
    t0 = time.perf_counter()
    fmt = normalize_format(data_format)
    truncate_pair([1], [1], [1], max_length=max_length, max_prompt_length=max_prompt_length,
                  truncation_mode=truncation_mode)  # validates the limits up front
    rules = TokenRules(tokenizer, chat_template=chat_template, add_bos=add_bos)
    src = read_rows(data, split)
    rows = src.rows[:limit] if limit is not None else src.rows
    if not rows:
        raise DataError(f"{src.name}: no records")
    keys = dict(prompt_key=prompt_key, chosen_key=chosen_key, rejected_key=rejected_key)
    if fmt == "auto":
        fmt = detect_format(rows[0], **keys)
    summary = DataSummary(source=src.name, split=split, data_format=fmt, records=len(rows),
                          max_length=max_length, max_prompt_length=max_prompt_length,
                          truncation_mode=truncation_mode)
    if fmt == "conversational" and not rules.has_template:
        raise DataError(f"{src.name}: conversational data needs a chat template and the tokenizer has "
                        "none; pass chat_template=<file.jinja> (--chat-template)")
    pairs: list[EncodedPair] = []
    plen, rlen, slen = [], [], []
    for i, row in enumerate(rows):
        where = f"{src.where[i]} (record {i})"
        try:
            rec = to_record(row, i, where, fmt, system_key=system_key, **keys)
            if rec.kind == "chat":
                p, c, r, mismatches = encode_chat_record(rules, rec)
            else:
                p, c, r, mismatches = encode_text_record(rules, rec, implicit_marker)
            raw = (len(p), len(c), len(r))
            p, c, r, pcut, rcut = truncate_pair(
                p, c, r, max_length=max_length, max_prompt_length=max_prompt_length,
                truncation_mode=truncation_mode, keep_first=1 if rules.add_bos or p[:1] == [rules.bos_id] else 0)
            if not c or not r:
                raise RecordRefused("too_long", f"{where}: a response would be truncated away")
            if c == r:
                raise RecordRefused("identical_after_truncation", f"{where}: chosen == rejected after truncation")
        except RecordRefused as e:
            if strict:
                raise DataError(str(e)) from None
            summary.drop(e.reason, where, i)
            continue
        summary.decode_mismatches += mismatches
        if rec.repaired:
            summary.repaired[rec.repaired] = summary.repaired.get(rec.repaired, 0) + 1
        summary.prompt_cut += pcut
        summary.response_cut += rcut
        plen.append(raw[0])
        rlen.extend(raw[1:])
        slen.append(len(p) + max(len(c), len(r)))
        pairs.append(EncodedPair(p, c, r, i))
    summary.kept = len(pairs)
    summary.prompt_lengths = _percentiles(plen)
    summary.response_lengths = _percentiles(rlen)
    summary.sequence_lengths = _percentiles(slen)
    summary.seconds = time.perf_counter() - t0
    if not pairs:
        raise DataError(f"{src.name}: no pair kept out of {len(rows)} records; dropped {summary.dropped} "
                        f"(e.g. {summary.dropped_examples})")
    if summary.dropped:
        log.warning("preference data: dropped %d of %d records: %s", sum(summary.dropped.values()),
                    len(rows), ", ".join(f"{k}={v}" for k, v in sorted(summary.dropped.items())))
    return pairs, summary


def split_holdout(pairs, fraction: float, seed: int = 0) -> tuple[list, list]:
    """Deterministic train/eval split of ``pairs`` for a held-out evaluation set.

    ``round(fraction * n)`` pairs (at least 1 when ``fraction > 0`` and n >= 2, at most n - 1)
    are drawn by a permutation seeded with ``seed``; both parts keep the input order.

    Returns:
        (train, eval) lists. ``fraction == 0`` gives (all pairs, []).

    Raises:
        ValueError: fraction outside [0, 1); fewer than 2 pairs with fraction > 0.
    """
    import numpy as np

    pairs = list(pairs)
    if not 0 <= fraction < 1:
        raise ValueError(f"holdout fraction must be in [0, 1), got {fraction}")
    if fraction == 0:
        return pairs, []
    n = len(pairs)
    if n < 2:
        raise ValueError(f"cannot hold out a fraction of {n} pair(s)")
    k = min(max(int(round(fraction * n)), 1), n - 1)
    held = set(np.random.default_rng([seed, 7919]).permutation(n)[:k].tolist())
    return [p for i, p in enumerate(pairs) if i not in held], [p for i, p in enumerate(pairs) if i in held]
