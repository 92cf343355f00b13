"""``tdpo-mlx train``: train LoRA/DoRA adapters with TDPO on preference pairs.

Options are generated from :class:`tdpo_mlx.config.TrainConfig` (one option per field, same
name with ``-``). Precedence: TrainConfig defaults < ``--config`` file < command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
from pathlib import Path

from ..config import TrainConfig, field_type, load_config_file, option_name
from ..errors import AlreadyExistsError, UserError, one_line
from .common import HelpFormatter, check_model

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


def _values(args: argparse.Namespace) -> dict:
    values = {}
    if getattr(args, "config", None):
        values.update(load_config_file(args.config))
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    values.update({k: v for k, v in vars(args).items() if k in names})
    return values


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """TrainConfig from defaults, then ``args.config`` (file), then explicit command-line options."""
    return TrainConfig(**_values(args)).validate()


RUN_FILES = ("adapters.safetensors", "adapter_config.json", "metrics.jsonl", "checkpoints")


def check_inputs(config: TrainConfig, overwrite: bool = False) -> None:
    """Everything checkable before a model is loaded: --report-to packages, model and data paths (never sent to the
    hub when they look local), the chat template file, the resume checkpoint, and an
    ``--adapter-path`` that already holds a run (refused without ``--resume``/``--overwrite``).

    Raises:
        UserError (NotFoundError, AlreadyExistsError): naming the option.
    """
    from ..checkpoint import find_checkpoint
    from ..data.rules import load_chat_template
    from ..data.sources import check_data_path
    from ..report import check_report_to

    check_report_to(config.report_to)
    check_model(config.model, "--model")
    if config.ref_model:
        check_model(config.ref_model, "--ref-model")
    if not config.data:
        raise UserError("--data is required: a preference data file, directory or hub dataset (or data: in --config)")
    check_data_path(config.data, "--data")
    if config.eval_data:
        check_data_path(config.eval_data, "--eval-data")
    if config.chat_template:
        load_chat_template(config.chat_template)
    out = Path(config.adapter_path).expanduser()
    if out.exists() and not out.is_dir():
        raise UserError(f"--adapter-path {out} is a file; give a folder for the adapters")
    if config.resume:
        find_checkpoint(config.resume, out)
    elif not overwrite and out.is_dir() and any((out / n).exists() for n in RUN_FILES):
        raise AlreadyExistsError(
            f"--adapter-path {out} already holds a run ({', '.join(n for n in RUN_FILES if (out / n).exists())}); "
            "continue it with --resume, start over with --overwrite, or choose another --adapter-path"
        )


def run(args) -> int:
    from ..checkpoint import resume_settings
    from ..distributed import DistributedError, process_rank
    from ..trainer import NonFiniteLossError, train

    main = process_rank() == 0  # under mlx.launch: process 0 alone looks after the output folder
    values = _values(args)
    config = TrainConfig(**values).validate()
    if args.overwrite and config.resume:
        raise UserError("--overwrite and --resume contradict each other: resume the run, or start over")
    check_inputs(config, overwrite=args.overwrite or not main)
    config = resume_settings(config, given=set(values)).validate()
    out = Path(config.adapter_path).expanduser()
    existed = out.exists()
    if args.overwrite and main:
        for name in RUN_FILES:
            p = out / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    try:
        result = train(config)
    except (NonFiniteLossError, DistributedError) as e:
        print(f"tdpo-mlx train: error: {one_line(str(e))}", file=sys.stderr)
        return 1
    finally:
        if main and not existed and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # a run that failed before writing anything leaves no folder behind
    if result.get("interrupted"):
        return 130
    keys = ("eval_loss", "eval_rewards/accuracies", "eval_kl/chosen", "eval_kl/rejected")
    summary = ", ".join(f"{k} {result[k]:.4f}" for k in keys if k in result)
    if main:
        print(
            f"done: {result['step']} steps; adapters in {result['adapter_path']}" + (f"; {summary}" if summary else "")
        )
    return 0
