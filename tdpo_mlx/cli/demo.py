"""``tdpo-mlx demo``: the paper's controlled-sentiment experiment on the embedded Gemma 3 270M, offline."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from .common import HelpFormatter, check_model, check_output_dir, positive_float, positive_int


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "demo",
        help="run the controlled-sentiment experiment (DPO vs TDPO1 vs TDPO2) end to end, offline",
        description="Imports Gemma 3 270M from the bundled GGUF, samples review continuations, builds "
        "preference pairs by VADER sentiment, trains DPO/TDPO1/TDPO2 LoRA adapters with the same budget, "
        "evaluates them on held-out openers and writes report.md with reward-vs-KL and KL-curve plots. "
        "Rerun the same command to resume an interrupted run.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--out", default="tdpo-demo", help="output folder (resumes a run found there)")
    p.add_argument("--quick", action="store_true", help="small preset: under 10 minutes on 2 CPU cores")
    p.add_argument("--model", default=None, help="base model (default: gemma3-270m)")
    p.add_argument("--iters", type=positive_int, default=None, help="training steps per method (preset's by default)")
    p.add_argument("--lr", type=positive_float, default=None, help="learning rate (preset's by default)")
    p.add_argument(
        "--methods",
        nargs="+",
        default=None,
        choices=("dpo", "tdpo1", "tdpo2"),
        help="methods to train (default: all three)",
    )
    p.add_argument("--seed", type=int, default=None, help="seed (preset's by default: 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    from ..demo import FULL, QUICK, run_demo

    if args.model is not None:
        check_model(args.model)
    check_output_dir(args.out, "--out", overwrite_flag=None)

    cfg = QUICK if args.quick else FULL
    over = {
        k: v for k, v in dict(model=args.model, iters=args.iters, lr=args.lr, seed=args.seed).items() if v is not None
    }
    if args.methods:
        over["methods"] = tuple(args.methods)
    cfg = dataclasses.replace(cfg, **over)
    run_demo(args.out, cfg, progress=not args.no_progress and sys.stderr.isatty())
    return 0
