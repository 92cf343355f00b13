"""Atomic writes: nothing the tool writes is ever left half-written under its final name.

Files are written to a temporary name in the same directory, flushed, and moved into place
with ``os.replace``; directories are assembled under a temporary sibling name and renamed
(:func:`atomic_directory`); a writer that wants a file name gets one from :func:`atomic_path`.
Used by the importer, the trainer's checkpoints, the exporters and the demo.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import mlx.core as mx

from .errors import AlreadyExistsError


def _mode(directory: bool = False) -> int:
    """Permission bits a plain ``open``/``mkdir`` would give (mkstemp/mkdtemp use 0600/0700)."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = ".tmp"):
    """Yield a fresh temporary file path next to ``path`` for a writer that takes a file name
    (``fig.savefig``, a GGUF assembler); move it onto ``path`` on success, remove it on any
    error (also KeyboardInterrupt). ``suffix`` ends the temporary name (some writers pick the
    format from it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, _mode())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (parents created)."""
    with atomic_path(Path(path)) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def write_text(path: str | Path, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    write_bytes(path, text.encode("utf-8"))


def _json_default(o):
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "item"):  # numpy / mlx scalars
        return o.item()
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def write_json(path: str | Path, obj) -> None:
    """Write ``obj`` as indented JSON atomically (Paths and array scalars converted)."""
    write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=_json_default) + "\n")


def write_jsonl(path: str | Path, rows) -> None:
    """Write an iterable of JSON-able rows as JSON Lines atomically."""
    write_text(path, "".join(json.dumps(r, ensure_ascii=False, default=_json_default) + "\n" for r in rows))


def copy_file(src: str | Path, dst: str | Path) -> None:
    """Copy ``src`` to ``dst`` atomically."""
    with atomic_path(Path(dst)) as tmp:
        shutil.copyfile(src, tmp)


def save_safetensors(path: str | Path, arrays: dict, metadata: dict | None = None) -> None:
    """``mx.save_safetensors`` to ``path`` atomically (any MLX dtype, bfloat16 included).

    Args:
        path: final file name; arrays: name -> ``mx.array``; metadata: string -> string header
            entries (``{"format": "pt"}`` for transformers/PEFT, ``{"format": "mlx"}`` for mlx-lm).
    """
    # mx appends ".safetensors" to names without it, so the temporary name must end with it
    with atomic_path(Path(path), suffix=".tmp.safetensors") as tmp:
        mx.save_safetensors(str(tmp), arrays, metadata=metadata or {})


@contextlib.contextmanager
def atomic_directory(out: str | Path, overwrite: bool = False):
    """Yield a temporary directory beside ``out``; on success it becomes ``out`` in one rename.

    Raises:
        FileExistsError: ``out`` exists and is not empty, and ``overwrite`` is False.
    On error the temporary directory is removed and ``out`` is left untouched; with
    ``overwrite`` the old ``out`` is removed only after the new one is in place.
    """
    out = Path(out).resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise AlreadyExistsError(f"{out} exists and is not empty: choose another --out or pass --overwrite")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    os.chmod(tmp, _mode(directory=True))
    try:
        yield tmp
        old = None
        if out.exists():
            old = out.parent / f".{out.name}.{os.getpid()}.old"
            os.replace(out, old)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
