"""Safetensors shards, shard sizes and tokenizer files of an export.

Every file goes through :mod:`tdpo_mlx.atomic`, so a crash never leaves a half-written file
under its final name.
"""

from __future__ import annotations

from pathlib import Path

from ..atomic import copy_file, save_safetensors, write_json
from ..errors import UserError

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


def parse_size(text: str | int) -> int:
    """``"5GB"``, ``"500MB"``, ``"2GiB"`` or a byte count -> bytes (GB = 10^9, GiB = 2^30)."""
    if isinstance(text, int):
        return text
    s = str(text).strip().upper().replace(" ", "")
    units = {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "KB": 10**3, "MB": 10**6, "GB": 10**9, "B": 1}
    try:
        for unit, mult in units.items():
            if s.endswith(unit):
                return int(float(s[: -len(unit)]) * mult)
        return int(s)
    except ValueError:
        raise UserError(f"--max-shard-size {text!r}: use a byte count or a number with KB/MB/GB/KiB/MiB/GiB") from None


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
        save_safetensors(out / "model.safetensors", shards[0] if shards else {}, metadata or {"format": "pt"})
        return ["model.safetensors"]
    n = len(shards)
    names, weight_map = [], {}
    for i, shard in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        save_safetensors(out / fname, shard, metadata or {"format": "pt"})
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
