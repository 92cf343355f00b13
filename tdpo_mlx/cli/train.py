"""``tdpo-mlx train``: train LoRA/DoRA adapters with TDPO on preference pairs.

Options are generated from :class:`tdpo_mlx.config.TrainConfig` (one option per field, same
name with ``-``). Precedence: TrainConfig defaults < ``--config`` file < command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from ..config import TrainConfig, field_type, load_config_file, option_name
from ..errors import one_line
from .common import HelpFormatter

EXAMPLE = """examples:
  tdpo-mlx train --model gemma3-270m --data pairs.jsonl.gz --loss tdpo2 --iters 200 --adapter-path runs/tdpo2
  tdpo-mlx train --config run.yaml --lr 1e-4
      (values from run.yaml, lr overridden)
  tdpo-mlx train --config run.yaml --resume latest
      (continue the run in run.yaml's adapter path; adapter settings come from its checkpoint)
  tdpo-mlx train --model ./my-model --data chats.jsonl --chat-template chatml.jinja
  tdpo-mlx train --data qa.jsonl --prompt-key question --chosen-key good --rejected-key bad
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "train",
        help="train LoRA/DoRA adapters with TDPO1/TDPO2/DPO/SFT",
        description="Train LoRA/DoRA adapters on preference pairs with Token-level DPO.\n"
        "Options may also come from --config FILE.yaml (keys = long option names, - or _);\n"
        "the command line overrides the file.",
        epilog=EXAMPLE,
        formatter_class=HelpFormatter,
    )
    p.add_argument("--config", default=None, help="YAML or JSON file of option: value (keys with - or _)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="start over in an --adapter-path that holds an earlier run (its files are replaced)",
    )
    for f in dataclasses.fields(TrainConfig):
        flag = option_name(f.name)
        # Defaults are SUPPRESSed so that only options given on the command line reach
        # TrainConfig (they override the config file); the help text shows the real default once.
        shown = f.default if not isinstance(f.default, list) else " ".join(f.default)
        help_text = f.metadata.get("help", "") + (f" (default: {shown})" if f.default is not None else "")
        kw = dict(default=argparse.SUPPRESS, help=help_text, dest=f.name)
        tp, _ = field_type(f.name)
        if tp is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
            continue
        if f.metadata.get("nargs"):
            kw["nargs"] = f.metadata["nargs"]
            kw["metavar"] = f.metadata.get("metavar", "KEY")
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
    return TrainConfig(**values).validate()


def run(args) -> int:
    from ..trainer import NonFiniteLossError, train

    config = config_from_args(args)
    try:
        result = train(config)
    except NonFiniteLossError as e:
        print(f"tdpo-mlx train: error: {one_line(str(e))}", file=sys.stderr)
        return 1
    if result.get("interrupted"):
        return 130
    keys = ("eval_loss", "eval_rewards/accuracies", "eval_kl/chosen", "eval_kl/rejected")
    summary = ", ".join(f"{k} {result[k]:.4f}" for k in keys if k in result)
    print(f"done: {result['step']} steps; adapters in {result['adapter_path']}" + (f"; {summary}" if summary else ""))
    return 0
