"""``tdpo-mlx demo``: the paper's two experiments, offline: controlled sentiment (reward-KL frontier)
and Anthropic HH (preference accuracy and entropy, Table 1)."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from ..errors import UserError
from .common import HelpFormatter, check_model, check_output_dir, positive_float, positive_int


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "demo",
        help="reproduce the paper's experiments (DPO vs TDPO1 vs TDPO2) end to end, offline",
        description="--experiment sentiment (default): samples review continuations from Gemma 3 270M, builds "
        "preference pairs by VADER sentiment, trains DPO/TDPO1/TDPO2 LoRA adapters with the same budget and "
        "evaluates checkpoints along training on held-out openers: a reward-vs-KL curve per method and a "
        "verdict sentence on the paper's claim. --experiment hh: trains on Anthropic HH pairs and reports "
        "held-out preference accuracy and generation entropy beside the paper's Table 1. The plan and its "
        "estimated time are printed first; rerun the same command to resume an interrupted run.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--experiment", choices=("sentiment", "hh"), default="sentiment", help="which experiment")
    p.add_argument("--out", default=None, help="output folder, resumes a run found there (default: tdpo-demo[-hh])")
    p.add_argument("--quick", action="store_true", help="small preset: under 10 minutes on an idle 2-core machine")
    p.add_argument("--model", default=None, help="base model (default: gemma3-270m)")
    p.add_argument("--data", default=None, help="hh: the HH-RLHF pairs file (default: ../shared/data/hh-rlhf/...)")
    p.add_argument("--iters", type=positive_int, default=None, help="training steps per run (preset's by default)")
    p.add_argument("--lr", type=positive_float, default=None, help="learning rate (preset's by default)")
    p.add_argument("--methods", nargs="+", default=None, choices=("dpo", "tdpo1", "tdpo2"), help="methods to train")
    p.add_argument("--alphas", nargs="+", type=float, default=None, help="TDPO2 alphas (preset's by default)")
    p.add_argument("--seeds", nargs="+", type=int, default=None, help="one training run per seed (preset's)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    from ..demo import FULL, HH_FULL, HH_QUICK, QUICK, run_demo, run_hh

    hh = args.experiment == "hh"
    out = args.out or ("tdpo-demo-hh" if hh else "tdpo-demo")
    if args.model is not None:
        check_model(args.model)
    check_output_dir(out, "--out", overwrite_flag=None)
    cfg = (HH_QUICK if args.quick else HH_FULL) if hh else (QUICK if args.quick else FULL)
    over = dict(model=args.model, iters=args.iters, lr=args.lr)
    over.update(methods=args.methods, tdpo2_alphas=args.alphas, seeds=args.seeds)
    over = {k: tuple(v) if isinstance(v, list) else v for k, v in over.items() if v is not None}
    if args.data is not None:
        if not hh:
            raise UserError("--data is for --experiment hh (the sentiment demo samples its own pairs)")
        over["data"] = args.data
    cfg = dataclasses.replace(cfg, **over)
    progress = not args.no_progress and sys.stderr.isatty()
    (run_hh if hh else run_demo)(out, cfg, progress=progress)
    return 0
