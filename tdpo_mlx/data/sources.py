"""Preference data sources and formats -> plain records.

One job: read rows from a source (local file, mlx-lm style directory, saved or hub dataset,
in-memory rows) and turn each row into a :class:`PreferenceRecord` of one of three kinds,
without any tokenizer:

- ``"text"``: prompt, chosen and rejected strings (standard format; ``system`` prepended);
- ``"implicit"``: chosen and rejected whole texts sharing the dialogue (Anthropic HH); the
  prompt is found later, by :mod:`tdpo_mlx.data.encode` (it may need the tokenizer);
- ``"chat"``: prompt messages plus the chosen / rejected assistant messages (conversational).

Errors name the file and line (or the dataset and record index) and the option that fixes them.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets

from ..errors import NotFoundError, UserError, did_you_mean, looks_like_path, near_misses

FORMATS = ("auto", "standard", "implicit", "conversational")
_FORMAT_ALIASES = {
    "hh": "implicit",
    "chat": "conversational",
    "messages": "conversational",
    "prompt": "standard",
    "text": "standard",
}
SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".parquet", ".csv")
SPLIT_ALIASES = {
    "train": ("train",),
    "valid": ("valid", "validation", "eval", "dev"),
    "test": ("test",),
}
for _a in ("validation", "eval", "dev"):
    SPLIT_ALIASES[_a] = SPLIT_ALIASES["valid"]

_KEY_OPTION = {
    "prompt": "prompt_key (--prompt-key)",
    "chosen": "chosen_key (--chosen-key)",
    "rejected": "rejected_key (--rejected-key)",
    "system": "system_key (--system-key)",
}


class DataError(UserError):
    """Bad input data; the message names the file/line or record and the fix."""


@dataclass
class Rows:
    """Raw rows of one source.

    Attributes:
        name: the source as given (path, dataset id, ``"<rows>"``).
        rows: list of dicts, one per record.
        where: list of strings naming each row's place: ``"file.jsonl:12"`` (line) for line
            files, else the source name (the loader adds ``"(record i)"``).
    """

    name: str
    rows: list[dict]
    where: list[str]
    split_selected: bool = False


@dataclass
class PreferenceRecord:
    """One preference record before tokenization.

    Attributes:
        kind: ``"text"``, ``"implicit"`` or ``"chat"`` (see module docstring).
        prompt: str (text), None (implicit) or list of message dicts (chat, generation prompt
            is added at rendering).
        chosen / rejected: str (text: response only; implicit: whole text) or list of message
            dicts (chat: the reply messages only, normally one assistant message).
        index: 0-based record index in its source.
        where: human-readable location (file:line or dataset record).
        repaired: None, or the name of a repair made (``"prompt_in_responses"``: the prompt was
            repeated at the start of both responses and was removed from them).
    """

    kind: str
    prompt: Any
    chosen: Any
    rejected: Any
    index: int
    where: str
    repaired: str | None = None


# ----------------------------------------------------------------------------- reading sources


def _read_text(path: Path) -> str:
    """The UTF-8 text of a data file (``.gz`` decompressed).

    Raises:
        DataError: not gzip data, unreadable, or not UTF-8 (with the line and byte).
    """
    try:
        data = gzip.open(path, "rb").read() if path.name.endswith(".gz") else path.read_bytes()
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read the file ({e})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise DataError(
            f"{path}:{line}: not UTF-8 text (byte 0x{data[e.start]:02x} at column {col}); save the file as UTF-8"
        ) from None


def _json_loads(text: str):
    try:
        return json.loads(text)
    except RecursionError:
        raise json.JSONDecodeError("nested too deeply", text, 0) from None


def _read_jsonl(path: Path) -> Rows:
    rows, where = [], []
    for lineno, line in enumerate(_read_text(path).split("\n"), 1):
        if not line.strip():
            continue
        try:
            obj = _json_loads(line)
        except json.JSONDecodeError as e:
            raise DataError(
                f"{path}:{lineno}: malformed JSON line ({e.msg} at column {e.colno}); each line must be one JSON object"
            ) from None
        if not isinstance(obj, dict):
            raise DataError(f"{path}:{lineno}: expected a JSON object per line, got {type(obj).__name__}")
        rows.append(obj)
        where.append(f"{path}:{lineno}")
    return Rows(str(path), rows, where)


def _read_json(path: Path, split: str) -> Rows:
    text = _read_text(path)
    try:
        obj = _json_loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":  # JSON Lines saved as .json
            return _read_jsonl(path)
        raise DataError(f"{path}:{e.lineno}: malformed JSON ({e.msg} at column {e.colno})") from None
    selected = False
    if isinstance(obj, dict):
        for key in SPLIT_ALIASES.get(split, (split,)) + ("data", "rows", "examples"):
            if isinstance(obj.get(key), list):
                obj = obj[key]
                selected = key not in ("data", "rows", "examples")
                break
        else:
            raise DataError(
                f"{path}: expected a JSON list of records (or an object with a "
                f"{split!r} / 'data' list); top-level keys are {sorted(obj)}"
            )
    if not isinstance(obj, list):
        raise DataError(f"{path}: expected a JSON list of records, got {type(obj).__name__}")
    for i, r in enumerate(obj):
        if not isinstance(r, dict):
            raise DataError(f"{path}: record {i}: expected a JSON object, got {type(r).__name__}")
    return Rows(str(path), obj, [str(path)] * len(obj), selected)


def _read_parquet(path: Path) -> Rows:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{path}: not a readable Parquet file ({e})") from None
    return Rows(str(path), rows, [str(path)] * len(rows))


def _read_csv(path: Path) -> Rows:
    rows, where = [], []
    with io.StringIO(_read_text(path), newline="") as f:
        reader = csv.DictReader(f)
        try:
            for row in reader:
                if None in row:
                    raise DataError(
                        f"{path}:{reader.line_num}: more fields than the header's "
                        f"{len(reader.fieldnames or [])} columns"
                    )
                rows.append(dict(row))
                where.append(f"{path}:{reader.line_num}")
        except csv.Error as e:
            raise DataError(f"{path}:{reader.line_num}: malformed CSV ({e})") from None
    return Rows(str(path), rows, where)


def _read_file(path: Path, split: str) -> Rows:
    name = path.name.lower()
    if name.endswith((".jsonl", ".jsonl.gz")):
        return _read_jsonl(path)
    if name.endswith((".json", ".json.gz")):
        return _read_json(path, split)
    if name.endswith(".parquet"):
        return _read_parquet(path)
    if name.endswith(".csv"):
        return _read_csv(path)
    raise DataError(f"{path}: unknown file type; use one of {', '.join(SUFFIXES)}")


def _split_file(directory: Path, split: str) -> Path | None:
    names = SPLIT_ALIASES.get(split, (split,))
    for sub in (directory, directory / "data"):
        for n in names:
            for suf in SUFFIXES:
                p = sub / f"{n}{suf}"
                if p.is_file():
                    return p
    return None


def _from_dataset(ds, name: str) -> Rows:
    rows = ds.to_list() if hasattr(ds, "to_list") else [dict(r) for r in ds]
    return Rows(name, rows, [name] * len(rows))


def _load_hub(name: str, split: str) -> Rows:

    tried = []
    for s in dict.fromkeys((split,) + SPLIT_ALIASES.get(split, ())):
        try:
            ds = datasets.load_dataset(name, split=s)
        except ValueError as e:  # unknown split: try the aliases
            if "split" not in str(e).lower():
                raise
            tried.append(s)
            continue
        except OSError as e:  # not on the hub, no network (FileNotFoundError, ConnectionError, ...)
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise NotFoundError(
                f"data {name!r} is not a local file or folder, and the Hugging Face hub could not provide it "
                f"({type(e).__name__}: {first})" + near_misses(name)
            ) from None
        return _from_dataset(ds, f"{name}[{s}]")
    raise DataError(f"dataset {name!r} has no split {split!r} (tried {tried}); pass split=... (--split)")


def has_split(data, split: str) -> bool:
    """Whether a local directory (file per split, or a ``datasets`` folder) or a hub dataset id
    has ``split`` (aliases count). A single file or in-memory rows: False."""
    if not isinstance(data, (str, os.PathLike)):
        return False
    path = Path(data).expanduser()
    if path.is_dir():
        if _split_file(path, split) is not None:
            return True
        if (path / "dataset_dict.json").is_file():
            names = json.loads((path / "dataset_dict.json").read_text(encoding="utf-8")).get("splits", [])
            return any(s in names for s in SPLIT_ALIASES.get(split, (split,)))
        return False
    return False


def read_rows(data, split: str = "train") -> Rows:
    """Read the raw rows of a preference data source.

    Args:
        data: a path to a ``.jsonl``, ``.jsonl.gz``, ``.json``, ``.parquet`` or ``.csv`` file;
            a directory holding ``train`` / ``valid`` / ``test`` files of those types (mlx-lm's
            convention; also under ``data/``) or a ``datasets`` ``save_to_disk`` folder; a
            Hugging Face dataset id (loaded with ``datasets.load_dataset(id, split=split)``);
            a ``datasets.Dataset``; or a list of dicts.
        split: which split of a directory or dataset; ``"valid"`` also matches
            ``validation``/``eval``/``dev``. A single file (except a JSON object keyed by split)
            holds only ``"train"`` (or ``None``: whatever it holds); a list ignores it.

    Returns:
        :class:`Rows`.

    Raises:
        DataError: malformed file (names file and line); FileNotFoundError: a path that looks
        like a file but does not exist, or a directory without the split.
    """
    if isinstance(data, (list, tuple)):
        for i, r in enumerate(data):
            if not isinstance(r, dict):
                raise DataError(f"record {i}: expected a dict, got {type(r).__name__}")
        return Rows("<rows>", list(data), ["<rows>"] * len(data))
    if not isinstance(data, (str, os.PathLike)):
        if hasattr(data, "column_names"):
            return _from_dataset(data, "<dataset>")
        raise TypeError(f"data must be a path, a dataset id, a Dataset or a list of dicts, got {type(data).__name__}")
    check_data_path(data)
    path = Path(data).expanduser()
    if path.is_file():
        rows = _read_file(path, split)
        if split not in (None, "train") and not rows.split_selected:
            # never hand back the training records as another split
            raise NotFoundError(
                f"{path} is a single file and has no {split!r} split; put train/valid/test files "
                "in a directory, pass that split's file itself, or hold out pairs (split_holdout)"
            )
        return rows
    if path.is_dir():
        f = _split_file(path, split)
        if f is not None:
            return _read_file(f, split)

        if (path / "dataset_dict.json").is_file():
            dd = datasets.load_from_disk(str(path))
            for s in (split,) + SPLIT_ALIASES.get(split, ()):
                if s in dd:
                    return _from_dataset(dd[s], f"{path}[{s}]")
            raise NotFoundError(f"{path}: no split {split!r}; splits are {list(dd)}")
        if (path / "state.json").is_file():
            return _from_dataset(datasets.load_from_disk(str(path)), str(path))
        found = sorted(p.name for p in path.iterdir())[:20]
        raise NotFoundError(
            f"{path}: no {split!r} file (looked for {'/'.join(SPLIT_ALIASES.get(split, (split,)))} "
            f"with {', '.join(SUFFIXES)}); the folder holds {found}"
        )
    return _load_hub(str(data), split)


def check_data_path(data, option: str = "data") -> None:
    """A source that looks like a local path (``./x``, ``x.jsonl``, ``dir/x``...) must exist:
    it is never sent to the hub.

    Raises:
        NotFoundError: ``"<option>: data file not found: X (did you mean Y?)"``.
    """
    s = os.fspath(data)
    if not Path(s).expanduser().exists() and looks_like_path(s):
        kind = "file" if s.lower().endswith(SUFFIXES) else "path"
        hub = "" if looks_like_path(s) else " (a Hugging Face dataset id is 'owner/name')"
        raise NotFoundError(f"{option}: data {kind} not found: {s}{near_misses(s)}{hub}")


# ----------------------------------------------------------------------------- formats


def normalize_format(data_format: str) -> str:
    f = _FORMAT_ALIASES.get(data_format, data_format)
    if f not in FORMATS:
        raise UserError(
            f"--data-format: unknown format {data_format!r}; use one of {', '.join(FORMATS)}"
            + did_you_mean(data_format, FORMATS)
        )
    return f


def _is_messages(v) -> bool:
    return isinstance(v, dict) or (isinstance(v, list) and (not v or isinstance(v[0], dict)))


def detect_format(row: dict, *, prompt_key: str, chosen_key: str, rejected_key: str, where: str = "") -> str:
    """The format of a source from its first row: conversational if any field is a message
    list, standard if it has a prompt, implicit (HH) if it has exactly the HH shape.

    Raises:
        DataError: neither (see :func:`check_implicit_shape`).
    """
    vals = [row.get(k) for k in (prompt_key, chosen_key, rejected_key)]
    if any(_is_messages(v) for v in vals if v is not None):
        return "conversational"
    if prompt_key in row:
        return "standard"
    check_implicit_shape(row, where, prompt_key=prompt_key, chosen_key=chosen_key, rejected_key=rejected_key)
    return "implicit"


def check_implicit_shape(row: dict, where: str, *, prompt_key: str, chosen_key: str, rejected_key: str) -> None:
    """A record without a prompt is read as implicit (HH: two whole dialogues) only when its
    text fields are exactly the chosen and rejected ones; any other text key may be the prompt
    under another name, and guessing would drop it silently.

    Raises:
        DataError: naming the keys found and the options that map them.
    """
    missing = [k for k in (chosen_key, rejected_key) if k not in row]
    other = sorted(str(k) for k, v in row.items() if k not in (chosen_key, rejected_key) and isinstance(v, str))
    found = sorted(map(str, row))
    where = where or "record"
    if missing:
        raise DataError(
            f"{where}: record has no {missing[0]!r} key (and no {prompt_key!r}); keys found: {found}. "
            "Map yours with --prompt-key, --chosen-key and --rejected-key"
        )
    if other:
        raise DataError(
            f"{where}: record has no {prompt_key!r} key and is not the implicit (HH) shape of exactly "
            f"{chosen_key!r} and {rejected_key!r} texts: it also has {other}; keys found: {found}. "
            f"If {other[0]!r} holds the prompt pass --prompt-key {other[0]}; to split whole dialogues "
            "and ignore the other keys pass --data-format implicit"
        )


def _need(row: dict, key: str, role: str, where: str):
    if key not in row:
        raise DataError(
            f"{where}: record has no {key!r} key (the {role}); keys found: {sorted(row)}. "
            f"Map yours with {_KEY_OPTION[role]}"
        )
    return row[key]


def _need_str(row, key, role, where) -> str:
    v = _need(row, key, role, where)
    if not isinstance(v, str):
        raise DataError(
            f"{where}: {key!r} must be a string in this format, got {type(v).__name__}"
            + ("; message lists need data_format='conversational'" if _is_messages(v) else "")
        )
    return v


def _messages(v, default_role: str, key: str, where: str) -> list[dict]:
    if isinstance(v, str):
        return [{"role": default_role, "content": v}]
    if isinstance(v, dict):
        v = [v]
    if not isinstance(v, list):
        raise DataError(f"{where}: {key!r} must be a list of messages or a string, got {type(v).__name__}")
    out = []
    for j, m in enumerate(v):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            got = sorted(m) if isinstance(m, dict) else type(m).__name__
            raise DataError(f"{where}: {key!r} message {j} needs 'role' and 'content' keys, got {got}")
        out.append(dict(m))
    return out


def _same_messages(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(x["role"] == y["role"] and x["content"] == y["content"] for x, y in zip(a, b))


def _with_system(msgs: list[dict], system) -> list[dict]:
    if system and not (msgs and msgs[0]["role"] == "system"):
        return [{"role": "system", "content": system}] + msgs
    return msgs


class RecordRefused(Exception):
    """A record that cannot become a pair (counted and dropped, or raised in strict mode)."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def to_record(
    row: dict,
    index: int,
    where: str,
    fmt: str,
    *,
    prompt_key: str,
    chosen_key: str,
    rejected_key: str,
    system_key: str,
    system_separator: str = "\n\n",
    detected: bool = False,
) -> PreferenceRecord:
    """One raw row -> :class:`PreferenceRecord` in format ``fmt`` (not ``"auto"``).

    Raises:
        DataError: missing key or wrong value type (names the record and the mapping option).
        RecordRefused: a conversation whose chosen/rejected histories differ before the last reply.

    ``detected``: the format was detected, not given: an implicit record must have exactly
    the HH shape (:func:`check_implicit_shape`).
    """
    system = row.get(system_key)
    if system is not None and not isinstance(system, str):
        raise DataError(f"{where}: {system_key!r} must be a string, got {type(system).__name__}")
    if fmt == "standard":
        prompt = _need_str(row, prompt_key, "prompt", where)
        chosen = _need_str(row, chosen_key, "chosen", where)
        rejected = _need_str(row, rejected_key, "rejected", where)
        repaired = None
        if prompt.strip() and chosen.startswith(prompt) and rejected.startswith(prompt):
            # the prompt repeated inside both responses would be scored: keep it once
            chosen, rejected, repaired = chosen[len(prompt) :], rejected[len(prompt) :], "prompt_in_responses"
        if system:
            prompt = system + system_separator + prompt
        return PreferenceRecord("text", prompt, chosen, rejected, index, where, repaired)
    if fmt == "implicit":
        if detected:
            check_implicit_shape(row, where, prompt_key=prompt_key, chosen_key=chosen_key, rejected_key=rejected_key)
        chosen = _need_str(row, chosen_key, "chosen", where)
        rejected = _need_str(row, rejected_key, "rejected", where)
        return PreferenceRecord("implicit", None, chosen, rejected, index, where)
    if fmt != "conversational":
        raise ValueError(f"format {fmt!r}")
    repaired = None
    chosen = _messages(_need(row, chosen_key, "chosen", where), "assistant", chosen_key, where)
    rejected = _messages(_need(row, rejected_key, "rejected", where), "assistant", rejected_key, where)
    if prompt_key in row and row[prompt_key] is not None:
        prompt = _messages(row[prompt_key], "user", prompt_key, where)
        # Some datasets repeat the prompt turns at the start of chosen/rejected.
        if len(chosen) > len(prompt) and _same_messages(chosen[: len(prompt)], prompt):
            chosen, repaired = chosen[len(prompt) :], "prompt_in_responses"
        if len(rejected) > len(prompt) and _same_messages(rejected[: len(prompt)], prompt):
            rejected, repaired = rejected[len(prompt) :], "prompt_in_responses"
        for key, resp in ((chosen_key, chosen), (rejected_key, rejected)):
            bad = [m["role"] for m in resp if m["role"] in ("user", "system")]
            if bad:
                raise DataError(
                    f"{where}: {key!r} holds a {bad[0]!r} turn after the prompt; with a "
                    f"{prompt_key!r} key the responses must be the assistant reply only"
                )
    else:
        # Whole conversations: the prompt is everything before the final assistant message.
        for key, conv in ((chosen_key, chosen), (rejected_key, rejected)):
            if not conv or conv[-1]["role"] != "assistant":
                raise DataError(
                    f"{where}: {key!r} must end with an assistant message "
                    f"(got {conv[-1]['role'] if conv else 'an empty list'!r})"
                )
        prompt, chosen_hist = chosen[:-1], chosen[:-1]
        if not _same_messages(chosen_hist, rejected[:-1]):
            n = min(len(chosen_hist), len(rejected) - 1)
            k = next((j for j in range(n) if not _same_messages([chosen_hist[j]], [rejected[j]])), n)
            raise RecordRefused(
                "histories_differ",
                f"{where}: chosen and rejected conversations differ before the last reply "
                f"(first at message {k}); only the final assistant message may differ",
            )
        chosen, rejected = chosen[-1:], rejected[-1:]
    if not prompt and not system:
        raise DataError(
            f"{where}: conversation has no prompt messages (nothing before the reply); "
            f"give a {prompt_key!r} key or whole conversations"
        )
    return PreferenceRecord("chat", _with_system(prompt, system), chosen, rejected, index, where, repaired)
