"""Load preference data: a source (file, directory, hub id) -> encoded pairs with exact boundaries.

Sources live in :mod:`tdpo_mlx.data.sources`, formats in :mod:`tdpo_mlx.data.records`, the token rules in
:mod:`tdpo_mlx.data.encode` (tokenizer wrapper :mod:`tdpo_mlx.data.rules`), truncation in
:mod:`tdpo_mlx.data.truncate`, the summary in :mod:`tdpo_mlx.data.summary`; padded batches in
:mod:`tdpo_mlx.data.batches`.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from ..errors import UserError
from .batches import EncodedPair
from .encode import HH_MARKER, encode_chat_record, encode_text_record
from .records import RecordRefused, detect_format, normalize_format, to_record
from .rules import TokenRules
from .sources import DataError, has_split, read_rows
from .summary import DataSummary, percentiles
from .truncate import truncate_pair

log = logging.getLogger(__name__)


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
            :func:`tdpo_mlx.data.sources.read_rows`).
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
    limits = dict(max_length=max_length, max_prompt_length=max_prompt_length, truncation_mode=truncation_mode)
    truncate_pair([1], [1], [1], **limits)  # validates the limits up front
    rules = TokenRules(tokenizer, chat_template=chat_template, add_bos=add_bos)
    keys = dict(prompt_key=prompt_key, chosen_key=chosen_key, rejected_key=rejected_key)
    src = read_rows(data, split)
    rows = src.rows[:limit] if limit is not None else src.rows
    detected = fmt == "auto"
    fmt = _source_format(src, rows, fmt, rules, keys)
    summary = DataSummary(source=src.name, split=split, data_format=fmt, records=len(rows), **limits)
    pairs, raw_lengths = [], []
    for i, row in enumerate(rows):
        where = f"{src.where[i]} (record {i})"
        try:
            rec = to_record(row, i, where, fmt, system_key=system_key, detected=detected, **keys)
            pair, raw, prompt_cut, response_cut = _encode(rules, rec, implicit_marker, limits)
        except RecordRefused as e:
            if strict:
                raise DataError(str(e)) from None
            summary.drop(e.reason, where, i)
            continue
        if rec.repaired:
            summary.repaired[rec.repaired] = summary.repaired.get(rec.repaired, 0) + 1
        summary.prompt_cut += prompt_cut
        summary.response_cut += response_cut
        pairs.append(pair)
        raw_lengths.append(raw)
    _close(summary, pairs, raw_lengths, t0)
    return pairs, summary


def _source_format(src, rows: list[dict], fmt: str, rules: TokenRules, keys: dict) -> str:
    """The format of the rows (detected from the first one for ``"auto"``).

    Raises:
        DataError: no rows; neither format fits; conversational rows and no chat template.
    """
    if not rows:
        raise DataError(f"{src.name}: no records")
    if fmt == "auto":
        fmt = detect_format(rows[0], where=f"{src.where[0]} (record 0)", **keys)
    if fmt == "conversational" and not rules.has_template:
        raise DataError(
            f"{src.name}: conversational data needs a chat template and the tokenizer has "
            "none; pass --chat-template FILE.jinja (chat_template= in Python)"
        )
    return fmt


def _encode(rules: TokenRules, rec, implicit_marker: str | None, limits: dict):
    """(pair, lengths before truncation, prompt cut, response cut) of one record.

    Raises:
        RecordRefused: the encoding refuses it, or truncation leaves a response empty or both equal.
    """
    if rec.kind == "chat":
        p, c, r, _ = encode_chat_record(rules, rec)
    else:
        p, c, r, _ = encode_text_record(rules, rec, implicit_marker)
    raw = (len(p), len(c), len(r))
    keep_first = 1 if rules.add_bos or p[:1] == [rules.bos_id] else 0
    p, c, r, prompt_cut, response_cut = truncate_pair(p, c, r, keep_first=keep_first, **limits)
    if not c or not r:
        raise RecordRefused("too_long", f"{rec.where}: a response would be truncated away")
    if c == r:
        raise RecordRefused("identical_after_truncation", f"{rec.where}: chosen == rejected after truncation")
    return EncodedPair(p, c, r, rec.index), raw, prompt_cut, response_cut


def _close(summary: DataSummary, pairs: list[EncodedPair], raw_lengths: list[tuple], t0: float) -> None:
    """Fill the summary's kept count, length percentiles and time; warn about drops.

    Raises:
        DataError: no pair was kept.
    """
    summary.kept = len(pairs)
    summary.prompt_lengths = percentiles([raw[0] for raw in raw_lengths])
    summary.response_lengths = percentiles([n for raw in raw_lengths for n in raw[1:]])
    summary.sequence_lengths = percentiles([pair.max_length for pair in pairs])
    summary.seconds = time.perf_counter() - t0
    if not pairs:
        raise DataError(
            f"{summary.source}: no pair kept out of {summary.records} records; dropped {summary.dropped} "
            f"(e.g. {summary.dropped_examples})"
        )
    if summary.dropped:
        log.warning(
            "preference data: dropped %d of %d records: %s",
            sum(summary.dropped.values()),
            summary.records,
            ", ".join(f"{k}={v}" for k, v in sorted(summary.dropped.items())),
        )


def split_holdout(pairs, fraction: float, seed: int = 0) -> tuple[list, list]:
    """Deterministic train/eval split of ``pairs`` for a held-out evaluation set.

    ``round(fraction * n)`` pairs (at least 1 when ``fraction > 0`` and n >= 2, at most n - 1)
    are drawn by a permutation seeded with ``seed``; both parts keep the input order.

    Returns:
        (train, eval) lists. ``fraction == 0`` gives (all pairs, []).

    Raises:
        ValueError: fraction outside [0, 1); fewer than 2 pairs with fraction > 0.
    """

    pairs = list(pairs)
    if not 0 <= fraction < 1:
        raise UserError(f"--eval-fraction must be in [0, 1), got {fraction}")
    if fraction == 0:
        return pairs, []
    n = len(pairs)
    if n < 2:
        raise UserError(
            f"cannot hold out a fraction of {n} pair(s) for evaluation; pass --eval-fraction 0 or --eval-data"
        )
    k = min(max(int(round(fraction * n)), 1), n - 1)
    held = set(np.random.default_rng([seed, 7919]).permutation(n)[:k].tolist())
    return [p for i, p in enumerate(pairs) if i not in held], [p for i, p in enumerate(pairs) if i in held]


EVAL_SPLITS = ("valid", "test")  # mlx-lm's order


def data_options(config) -> dict:
    """The :func:`load_preference_data` keywords held by a :class:`tdpo_mlx.config.TrainConfig`
    (or by the parsed options of ``tdpo-mlx data inspect``, which have the same names)."""
    names = (
        "max_length",
        "max_prompt_length",
        "truncation_mode",
        "data_format",
        "prompt_key",
        "chosen_key",
        "rejected_key",
        "system_key",
        "chat_template",
    )
    return {k: getattr(config, k) for k in names}


def load_train_eval(config, tokenizer, log=print) -> tuple[list[EncodedPair], list[EncodedPair]]:
    """Training and evaluation pairs of a training run, with its data options.

    - ``--data FILE`` (or hub id) and no ``--eval-data``: ``--eval-fraction`` of it is held out.
    - ``--data DIR`` with a ``valid`` (else ``test``) split beside ``train``: that split is the
      evaluation set, as in mlx-lm; without one, a fraction of train is held out.
    - ``--eval-data``: a file is evaluated whole; a directory or dataset on its ``valid``
      (else ``test``) split, never its ``train`` split.
    ``--max-eval-pairs`` keeps the first pairs of the evaluation set.

    Raises:
        UserError: no ``--data``; ``--eval-data`` folder with neither split; any data error.
    """
    if not config.data:
        raise UserError("--data is required: a preference data file, directory or hub dataset")
    kw = dict(tokenizer=tokenizer, **data_options(config))
    pairs, summary = load_preference_data(config.data, split=config.split, **kw)
    log(f"train data {config.data}: " + summary.format())
    train_pairs, eval_pairs = pairs, []
    if config.eval_data:
        eval_pairs = _load_eval(config.eval_data, "--eval-data", kw, log)
    else:
        held = next((s for s in EVAL_SPLITS if s != config.split and has_split(config.data, s)), None)
        if held is not None:
            eval_pairs = _load_eval(config.data, "--data", kw, log, split=held)
        else:
            train_pairs, eval_pairs = split_holdout(pairs, config.eval_fraction, config.seed)
            if eval_pairs:
                log(
                    f"held out {len(eval_pairs)} of {len(pairs)} pairs for evaluation "
                    f"(--eval-fraction {config.eval_fraction})"
                )
    if config.max_eval_pairs and len(eval_pairs) > config.max_eval_pairs:
        eval_pairs = eval_pairs[: config.max_eval_pairs]
        log(f"evaluating on the first {config.max_eval_pairs} held-out pairs (--max-eval-pairs)")
    return train_pairs, eval_pairs


def _load_eval(source, option: str, kw: dict, log, split: str | None = None) -> list[EncodedPair]:
    if split is None:
        path = Path(str(source)).expanduser()
        if path.is_file():
            split = "train"  # a single file: all of it
        elif not path.exists():  # a hub dataset: its valid split, else its test split
            try:
                return _load_eval(source, option, kw, log, split="valid")
            except DataError as e:
                if "has no split" not in str(e):
                    raise
                return _load_eval(source, option, kw, log, split="test")
        else:
            split = next((s for s in EVAL_SPLITS if has_split(source, s)), None)
            if split is None:
                raise UserError(
                    f"{option} {source}: has no valid or test split to evaluate on "
                    "(give a file, or a folder with valid.jsonl / test.jsonl)"
                )
    pairs, summary = load_preference_data(source, split=split, **kw)
    log(f"eval data {source} [{split}]: " + summary.format())
    return pairs
