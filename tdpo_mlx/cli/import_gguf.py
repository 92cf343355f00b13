"""``tdpo-mlx import-gguf SOURCE --out DIR``: a llama.cpp GGUF file -> an mlx-lm model directory."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from .common import HelpFormatter, check_output_dir, written_summary


def add_parser(subparsers) -> argparse.ArgumentParser:
    from ..gguf import NAMED_SOURCES, SUPPORTED_ARCHITECTURES

    p = subparsers.add_parser(
        "import-gguf",
        help="import a GGUF model (llama.cpp/Ollama/LM Studio) into an mlx-lm directory, without torch",
        description=(
            "Dequantize a GGUF model and write an mlx-lm model directory (config.json, model.safetensors, "
            f"tokenizer files). Architectures: {', '.join(SUPPORTED_ARCHITECTURES)}. "
            f"Named sources: {', '.join(f'{k} ({v.description})' for k, v in NAMED_SOURCES.items())}."
        ),
        formatter_class=HelpFormatter,
    )
    p.add_argument("source", metavar="SOURCE", help="path to a .gguf file, or a named source such as gemma3-270m")
    p.add_argument("--out", required=True, type=Path, help="output directory (must not exist or be empty)")
    p.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "bfloat16", "float16"],
        help="dtype of the stored weights (float32 is fastest on CPU; bfloat16 halves the size)",
    )
    p.add_argument(
        "--quantize",
        choices=["4", "8", "gguf"],
        default=None,
        help="quantize linear/embedding weights to 4 or 8 bits with mlx-lm (affine, per group); 'gguf' keeps "
        "the file's own Q4_0/Q4_1/Q8_0 blocks as MLX quantized layers (group 32, no dequantize; other "
        "quantized types are re-quantized by MLX, with a warning naming them): a QLoRA base as is",
    )
    p.add_argument(
        "--group-size", type=int, choices=[32, 64, 128], default=64, help="quantization group size (with --quantize)"
    )
    p.add_argument("--force", action="store_true", help="replace --out if it already exists")
    p.epilog = "examples:\n  tdpo-mlx import-gguf gemma3-270m --out models/gemma3-270m\n  tdpo-mlx import-gguf model.Q4_K_M.gguf --out models/m --dtype bfloat16"
    p.set_defaults(func=run)
    return p


def _dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def run(args: argparse.Namespace) -> int:
    from ..gguf import import_gguf

    check_output_dir(args.out, "--out", overwrite_flag=None if args.force else "--force")
    t0 = time.perf_counter()
    out = import_gguf(
        args.source,
        args.out,
        dtype=args.dtype,
        quantize=int(args.quantize) if args.quantize in ("4", "8") else args.quantize,
        group_size=args.group_size,
        overwrite=args.force,
    )
    secs = time.perf_counter() - t0
    size = _dir_size(out)
    print(f"imported {args.source} -> {out} in {secs:.1f} s ({written_summary(out)}; {size / 2**20:.1f} MiB)")
    print(f"load it with: mlx_lm.load({str(out)!r}) or --model {out}")
    return 0
