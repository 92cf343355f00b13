"""``tdpo-mlx generate``: sample completions from a model, optionally with trained adapters."""

from __future__ import annotations

import argparse
import json
import sys

from .common import (
    HelpFormatter,
    check_adapter_path,
    check_model,
    check_prompts_file,
    non_negative_float,
    positive_int,
    probability,
)


def add_sampling_options(p, *, max_tokens: int, batch_size: int) -> None:
    """Sampling options shared by ``generate`` and ``eval`` (mlx-lm's sampler settings, chat)."""
    p.add_argument(
        "--chat",
        action="store_true",
        help="send each prompt as a user turn through the model's chat template (instruct models)",
    )
    p.add_argument("--system", default=None, help="system message before each prompt (with --chat)")
    p.add_argument("--max-tokens", type=positive_int, default=max_tokens, help="maximum new tokens per sample")
    p.add_argument("--temp", type=non_negative_float, default=1.0, help="sampling temperature (0 = greedy)")
    p.add_argument("--top-p", type=probability, default=1.0, help="nucleus sampling mass (1 = off)")
    p.add_argument("--seed", type=int, default=0, help="random seed (the same for policy and reference)")
    p.add_argument("--batch-size", type=positive_int, default=batch_size, help="sequences decoded together")


def sampling_options(args) -> dict:
    """The sampler settings of :func:`add_sampling_options`, as keywords of
    :func:`tdpo_mlx.generation.generate_samples` and :func:`tdpo_mlx.evaluation.evaluate`."""
    return {k: getattr(args, k) for k in ("max_tokens", "temp", "top_p", "seed", "batch_size")}


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "generate",
        help="sample completions from a model (+ adapters)",
        description="Sample completions for one prompt or a file of prompts (one per line, or JSON\n"
        "lines with a 'prompt' field), batched with mlx-lm. Prompts are fed as raw text, or with --chat\n"
        "as user turns through the model's chat template.",
        epilog="examples:\n"
        '  tdpo-mlx generate --model gemma3-270m --prompt "The movie was"\n'
        "  tdpo-mlx generate --model gemma3-270m --adapter-path runs/tdpo2 --prompt-file prompts.txt --num-samples 4\n"
        '  tdpo-mlx generate --model smollm2-135m-instruct --chat --prompt "What is the capital of France?"',
        formatter_class=HelpFormatter,
    )
    p.add_argument("--model", default="gemma3-270m", help="mlx-lm model dir, hub id, or 'gemma3-270m'")
    p.add_argument("--adapter-path", default=None, help="folder with adapters.safetensors from tdpo-mlx train")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="a prompt text")
    src.add_argument("--prompt-file", help="file of prompts")
    p.add_argument("--num-samples", type=positive_int, default=1, help="completions per prompt")
    add_sampling_options(p, max_tokens=64, batch_size=8)
    p.add_argument("--json", action="store_true", help="print one JSON object per completion")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    from ..evaluation import load_model
    from ..generation import chat_prompts, generate_samples, read_prompts

    check_model(args.model)
    check_adapter_path(args.adapter_path)
    if args.prompt_file is not None:
        check_prompts_file(args.prompt_file, "--prompt-file")
    prompts = [args.prompt] if args.prompt is not None else read_prompts(args.prompt_file)
    model, tokenizer = load_model(args.model, args.adapter_path)
    if args.chat:
        prompts = chat_prompts(tokenizer, prompts, args.system)
    samples = generate_samples(
        model,
        tokenizer,
        prompts,
        samples_per_prompt=args.num_samples,
        progress=sys.stderr.isatty(),
        **sampling_options(args),
    )
    for s in samples:
        if args.json:
            print(
                json.dumps(
                    {
                        "prompt": s.prompt,
                        "completion": s.completion,
                        "sample": s.sample_index,
                        "tokens": len(s.completion_ids),
                        "finished": s.finished,
                    },
                    ensure_ascii=False,
                )
            )
        else:
            tag = f"[{s.prompt_index}.{s.sample_index}] " if len(samples) > 1 else ""
            print(
                f"{tag}{s.prompt}\033[1m{s.completion}\033[0m"
                if sys.stdout.isatty()
                else f"{tag}{s.prompt}{s.completion}"
            )
    return 0
