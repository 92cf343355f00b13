"""``tdpo-mlx`` command line: a thin layer over importable functions.

Each subcommand lives in its own module ``tdpo_mlx.cli.<name>`` with two functions:
``add_parser(subparsers)`` (declares the options, with defaults shown by ``--help``) and
``run(args) -> int``. Modules are imported only for the subcommand that runs.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand name -> module under tdpo_mlx.cli
COMMANDS = {
    "train": "train",
    "data": "data",
    "import-gguf": "import_gguf",
    "export": "export",
    "generate": "generate",
    "eval": "evaluate",
    "demo": "demo",
    "doctor": "doctor",
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The full parser; with ``only`` just that subcommand's module is imported."""
    parser = argparse.ArgumentParser(
        prog="tdpo-mlx",
        description="Token-level DPO (TDPO) preference tuning for MLX models.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in COMMANDS.items():
        if only is not None and name != only:
            sub.add_parser(name, add_help=False)
            continue
        try:
            mod = importlib.import_module(f"tdpo_mlx.cli.{module}")
        except ModuleNotFoundError as e:
            if e.name != f"tdpo_mlx.cli.{module}":
                raise
            continue
        mod.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    first = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(only=first if first in COMMANDS else None)
    args = parser.parse_args(argv)
    if not getattr(args, "command", None) or not hasattr(args, "func"):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
