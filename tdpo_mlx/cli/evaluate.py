"""``tdpo-mlx eval``: reward, sequence KL, entropy, win rate and distinct-n of a policy vs its reference."""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

from .common import (
    HelpFormatter,
    check_adapter_path,
    check_model,
    check_output_dir,
    check_prompts_file,
    positive_int,
)
from .generate import add_sampling_options, sampling_options


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "eval",
        help="evaluate trained adapters against the reference on held-out prompts",
        description="Sample from the policy (model + adapters) and from the reference (adapters off) "
        "on held-out prompts; report mean reward, sequence KL(pi_theta || pi_ref) on the policy's "
        "samples (sum over generated tokens of the full-vocabulary KL), the policy's per-token "
        "entropy, the win rate over the reference (ties count half) and distinct-1/2.",
        formatter_class=HelpFormatter,
        epilog="examples:\n"
        "  tdpo-mlx eval --model gemma3-270m --adapter-path runs/tdpo2 --prompts openers.txt --out eval-tdpo2\n"
        "  tdpo-mlx eval --model gemma3-270m --prompts openers.txt --reward my_rewards.py:score --out eval-base",
    )
    p.add_argument("--model", default="gemma3-270m", help="base model (dir, hub id, or 'gemma3-270m')")
    p.add_argument("--adapter-path", default=None, help="trained adapters (omit to evaluate the base model)")
    p.add_argument("--prompts", required=True, help="prompt file: one per line, or JSON lines with 'prompt'")
    p.add_argument("--reward", default="sentiment", help="'sentiment' (VADER compound) or module:function")
    p.add_argument("--samples-per-prompt", type=positive_int, default=2, help="samples per prompt from each model")
    add_sampling_options(p, max_tokens=48, batch_size=16)
    p.add_argument("--score-batch-size", type=positive_int, default=8, help="rows per teacher-forced KL forward")
    p.add_argument("--out", required=True, help="output folder (eval.json, eval.md, samples.jsonl)")
    p.set_defaults(func=run)
    return p


SETTINGS = (
    "model",
    "adapter_path",
    "prompts",
    "reward",
    "samples_per_prompt",
    "max_tokens",
    "temp",
    "top_p",
    "seed",
    "chat",
)


def run(args) -> int:
    from ..evaluation import KL_DIRECTION, evaluate, load_model
    from ..generation import chat_prompts, read_prompts
    from ..rewards import load_reward

    check_model(args.model)
    check_adapter_path(args.adapter_path)
    check_prompts_file(args.prompts, "--prompts")
    check_output_dir(args.out, "--out", overwrite_flag=None)
    reward_fn = load_reward(args.reward)
    prompts = read_prompts(args.prompts)
    model, tokenizer = load_model(args.model, args.adapter_path)
    if args.chat:
        prompts = chat_prompts(tokenizer, prompts, args.system)
    name = pathlib.Path(args.adapter_path).name if args.adapter_path else "policy"
    res = evaluate(
        model,
        tokenizer,
        prompts,
        reward_fn,
        name=name,
        samples_per_prompt=args.samples_per_prompt,
        score_batch_size=args.score_batch_size,
        progress=sys.stderr.isatty(),
        **sampling_options(args),
    )
    out = pathlib.Path(args.out)
    table = write_results(out, args, res, len(prompts), name)
    print(table)
    print(f"\nsequence KL direction: {KL_DIRECTION}")
    print(f"wrote {out / 'eval.json'}, {out / 'eval.md'}, {out / 'samples.jsonl'}")
    return 0


def write_results(out: pathlib.Path, args, res, n_prompts: int, name: str) -> str:
    """``eval.json`` (settings and rows), ``eval.md`` (the table in words) and ``samples.jsonl``
    (every sample with its reward) of an evaluation; returns the markdown table."""
    from ..atomic import write_jsonl, write_text
    from ..evaluation import KL_DIRECTION, markdown_table

    rows = [res.reference, res.policy]
    settings = {k: getattr(args, k) for k in SETTINGS}
    summary = {"kl_direction": KL_DIRECTION, "settings": settings, "n_prompts": n_prompts, "rows": rows}
    write_text(out / "eval.json", json.dumps(summary, indent=2))
    table = markdown_table(rows)
    write_text(
        out / "eval.md",
        (
            f"# Evaluation\n\nmodel `{args.model}`, adapters `{args.adapter_path}`, reward `{args.reward}`, "
            f"{n_prompts} prompts x {args.samples_per_prompt} samples, up to {args.max_tokens} new tokens, "
            f"temperature {args.temp}.\n\n{table}\n\nSequence KL: {KL_DIRECTION}. Entropy: the policy's "
            "mean per-token predictive entropy over generated tokens. Win rate: policy sample vs reference "
            "sample for the same prompt and slot under the reward, ties count 1/2.\n"
        ),
    )
    samples = [
        dict(model="reference", reward=r, **s.to_json()) for s, r in zip(res.reference_samples, res.reference_rewards)
    ] + [dict(model=name, reward=r, **s.to_json()) for s, r in zip(res.policy_samples, res.policy_rewards)]
    write_jsonl(out / "samples.jsonl", samples)
    return table
