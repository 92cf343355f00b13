"""``tdpo-mlx export``: adapters -> PEFT adapter, or a fused Hugging Face, MLX or GGUF model."""

from __future__ import annotations

import argparse
import sys
import warnings

from .common import HelpFormatter, check_adapter_path, check_model, check_output_dir, written_summary


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "export",
        help="export an adapter to PEFT, or a fused model to Hugging Face / MLX / GGUF (torch-free)",
        description=(
            "Export an mlx-lm adapter as a PEFT adapter (--to peft), or fuse it in float32 into the "
            "dequantized base and save a transformers model (--to hf), an mlx-lm model (--to mlx, "
            "optionally re-quantized) or one llama.cpp GGUF file (--to gguf: gemma3/llama/qwen2 bases "
            "imported from GGUF). Every export gets a model card (README.md)."
        ),
        formatter_class=HelpFormatter,
        epilog="examples:\n"
        "  tdpo-mlx export --model gemma3-270m --adapter-path runs/tdpo2 --to peft --out peft-tdpo2\n"
        "  tdpo-mlx export --model gemma3-270m --adapter-path runs/tdpo2 --to hf --dtype bfloat16 --out hf-tdpo2\n"
        "  tdpo-mlx export --model gemma3-270m --adapter-path runs/tdpo2 --to mlx --quantize 4 --out mlx-tdpo2-4bit",
    )
    p.add_argument("--model", required=True, help="mlx-lm base model directory (or named source, e.g. gemma3-270m)")
    p.add_argument("--adapter-path", default=None, help="mlx-lm adapter directory (required for --to peft)")
    p.add_argument("--to", required=True, choices=["peft", "hf", "mlx", "gguf"], help="export format")
    p.add_argument(
        "--gguf-type",
        choices=["f32", "f16", "q8_0"],
        default="f16",
        help="weight type of a --to gguf export (norms and biases stay f32)",
    )
    p.add_argument("--out", required=True, help="output directory (written atomically)")
    p.add_argument(
        "--dtype",
        choices=["float32", "bfloat16", "float16"],
        default=None,
        help="dtype of the saved weights (default: the base's; PEFT: the adapter's)",
    )
    p.add_argument(
        "--quantize",
        type=int,
        choices=[4, 8],
        default=None,
        help="re-quantize a --to mlx export (without it the fused model is saved dequantized in --dtype)",
    )
    p.add_argument("--q-group-size", type=int, choices=[32, 64, 128], default=64, help="group size for --quantize")
    p.add_argument(
        "--base-model-name",
        default=None,
        help="Hugging Face id of the unquantized base (PEFT base_model_name_or_path, model card)",
    )
    p.add_argument("--max-shard-size", default="5GB", help="split weights into shards above this size")
    p.add_argument("--push-to-hub", default=None, metavar="REPO", help="upload the export to this Hub repo")
    p.add_argument("--private", action="store_true", help="create the Hub repo private")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    from ..export import export

    check_model(args.model)
    check_adapter_path(args.adapter_path)
    check_output_dir(args.out, "--out", overwrite_flag=None if args.overwrite else "--overwrite")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # collected in result.warnings and printed below
        result = export(
            args.model,
            args.adapter_path,
            to=args.to,
            out=args.out,
            dtype=args.dtype,
            quantize=args.quantize,
            group_size=args.q_group_size,
            base_model_name=args.base_model_name,
            max_shard_size=args.max_shard_size,
            push_to_hub=args.push_to_hub,
            private=args.private,
            overwrite=args.overwrite,
            gguf_type=args.gguf_type,
        )
    for w in result.warnings[:10]:
        print(f"warning: {w}", file=sys.stderr)
    if len(result.warnings) > 10:
        print(
            f"warning: ... and {len(result.warnings) - 10} more (all listed in {result.out}/README.md)", file=sys.stderr
        )
    held = f"GGUF {result.dtype}" if result.to == "gguf" else written_summary(result.out)
    print(f"wrote {result.to} export to {result.out} ({held})")
    print(f"  adapted modules: {len(result.adapted_modules)}; files: {', '.join(result.files)}")
    if result.hub_url:
        print(f"  uploaded to {result.hub_url}")
    return 0
