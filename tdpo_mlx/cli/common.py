"""Help formatting and argument checks shared by the ``tdpo-mlx`` subcommands."""

from __future__ import annotations

import argparse
import json
import struct
from pathlib import Path

from ..errors import (
    AlreadyExistsError,
    NotFoundError,
    UserError,
    did_you_mean,
    looks_like_path,
    near_misses,
    read_text,
    require_path,
)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Examples in descriptions/epilogs keep their lines; each option's default is shown once:
    appended as ``(default: X)`` unless the help already says it or there is none to show."""

    def _get_help_string(self, action):
        text = action.help or ""
        d = action.default
        if "default" in text.lower() or d in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return text
        shown = " ".join(map(str, d)) if isinstance(d, (list, tuple)) else d
        return f"{text} (default: {shown})"


def check_model(value: str, option: str = "--model") -> str:
    """``value`` if it can name a model: an existing local folder, a named source, or a hub id
    (``owner/name``) that is not a local path.

    Raises:
        NotFoundError: a path-like value that does not exist, or a folder without config.json
            (with a "did you mean" for near misses among local files and named sources).
    """
    from ..gguf import NAMED_SOURCES

    s = str(value)
    if s in NAMED_SOURCES:
        return s
    local = Path(s).expanduser().exists() or looks_like_path(s)
    p = require_path(s, "model", option, kind="any") if local else None
    if p is None and "/" not in s:
        hint = did_you_mean(s, NAMED_SOURCES) or near_misses(s)
        raise NotFoundError(
            f"{option}: model {s!r} is not a local folder, a named source ({', '.join(NAMED_SOURCES)}) "
            f"or a Hugging Face id (owner/name){hint}"
        )
    if p is not None:
        if p.is_dir() and not (p / "config.json").is_file() and not (p / "tokenizer_config.json").is_file():
            raise NotFoundError(f"{option}: {s} is not a model folder (no config.json in it)")
        if p.is_file():
            raise UserError(
                f"{option}: {s} is a file; pass the model folder (import a .gguf with tdpo-mlx import-gguf)"
            )
    return s


def check_adapter_path(value: str | None, option: str = "--adapter-path") -> str | None:
    """``value`` if it is None or a folder with adapters.safetensors and adapter_config.json.

    Raises:
        NotFoundError: missing folder (with near misses) or missing adapter files.
    """
    if value is None:
        return None
    p = require_path(value, "adapter folder", option, kind="dir")
    for name in ("adapter_config.json", "adapters.safetensors"):
        if not (p / name).is_file():
            raise NotFoundError(
                f"{option}: {p} has no {name}; pass the output folder of a finished tdpo-mlx train run "
                "(adapters.safetensors + adapter_config.json)"
            )
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {v}")
    return v


def non_negative_float(text: str) -> float:
    """argparse type: a finite number >= 0."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not v >= 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text}")
    return v


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    v = non_negative_float(text)
    if v == 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text}")
    return v


def probability(text: str) -> float:
    """argparse type: a number in (0, 1]."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}") from None
    if not 0 < v <= 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text}")
    return v


def check_output_dir(value, option: str = "--out", overwrite_flag: str | None = "--overwrite") -> None:
    """An output folder may be new or empty (or, with its overwrite flag given, anything but a file).

    Raises:
        UserError: it is a file; AlreadyExistsError: not empty and ``overwrite_flag`` was not given
            (pass ``overwrite_flag=None`` when it was).
    """
    p = Path(value).expanduser()
    if p.exists() and not p.is_dir():
        raise UserError(f"{option} {value} is a file; give a folder")
    if overwrite_flag and p.is_dir() and any(p.iterdir()):
        raise AlreadyExistsError(
            f"{option} {value} exists and is not empty; choose another {option} or pass {overwrite_flag}"
        )


def check_prompts_file(value, option: str) -> None:
    """A prompts file exists, is UTF-8 text and holds at least one prompt line.

    Raises:
        NotFoundError, UserError: naming the option and the file (and line, for bad bytes).
    """
    if not read_text(value, "prompt file", option).strip():
        raise UserError(f"{option} {value}: the file is empty; give one prompt per line (or JSON lines with 'prompt')")


_SAFETENSORS_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64"}


def written_summary(out) -> str:
    """What the export holds, read back from its files: the float dtype(s) of the saved
    tensors (safetensors headers) and, for a quantized MLX export, its bits and group size."""
    dtypes = set()
    for f in sorted(Path(out).glob("*.safetensors")):
        with open(f, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        dtypes |= {v["dtype"] for k, v in header.items() if k != "__metadata__"}
    floats = sorted(_SAFETENSORS_DTYPES.get(d, d) for d in dtypes if d in _SAFETENSORS_DTYPES)
    text = "weights " + "/".join(floats) if floats else "no float weights"
    cfg = Path(out) / "config.json"
    q = json.loads(cfg.read_text()).get("quantization") if cfg.is_file() else None
    if q:
        text += f"; {q.get('bits')}-bit quantized, group size {q.get('group_size')}"
    return text
