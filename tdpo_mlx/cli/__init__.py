"""``tdpo-mlx`` command line: a thin layer over importable functions.

Each subcommand lives in its own module ``tdpo_mlx.cli.<name>`` with two functions:
``add_parser(subparsers)`` (declares the options, with defaults shown by ``--help``) and
``run(args) -> int``. Modules are imported only for the subcommand that runs, and ``run`` imports
the library it drives (mlx, transformers, datasets) itself, so that parsing stays quick.

Errors: a :class:`tdpo_mlx.errors.UserError` (bad data, option, path, config key...) and every
command-line parsing error print as one line ``tdpo-mlx <command>: error: <message>`` on stderr
and exit with status 2; ``--debug`` (anywhere on the line) or ``TDPO_MLX_DEBUG=1`` also prints
the traceback. Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from .. import __version__
from ..errors import UserError, did_you_mean, one_line

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

EXAMPLES = """examples:
  tdpo-mlx train --model gemma3-270m --data pairs.jsonl --iters 200 --adapter-path runs/a
  tdpo-mlx data inspect --model gemma3-270m --data pairs.jsonl
  tdpo-mlx generate --model gemma3-270m --adapter-path runs/a --prompt "Hello"
  tdpo-mlx export --model gemma3-270m --adapter-path runs/a --to peft --out peft-a
  tdpo-mlx <command> --help

add --debug to any command to see the traceback of an error
"""


class Parser(argparse.ArgumentParser):
    """``ArgumentParser`` whose errors are one line with a "did you mean" for near misses."""

    def error(self, message: str):
        if message.startswith("unrecognized arguments:"):
            words = message.split(":", 1)[1].split()
            opts = [s for a in self._actions for s in a.option_strings if s.startswith("--")]
            hints = [w + (did_you_mean(w.split("=", 1)[0], opts) if w.startswith("--") else "") for w in words]
            message = "unrecognized arguments: " + " ".join(hints)
        elif "invalid choice:" in message and "(choose from" in message:
            bad = message.split("invalid choice:", 1)[1].split("(choose from", 1)[0].strip().strip("'")
            choices = message.split("(choose from", 1)[1].rstrip(")").replace("'", "").split(", ")
            message += did_you_mean(bad, [c.strip() for c in choices])
        raise SystemExit(_fail(self.prog, message))


def _fail(prog: str, message: str, exc: BaseException | None = None) -> int:
    """Print ``prog: error: message`` on one line (after ``exc``'s traceback when given); returns 2."""
    if exc is not None:
        traceback.print_exception(exc)
    print(f"{prog}: error: {one_line(message)}", file=sys.stderr)
    return 2


def _debug() -> bool:
    return os.environ.get("TDPO_MLX_DEBUG", "").strip().lower() in ("1", "true", "yes", "on")


def _version() -> str:
    try:
        return version("tdpo-mlx")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return __version__


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The full parser; with ``only`` just that subcommand's module is imported."""
    parser = Parser(
        prog="tdpo-mlx",
        description="Token-level DPO (TDPO) preference tuning for MLX models.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"tdpo-mlx {_version()}")
    parser.add_argument("--debug", action="store_true", help="print the traceback of an error (or TDPO_MLX_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for name, module in COMMANDS.items():
        if only is not None and name != only:
            sub.add_parser(name, add_help=False)
            continue
        importlib.import_module(f"tdpo_mlx.cli.{module}").add_parser(sub)
    return parser


def _subparser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The innermost parser that ``args`` went through (for its options and its name in errors)."""
    for name in ("command", "data_command"):
        acts = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        chosen = getattr(args, name, None)
        if not acts or chosen not in acts[0].choices:
            break
        parser = acts[0].choices[chosen]
    return parser


_HUB_MODULES = ("huggingface_hub", "requests", "httpx", "urllib3", "datasets")


def _from_hub(e: BaseException) -> bool:
    """Whether ``e`` is the hub (or the network under it) failing to provide a model or dataset."""
    return type(e).__module__.split(".")[0] in _HUB_MODULES


def _hub_message(args: argparse.Namespace, e: BaseException) -> str:
    """One line naming the hub ids the command was given and the hub's own first line."""
    names = [
        f"--{k.replace('_', '-')} {v}"
        for k, v in sorted(vars(args).items())
        if k in ("model", "ref_model", "data", "eval_data") and isinstance(v, str) and not Path(v).exists()
    ]
    first = next((x.strip() for x in str(e).splitlines() if x.strip()), "")
    asked = f" for {', '.join(names)}" if names else ""
    return (
        f"the Hugging Face hub could not provide what was asked{asked} ({type(e).__name__}: {first}); "
        "check the name (owner/name), that it is a local path if you meant one, and the network"
    )


def _prog(args: argparse.Namespace) -> str:
    words = ["tdpo-mlx", getattr(args, "command", None), getattr(args, "data_command", None)]
    return " ".join(w for w in words if w)


def main(argv: list[str] | None = None) -> int:
    """Run ``tdpo-mlx`` with ``argv``; returns the exit status (2 for a user's mistake)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or _debug()
    argv = [a for a in argv if a != "--debug"]
    first = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(only=first if first in COMMANDS else None)
    # a parsing error prints one line and exits 2 (Parser.error), from the subcommand's parser
    args, extra = parser.parse_known_args(argv)
    if extra:
        _subparser(parser, args).error("unrecognized arguments: " + " ".join(extra))
    if not getattr(args, "command", None) or not hasattr(args, "func"):
        return _fail("tdpo-mlx", f"choose a command: {', '.join(COMMANDS)} (tdpo-mlx --help)")
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        return _fail(_prog(args), str(e), e if debug else None)
    except Exception as e:
        if not _from_hub(e):
            raise
        return _fail(_prog(args), _hub_message(args, e), e if debug else None)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
