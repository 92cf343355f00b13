"""``tdpo-mlx train``: train LoRA/DoRA adapters with TDPO on preference pairs.

Options are generated from :class:`tdpo_mlx.config.TrainConfig` (one option per field, same
name with ``-``). Precedence: TrainConfig defaults < ``--config`` file < command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing

from ..config import TrainConfig, load_config_file

EXAMPLE = """example:
  tdpo-mlx train --model gemma3-270m --data pairs.jsonl.gz --loss tdpo2 --iters 200 \\
      --adapter-path runs/tdpo2
  tdpo-mlx train --config run.yaml --lr 1e-4      # file values, lr overridden
  tdpo-mlx train --config run.yaml --resume latest
"""


def _base_type(tp):
    """int for ``int | None`` etc."""
    if isinstance(tp, str):
        tp = eval(tp, {"list": list})  # annotations are strings under `from __future__ import annotations`
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if args else tp


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "train",
        help="train LoRA/DoRA adapters with TDPO1/TDPO2/DPO/SFT",
        description="Train LoRA/DoRA adapters on preference pairs with Token-level DPO. "
        "Options may also come from --config FILE.yaml (keys = long option names); "
        "the command line overrides the file.",
        epilog=EXAMPLE,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--config", default=None, help="YAML or JSON file of option: value (keys with - or _)")
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        # Defaults are SUPPRESSed so that only options given on the command line reach
        # TrainConfig (they override the config file); the help text shows the real default.
        shown = f.default if not isinstance(f.default, list) else " ".join(f.default)
        help_text = f"{f.metadata.get('help', '')} (default: {shown})"
        kw = dict(default=argparse.SUPPRESS, help=help_text, dest=f.name)
        tp = _base_type(f.type)
        if tp is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
            continue
        if f.metadata.get("nargs"):
            kw["nargs"] = f.metadata["nargs"]
            kw["metavar"] = "KEY"
            p.add_argument(flag, type=str, **kw)
            continue
        if f.name == "resume":
            kw.update(nargs="?", const="latest", metavar="CHECKPOINT")
        if "choices" in f.metadata:
            kw["choices"] = f.metadata["choices"]
        p.add_argument(flag, type=tp if tp in (int, float, str) else str, **kw)
    p.set_defaults(func=run)
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """TrainConfig from defaults, then ``args.config`` (file), then explicit command-line options."""
    values = {}
    if getattr(args, "config", None):
        values.update(load_config_file(args.config))
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    values.update({k: v for k, v in vars(args).items() if k in names})
    if values.get("resume") is True:
        values["resume"] = "latest"
    elif values.get("resume") is False:
        values["resume"] = None
    return TrainConfig(**values).validate()


def run(args) -> int:
    from ..trainer import NonFiniteLossError, train

    try:
        config = config_from_args(args)
    except (ValueError, FileNotFoundError, TypeError) as e:
        print(f"tdpo-mlx train: {e}", file=sys.stderr)
        return 2
    try:
        result = train(config)
    except NonFiniteLossError as e:
        print(f"tdpo-mlx train: {e}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"tdpo-mlx train: {e}", file=sys.stderr)
        return 2
    if result.get("interrupted"):
        return 130
    keys = ("eval_loss", "eval_rewards/accuracies", "eval_kl/chosen", "eval_kl/rejected")
    summary = ", ".join(f"{k} {result[k]:.4f}" for k in keys if k in result)
    print(f"done: {result['step']} steps; adapters in {result['adapter_path']}" + (f"; {summary}" if summary else ""))
    return 0
