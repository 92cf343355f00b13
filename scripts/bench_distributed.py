#!/usr/bin/env python
"""Benchmark data-parallel training: N local processes (MLX ring backend on loopback) against
one process at the same global batch, on the CPU backend.

Each run executes the trainer's own step (:func:`tdpo_mlx.trainer.train_step`: accumulate,
all-reduce, clip, update) on random token pairs of a fixed shape; the table gives the median
step time, the median time of the gradient all-reduce (``nn.average_gradients``, waiting for
the slower process included) and the tokens per second of all processes together. The last
line printed is one JSON object.

Every process of both runs gets ``--threads`` BLAS threads (default: cores / N, so that N local
processes do not oversubscribe the cores); the comparison is then one process against N with the
same per-process compute, as on N machines. On a loaded machine, compare the all-reduce share
more than the step times. Between machines (``mlx.launch --hostfile``) each
process has its own cores and the speed-up approaches N minus the all-reduce share.

Example:
    python scripts/bench_distributed.py --tiny --world 2
    flock /tmp/tdpo-heavy.lock python scripts/bench_distributed.py --world 2 --prompt-len 64 --response-len 64
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import tdpo_mlx  # noqa: E402,F401  (loads the optimized BLAS before mlx.core)


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--world", type=int, default=2, help="processes of the data-parallel run")
    p.add_argument("--model", default="gemma3-270m", help="model path or named source")
    p.add_argument("--tiny", action="store_true", help="a tiny random Gemma-3-shaped model instead of --model")
    p.add_argument("--batch-size", type=int, default=2, help="pairs per micro-batch")
    p.add_argument("--grad-accum", type=int, default=2, help="global batch = batch-size x grad-accum pairs")
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--response-len", type=int, default=64)
    p.add_argument("--steps", type=int, default=3, help="timed steps per run (after one untimed)")
    p.add_argument("--rounds", type=int, default=2, help="runs of each kind, alternating (1, N, 1, N, ...)")
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument(
        "--threads", type=int, default=None, help="BLAS threads of every process, both runs (default: cores / world)"
    )
    p.add_argument("--worker", help=argparse.SUPPRESS)  # internal: run one process, write JSON here
    return p.parse_args(argv)


def tiny_model_dir(path: Path) -> str:
    """A 2-layer random Gemma 3 text model with a byte-level tokenizer, as an mlx-lm folder."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.models import gemma3_text
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    cfg = dict(
        model_type="gemma3_text",
        hidden_size=128,
        num_hidden_layers=2,
        intermediate_size=256,
        num_attention_heads=2,
        head_dim=64,
        rms_norm_eps=1e-6,
        vocab_size=4096,
        num_key_value_heads=1,
        sliding_window=64,
        sliding_window_pattern=2,
    )
    mx.random.seed(0)
    model = gemma3_text.Model(gemma3_text.ModelArgs.from_dict(cfg))
    path.mkdir(parents=True, exist_ok=True)
    mx.save_safetensors(str(path / "model.safetensors"), dict(tree_flatten(model.parameters())))
    (path / "config.json").write_text(json.dumps(cfg))
    vocab = {f"t{i}": i for i in range(cfg["vocab_size"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="t3"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="t1", eos_token="t2", pad_token="t0").save_pretrained(path)
    return str(path)


def random_pairs(n: int, prompt_len: int, response_len: int, vocab: int):
    import numpy as np

    from tdpo_mlx.data import EncodedPair

    rng = np.random.default_rng(0)
    ids = lambda k: rng.integers(4, vocab, size=k).tolist()  # noqa: E731
    return [EncodedPair(ids(prompt_len), ids(response_len), ids(response_len), i) for i in range(n)]


def worker(args) -> None:
    """One process: the trainer's setup and steps; rank 0 writes the timings as JSON."""
    from tdpo_mlx.config import TrainConfig
    from tdpo_mlx.trainer import setup, train_step, warm_up

    with tempfile.TemporaryDirectory() as out:
        config = TrainConfig(
            model=args.model,
            adapter_path=out,
            lora_rank=args.lora_rank,
            batch_size=args.batch_size,
            grad_accum=args.grad_accum,
            iters=args.steps + 1,
            warmup_steps=0,
            progress=False,
        )
        vocab = 4096 if args.tiny else 32000
        pairs = random_pairs(4 * args.batch_size * args.grad_accum, args.prompt_len, args.response_len, vocab)
        run = setup(config, train_pairs=pairs, eval_pairs=[])
        warm_up(run)
        results = [train_step(run) for _ in range(args.steps + 1)][1:]
        if run.world.is_main:
            record = {
                "processes": run.world.size,
                "step_s": [r.seconds for r in results],
                "allreduce_s": [r.comm_seconds for r in results],
                "tokens": sum(r.n_tokens for r in results),
            }
            Path(args.worker).write_text(json.dumps(record))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args, n: int, tmp: Path) -> dict:
    """Run ``n`` worker processes (ring backend on loopback; plain for n = 1)."""
    result = tmp / f"world{n}.json"
    cmd = [sys.executable, __file__, *sys.argv[1:], "--worker", str(result)]
    env = dict(os.environ)
    threads = str(args.threads or max(1, (os.cpu_count() or 1) // args.world))  # same in both runs
    env.update(MKL_NUM_THREADS=threads, OMP_NUM_THREADS=threads, OPENBLAS_NUM_THREADS=threads)
    if n > 1:
        hostfile = tmp / f"hosts{n}.json"
        hostfile.write_text(json.dumps([[f"127.0.0.1:{_free_port()}"] for _ in range(n)]))
        env["MLX_HOSTFILE"] = str(hostfile)
    procs = [subprocess.Popen(cmd, env={**env, "MLX_RANK": str(r)} if n > 1 else env) for r in range(n)]
    codes = [p.wait() for p in procs]
    if any(codes):
        raise SystemExit(f"a worker failed (exit codes {codes})")
    return json.loads(result.read_text())


def summarize(records: list[dict]) -> dict:
    """Medians over every timed step of every run of one kind; tokens/s over their total time."""
    steps = [s for r in records for s in r["step_s"]]
    return {
        "processes": records[0]["processes"],
        "step_s": statistics.median(steps),
        "allreduce_s": statistics.median(a for r in records for a in r["allreduce_s"]),
        "tokens_per_s": sum(r["tokens"] for r in records) / sum(steps),
        "steps": len(steps),
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.tiny:
            args.model = tiny_model_dir(tmp / "tiny")
            sys.argv += ["--model", args.model]
        runs = {1: [], args.world: []}
        for _ in range(args.rounds):  # alternating, so that load from other jobs hits both kinds
            for n in runs:
                runs[n].append(launch(args, n, tmp))
    one, many = (summarize(runs[n]) for n in runs)
    g = args.batch_size * args.grad_accum
    print(
        f"global batch {g} pairs ({args.batch_size} x {args.grad_accum}), prompt {args.prompt_len} + response "
        f"{args.response_len} tokens, {os.cpu_count()} CPU cores"
    )
    print(f"{'processes':>9} {'step s':>8} {'all-reduce s':>13} {'share':>6} {'tokens/s':>9} {'speed-up':>9}")
    for r in (one, many):
        share = r["allreduce_s"] / r["step_s"]
        print(
            f"{r['processes']:>9} {r['step_s']:>8.3f} {r['allreduce_s']:>13.4f} {share:>6.1%} "
            f"{r['tokens_per_s']:>9.0f} {one['step_s'] / r['step_s']:>8.2f}x"
        )
    print(json.dumps({"single": one, "distributed": many, "global_batch": g, "rounds": args.rounds}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
