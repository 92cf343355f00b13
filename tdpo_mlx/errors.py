"""One error type for the user's mistakes, and the checks that raise it.

:class:`UserError` (a ``ValueError``) means "the input is wrong, here is the one line that says
which and how to fix it". Everything the project detects about what a user gave (data files,
config files and options, model and adapter paths, GGUF files, exports, reward specs, prompt
files) is raised as a ``UserError`` or a subclass; ``tdpo-mlx`` prints it as
``tdpo-mlx <command>: error: <message>`` and exits 2, without a traceback (``--debug`` or
``TDPO_MLX_DEBUG=1`` shows it). Any other exception is a bug and keeps its traceback.

This module imports nothing heavy, so the CLI and :mod:`tdpo_mlx.config` can use it freely.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path


class UserError(ValueError):
    """A mistake in the user's input; the message names the file/line/record/key/option and the fix."""


class NotFoundError(UserError, FileNotFoundError):
    """A path the user gave does not exist (also a ``FileNotFoundError``)."""


class AlreadyExistsError(UserError, FileExistsError):
    """An output the user named already exists and would be overwritten (also a ``FileExistsError``)."""


def did_you_mean(word: str, choices, n: int = 3, cutoff: float = 0.6) -> str:
    """``" (did you mean a, b?)"`` for the choices close to ``word`` (difflib), else ``""``."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=n, cutoff=cutoff)
    return f" (did you mean {', '.join(close)}?)" if close else ""


def one_line(message: str) -> str:
    """``message`` on one line: inner newlines become ``"; "``, runs of spaces collapse."""
    parts = [" ".join(p.split()) for p in str(message).splitlines()]
    return "; ".join(p for p in parts if p)


#: Suffixes that make a name a file, never a hub id.
FILE_SUFFIXES = (
    ".jsonl",
    ".json",
    ".gz",
    ".parquet",
    ".csv",
    ".yaml",
    ".yml",
    ".gguf",
    ".txt",
    ".jinja",
    ".safetensors",
)


def looks_like_path(value: str) -> bool:
    """Whether ``value`` is meant as a local path rather than a hub id (``owner/name``) or a
    name: it starts with ``.``, ``/`` or ``~``, has a backslash or more than one ``/``, ends with
    a file suffix (``.jsonl``...; without a ``/`` any ``.abc`` suffix), or its first component
    exists here."""
    s = str(value)
    if s.startswith((".", "/", "~")) or "\\" in s or s.count("/") > 1:
        return True
    suffix = Path(s).suffix.lower()
    if suffix in FILE_SUFFIXES:
        return True
    if "/" not in s:
        return suffix[1:].isalnum() and not suffix[1:].isdigit() and len(suffix) <= 9
    return Path(s.split("/", 1)[0]).exists()


def near_misses(path: str | os.PathLike) -> str:
    """``" (did you mean X?)"`` naming files in the same folder whose names are close to ``path``'s."""
    p = Path(path).expanduser()
    parent = p.parent if str(p.parent) else Path(".")
    try:
        names = [c.name for c in parent.iterdir()]
    except OSError:
        return ""
    hint = did_you_mean(p.name, names, n=2, cutoff=0.75)
    if not hint:
        return ""
    close = hint[len(" (did you mean ") : -2].split(", ")
    shown = [str(parent / c) if str(p.parent) not in ("", ".") else c for c in close]
    return f" (did you mean {', '.join(shown)}?)"


def require_path(value, what: str, option: str | None = None, *, kind: str = "any") -> Path:
    """``Path(value)`` if it exists (as a ``kind``: ``"file"``, ``"dir"`` or ``"any"``).

    Raises:
        NotFoundError: ``"<option>: <what> not found: <value> (did you mean ...?)"``.
        UserError: it exists but is a file where a folder is needed (or the reverse).
    """
    p = Path(os.fspath(value)).expanduser()
    lead = f"{option}: " if option else ""
    if not p.exists():
        raise NotFoundError(f"{lead}{what} not found: {value}{near_misses(p)}")
    if kind == "file" and not p.is_file():
        raise UserError(f"{lead}{what} must be a file, got the folder {value}")
    if kind == "dir" and not p.is_dir():
        raise UserError(f"{lead}{what} must be a folder, got the file {value}")
    return p


def read_text(path, what: str, option: str | None = None) -> str:
    """The UTF-8 text of a file the user named.

    Raises:
        NotFoundError: missing file; UserError: a folder, unreadable, or not UTF-8 (with the line).
    """
    p = require_path(path, what, option, kind="file")
    lead = f"{option}: " if option else ""
    try:
        data = p.read_bytes()
    except OSError as e:
        raise UserError(f"{lead}cannot read {what} {path}: {e.strerror or e}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise UserError(
            f"{lead}{path}:{line}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}); "
            f"save the {what} as UTF-8"
        ) from None
