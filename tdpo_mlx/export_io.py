"""Atomic file and directory writes for exports, safetensors shards, tokenizer files.

Every export is assembled in a temporary sibling directory and moved into place with one
``os.replace`` (:func:`atomic_directory`); each file inside is itself written to a temporary
name and renamed, so a crash never leaves a half-written file under its final name.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

# Tokenizer and chat-template files copied next to exported weights when present.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
    "chat_template.jinja",
    "chat_template.json",
)


def _mode(directory: bool = False) -> int:
    """Permission bits a plain ``open``/``mkdir`` would give (mkstemp/mkdtemp use 0600/0700)."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


def write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same directory + os.replace)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _mode())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, ensure_ascii=False) + "\n")


def copy_file(src: str | Path, dst: str | Path) -> None:
    """Copy ``src`` to ``dst`` atomically."""
    dst = Path(dst)
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".tmp")
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        os.chmod(tmp, _mode())
        os.replace(tmp, dst)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def save_safetensors(path: str | Path, arrays: dict, metadata: dict | None = None) -> None:
    """Save MLX arrays to a safetensors file atomically (any MLX dtype, bfloat16 included).

    ``metadata`` defaults to ``{"format": "pt"}``, the value transformers and PEFT expect.
    """
    import mlx.core as mx

    path = Path(path)
    tmp = path.parent / f".{path.stem}.{os.getpid()}.tmp.safetensors"
    try:
        mx.save_safetensors(str(tmp), arrays, metadata=metadata or {"format": "pt"})
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def parse_size(text: str | int) -> int:
    """``"5GB"``, ``"500MB"``, ``"2GiB"`` or a byte count -> bytes (GB = 10^9, GiB = 2^30)."""
    if isinstance(text, int):
        return text
    s = str(text).strip().upper().replace(" ", "")
    units = {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "KB": 10**3, "MB": 10**6, "GB": 10**9, "B": 1}
    for unit, mult in units.items():
        if s.endswith(unit):
            return int(float(s[: -len(unit)]) * mult)
    try:
        return int(s)
    except ValueError:
        raise ValueError(f"size {text!r}: use a byte count or a number with KB/MB/GB/KiB/MiB/GiB") from None


def save_sharded(out: Path, weights: dict, max_shard_bytes: int, metadata: dict | None = None) -> list[str]:
    """Write ``weights`` (name -> MLX array) as ``model.safetensors`` or, above ``max_shard_bytes``,
    as ``model-0000i-of-0000n.safetensors`` shards plus ``model.safetensors.index.json``.

    Tensors keep their order; a tensor larger than the limit gets a shard of its own.
    Returns the file names written.
    """
    shards: list[dict] = []
    size = 0
    for name, arr in weights.items():
        if not shards or size + arr.nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = arr
        size += arr.nbytes
    if len(shards) <= 1:
        save_safetensors(out / "model.safetensors", shards[0] if shards else {}, metadata)
        return ["model.safetensors"]
    n = len(shards)
    names, weight_map = [], {}
    for i, shard in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        save_safetensors(out / fname, shard, metadata)
        names.append(fname)
        weight_map.update({k: fname for k in shard})
    total = sum(a.nbytes for a in weights.values())
    write_json(out / "model.safetensors.index.json", {"metadata": {"total_size": total}, "weight_map": weight_map})
    return names + ["model.safetensors.index.json"]


def copy_tokenizer_files(src: Path, dst: Path) -> list[str]:
    """Copy the tokenizer/chat-template files that exist in ``src`` into ``dst``."""
    copied = []
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            copy_file(src / name, dst / name)
            copied.append(name)
    return copied


@contextlib.contextmanager
def atomic_directory(out: str | Path, overwrite: bool = False):
    """Yield a temporary directory beside ``out``; on success it becomes ``out`` in one rename.

    Raises:
        FileExistsError: ``out`` exists and is not empty, and ``overwrite`` is False.
    On error the temporary directory is removed and ``out`` is left untouched.
    """
    out = Path(out).resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty: choose another --out or pass --overwrite")
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
