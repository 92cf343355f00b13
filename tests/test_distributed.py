"""Data parallelism (issue 12): 2 processes over MLX's ring backend on loopback give the update
and the logged metrics of one process with the same global batch; one set of files; Ctrl-C on
one rank stops both with one checkpoint and the resumed run matches; a dead rank is an error."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from support.models import make_model_dir
from support.pairs import random_pairs

from tdpo_mlx.config import TrainConfig
from tdpo_mlx.distributed import World, check_global_batch, shard
from tdpo_mlx.trainer import train

HERE = Path(__file__).parent
TIMING = {"tokens_per_second", "peak_memory_gb", "step_seconds", "allreduce_seconds"}  # measured, not computed


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("tiny"), seed=13)


def _config(model_dir, out, **kw):
    base = dict(
        model=str(model_dir),
        adapter_path=str(out),
        lora_keys=["q_proj", "v_proj"],
        loss="tdpo2",
        batch_size=2,
        grad_accum=2,
        iters=3,
        warmup_steps=1,
        lr=1e-2,
        eval_every=2,
        save_every=0,
        steps_per_report=1,
        seed=3,
        progress=False,
    )
    return {**base, **kw}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(tmp_path, config, n=2, timeout=180, **faults):
    """Run tests/dist_worker.py in ``n`` processes (ring backend on loopback); returns
    [(returncode, stderr)] by rank and the train() results written by each rank."""
    hostfile = tmp_path / "hosts.json"
    hostfile.write_text(json.dumps([[f"127.0.0.1:{_free_port()}"] for _ in range(n)]))
    spec = tmp_path / "spec.json"
    result = tmp_path / "result"
    spec.write_text(
        json.dumps({"config": config, "pairs": [10, 21], "eval_pairs": [5, 22], "result": str(result), **faults})
    )
    env = {**os.environ, "MLX_HOSTFILE": str(hostfile), "PYTHONPATH": os.pathsep.join([str(HERE), *sys.path])}
    env.update(MKL_NUM_THREADS="1", OMP_NUM_THREADS="1")  # n processes on a few cores
    procs = [
        subprocess.Popen(
            [sys.executable, str(HERE / "dist_worker.py"), str(spec)],
            env={**env, "MLX_RANK": str(r)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in range(n)
    ]
    outs = []
    for p in procs:
        try:
            _, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise AssertionError("a rank hung") from None
        outs.append((p.returncode, err))
    results = [
        json.loads(Path(f"{result}-{r}.json").read_text()) if Path(f"{result}-{r}.json").exists() else None
        for r in range(n)
    ]
    return outs, results


def _single(model_dir, out, **kw):
    return train(
        TrainConfig(**_config(model_dir, out, **kw)),
        train_pairs=random_pairs(10, 21),
        eval_pairs=random_pairs(5, 22),
    )


def _metrics(out):
    return [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def _adapters(path):
    return {k: np.asarray(v) for k, v in mx.load(str(path)).items()}


def _same_run(dist_out, single_out, atol=1e-5):
    a, b = _adapters(Path(dist_out) / "adapters.safetensors"), _adapters(Path(single_out) / "adapters.safetensors")
    assert a.keys() == b.keys() and len(a) == 8
    moved = max(np.abs(v).max() for k, v in b.items() if k.endswith("lora_b"))
    assert moved > 1e-3  # training did move the adapters
    for k in a:
        np.testing.assert_allclose(a[k], b[k], atol=atol, rtol=0, err_msg=k)
    ma, mb = _metrics(dist_out), _metrics(single_out)
    assert [sorted(set(r) - TIMING) for r in ma] == [sorted(set(r) - TIMING) for r in mb]
    assert all("allreduce_seconds" in r for r in ma if "loss" in r)
    for ra, rb in zip(ma, mb):
        for k in ra:
            if k not in TIMING:
                assert ra[k] == pytest.approx(rb[k], abs=atol), (ra["step"], k)


def _files(out):
    return sorted(str(p.relative_to(out)) for p in Path(out).rglob("*"))


@pytest.fixture(scope="module")
def dist_run(model_dir, tmp_path_factory):
    """3 steps of TDPO2 in 2 processes, global batch 2 x 2 = 4 pairs (2 per process)."""
    tmp = tmp_path_factory.mktemp("dist")
    outs, results = _launch(tmp, _config(model_dir, tmp / "out"))
    assert [rc for rc, _ in outs] == [0, 0], outs
    return tmp / "out", results


def test_two_processes_equal_one_with_the_same_global_batch(model_dir, dist_run, tmp_path):
    out, results = dist_run
    single = _single(model_dir, tmp_path / "single")
    # each process runs 2 of the 4 pairs: with the prompt shared, its prompt rows are left-padded
    # to another width than in the single run's batch, so products round differently (~1e-7 in the
    # gradients); Adam turns that into ~1e-5 on weights whose gradient is near zero (1.2e-5
    # measured with MLX's GELU; 6.2e-5 on one of 512 weights with the CPU backend's rational-tanh
    # GELU, deterministic, and within 3e-5 again with that switch undone)
    _same_run(out, tmp_path / "single", atol=1e-4)
    assert results[0]["step"] == results[1]["step"] == 3
    assert results[0]["eval_loss"] == pytest.approx(single["eval_loss"], abs=1e-5)
    assert results[1]["eval_loss"] == results[0]["eval_loss"]  # every process holds the reduced metrics
    assert _files(out) == _files(tmp_path / "single")  # one set of output files


def test_uneven_last_micro_batch(model_dir, tmp_path):
    """Global batch 2 x 3 = 6 pairs: each rank gets 3 pairs, as micro-batches of 2 and 1."""
    kw = dict(grad_accum=3)
    _single(model_dir, tmp_path / "single", **kw)
    outs, _ = _launch(tmp_path, _config(model_dir, tmp_path / "dist", **kw))
    assert [rc for rc, _ in outs] == [0, 0], outs
    # micro-batches of 2 and 1 here vs 2, 2, 2 in the single run: products of other shapes round
    # differently (~1e-7 relative in the gradients); Adam turns that into up to ~2e-5 on weights
    # whose gradient is near zero (measured with the fast path's stacked head products)
    _same_run(tmp_path / "dist", tmp_path / "single", atol=5e-5)


def test_ctrl_c_on_one_rank_stops_both_and_resume_matches(model_dir, dist_run, tmp_path):
    full, _ = dist_run
    out = tmp_path / "stopped"
    outs, results = _launch(tmp_path, _config(model_dir, out), sigint_at=[1, 2])  # Ctrl-C in process 1 only
    assert [rc for rc, _ in outs] == [0, 0], outs
    assert [r["step"] for r in results] == [2, 2] and all(r["interrupted"] for r in results)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["latest.json", "step-0000002"]
    outs, results = _launch(tmp_path, _config(model_dir, out, resume="latest"))
    assert [rc for rc, _ in outs] == [0, 0], outs
    assert [r["step"] for r in results] == [3, 3] and not results[0]["interrupted"]
    a, b = _adapters(out / "adapters.safetensors"), _adapters(full / "adapters.safetensors")
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)

    def computed(records, key):  # the train (or eval) records without the measured timings
        return [{k: v for k, v in r.items() if k not in TIMING} for r in records if key in r]

    assert computed(_metrics(out), "loss") == computed(_metrics(full), "loss")
    assert computed(_metrics(out), "eval_loss")[-1] == computed(_metrics(full), "eval_loss")[-1]


def test_a_non_finite_loss_in_one_process_stops_both_before_applying_it(model_dir, tmp_path):
    out = tmp_path / "nan"
    outs, _ = _launch(tmp_path, _config(model_dir, out, save_every=1, eval_every=0), nan_from_call=[1, 3])
    assert [rc for rc, _ in outs] == [1, 1], outs
    assert all("non-finite loss at step 3" in err for _, err in outs)
    assert json.loads((out / "checkpoints" / "latest.json").read_text())["step"] == 2
    assert max(r["step"] for r in _metrics(out)) == 2


def test_a_dead_rank_makes_the_other_exit_with_an_error(model_dir, tmp_path):
    outs, _ = _launch(tmp_path, _config(model_dir, tmp_path / "dead", iters=4), die_at=[1, 2], timeout=120)
    (rc0, err0), (rc1, _) = outs
    assert rc1 == 9 and rc0 == 2
    assert "rank 0: error:" in err0 and "lost" in err0


def test_unsplittable_global_batch_names_the_numbers():
    world = World(None, 1, 4)
    with pytest.raises(
        ValueError,
        match=r"global batch of 6 pairs \(--batch-size 3 x --grad-accum 2\) cannot be split evenly over 4 processes",
    ):
        check_global_batch(3, 2, world)
    check_global_batch(2, 2, world)


def test_shard_is_contiguous_equal_shares_in_micro_batches():
    pairs = list(range(12))
    got = [shard(pairs, World(None, r, 3), batch_size=3) for r in range(3)]
    assert got == [[[0, 1, 2], [3]], [[4, 5, 6], [7]], [[8, 9, 10], [11]]]
    assert shard(pairs, World(None, 0, 1), batch_size=4) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
