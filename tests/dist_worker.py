"""One process of a data-parallel test run (started N times by tests/test_distributed.py with
MLX_RANK and MLX_HOSTFILE set): trains a tiny model on seeded random pairs.

argv[1]: a JSON file {"config": TrainConfig kwargs, "pairs": [n, seed], "eval_pairs": [n, seed],
"sigint_at": [rank, step], "die_at": [rank, step], "nan_from_call": [rank, n] (optional faults: Ctrl-C
after a step, a crash after a step, a NaN loss from the n-th training micro-batch), "result": path prefix}.
Writes ``<result>-<rank>.json`` (the value train() returned) and exits 0, 1 on a non-finite
loss, 2 on any other error (the message on stderr).
"""

import json
import os
import signal
import sys
import traceback

from support.pairs import random_pairs

import tdpo_mlx  # noqa: F401  (BLAS before mlx.core)
import tdpo_mlx.objective as objective
import tdpo_mlx.trainer as trainer
from tdpo_mlx.config import TrainConfig


def main(spec_file: str) -> int:
    spec = json.loads(open(spec_file).read())
    rank = int(os.environ.get("MLX_RANK", "0"))
    real_step = trainer.train_step

    def step_with_faults(run):
        res = real_step(run)
        if spec.get("sigint_at") == [rank, run.step]:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C in this process only
        if spec.get("die_at") == [rank, run.step]:
            os._exit(9)  # a crashed rank: no cleanup, sockets closed by the OS
        return res

    trainer.train_step = step_with_faults
    real_loss, calls = objective.batch_loss, [0]  # accumulate_gradients calls it from there

    def loss_with_nan(model, batch, **kw):
        loss, sums = real_loss(model, batch, **kw)
        if kw.get("total_pairs") is not None and spec.get("nan_from_call", [None])[0] == rank:
            calls[0] += 1  # training micro-batches of this process
            if calls[0] >= spec["nan_from_call"][1]:
                loss = loss * float("nan")
        return loss, sums

    objective.batch_loss = loss_with_nan
    try:
        result = trainer.train(
            TrainConfig(**spec["config"]),
            train_pairs=random_pairs(*spec["pairs"]),
            eval_pairs=random_pairs(*spec["eval_pairs"]),
        )
    except trainer.NonFiniteLossError as e:
        print(f"rank {rank}: {e}", file=sys.stderr)
        return 1
    except Exception as e:
        traceback.print_exc()
        print(f"rank {rank}: error: {e}", file=sys.stderr)
        return 2
    with open(f"{spec['result']}-{rank}.json", "w") as fh:
        json.dump(result, fh)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
