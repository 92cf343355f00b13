"""Close the loop on a GGUF export: does the written file hold the tuned model?

Loads the base model with its trained adapters in MLX (the model that was trained), re-imports
the exported GGUF with tdpo-mlx's importer, and compares on a fixed chat prompt: the largest
logit difference (absolute, and relative to the largest logit) and the greedy continuations::

    python scripts/check_gguf_export.py --model runs/smollm-native --adapter-path runs/qlora \\
        --gguf out/gguf/model.gguf [--prompt "What is the capital of France?"] [--tokens 24]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import mlx.core as mx

import tdpo_mlx  # noqa: F401  (fast BLAS before mlx)
from tdpo_mlx.evaluation import load_model
from tdpo_mlx.generation import chat_prompts
from tdpo_mlx.gguf import import_gguf


def greedy(model, ids: list[int], n: int) -> list[int]:
    out: list[int] = []
    for _ in range(n):
        out.append(int(mx.argmax(model(mx.array([ids + out]))[0, -1]).item()))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="base model the adapters were trained on")
    p.add_argument("--adapter-path", default=None)
    p.add_argument("--gguf", required=True, type=Path, help="the exported .gguf file")
    p.add_argument("--prompt", default="What is the capital of France?")
    p.add_argument("--tokens", type=int, default=24)
    args = p.parse_args(argv)

    tuned, tok = load_model(args.model, args.adapter_path)
    ids = list(tok.encode(chat_prompts(tok, [args.prompt])[0]))
    with tempfile.TemporaryDirectory() as tmp:
        back, _ = load_model(str(import_gguf(args.gguf, Path(tmp) / "reimported")))
        want, got = tuned(mx.array([ids]))[0].astype(mx.float32), back(mx.array([ids]))[0].astype(mx.float32)
        diff = mx.abs(want - got).max().item()
        scale = mx.abs(want).max().item()
        g_want, g_got = greedy(tuned, ids, args.tokens), greedy(back, ids, args.tokens)
    same = next((i for i, (a, b) in enumerate(zip(g_want, g_got)) if a != b), len(g_want))
    print(
        f"prompt tokens {len(ids)}; max |logit diff| {diff:.4g} (largest |logit| {scale:.3g}, ratio {diff / scale:.2e})"
    )
    print(f"greedy tokens agree on {same}/{len(g_want)}")
    print(f"  trained model: {tok.decode(g_want)!r}")
    print(f"  GGUF re-import: {tok.decode(g_got)!r}")
    return 0 if same == len(g_want) else 1


if __name__ == "__main__":
    raise SystemExit(main())
