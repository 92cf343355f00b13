"""Preference data sources -> raw rows.

One job: read the rows of a source (local file, mlx-lm style directory, saved or hub dataset,
in-memory rows); :mod:`tdpo_mlx.data.records` turns each row into a record. Errors name the
file and line (or the dataset and record index) and the option that fixes them.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import NotFoundError, UserError, looks_like_path, near_misses

SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".parquet", ".csv")
SPLIT_ALIASES = {
    "train": ("train",),
    "valid": ("valid", "validation", "eval", "dev"),
    "test": ("test",),
}
for _a in ("validation", "eval", "dev"):
    SPLIT_ALIASES[_a] = SPLIT_ALIASES["valid"]


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
        return _read_dir(path, split)
    return _load_hub(str(data), split)


def _read_dir(path: Path, split: str) -> Rows:
    """The ``split`` of a folder: its split file (mlx-lm layout) or a ``datasets`` folder's split.

    Raises:
        NotFoundError: the folder has no such split (names what it holds).
    """
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
