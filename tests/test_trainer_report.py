"""Metric reporters: --report-to tensorboard (local event files) and wandb (offline mode only:
nothing contacts a server), and the one-line error when their package is missing."""

import importlib.util
import json

import pytest
from support.models import make_model_dir
from support.pairs import random_pairs

from tdpo_mlx.cli import main
from tdpo_mlx.config import TrainConfig
from tdpo_mlx.trainer import train


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("tiny"), seed=3)


def _run(model_dir, out, report_to):
    cfg = TrainConfig(
        model=str(model_dir),
        adapter_path=str(out),
        lora_keys=["q_proj", "v_proj"],
        batch_size=2,
        iters=3,
        warmup_steps=0,
        lr=1e-2,
        eval_every=2,
        steps_per_report=1,
        progress=False,
        report_to=report_to,
    )
    train(cfg, train_pairs=random_pairs(8, seed=1), eval_pairs=random_pairs(2, seed=2))
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def _need(package):
    if importlib.util.find_spec(package) is None:
        pytest.skip(f"{package} is not installed (optional: pip install {package})")


def test_tensorboard_event_files_hold_the_logged_metrics(model_dir, tmp_path):
    _need("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util.tensor_util import make_ndarray

    records = _run(model_dir, tmp_path / "run", ["tensorboard"])
    acc = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    acc.Reload()
    for key in ("loss", "kl/chosen", "learning_rate", "eval_loss", "eval_rewards/accuracies"):
        assert acc.SummaryMetadata(key).plugin_data.plugin_name == "scalars"  # TensorBoard's scalar plots
        got = {e.step: float(make_ndarray(e.tensor_proto)) for e in acc.Tensors(key)}
        want = {r["step"]: r[key] for r in records if key in r}
        assert got.keys() == want.keys() and len(want) >= 2, key
        for s in want:
            assert got[s] == pytest.approx(want[s], rel=1e-6, abs=1e-7), (key, s)


def test_wandb_offline_run_in_the_output_folder(model_dir, tmp_path, monkeypatch):
    _need("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")  # never contacts a server
    monkeypatch.setenv("WANDB_SILENT", "true")
    import wandb

    records = _run(model_dir, tmp_path / "run", ["wandb"])
    wandb.teardown()  # waits for wandb's service to write the run file
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    (history,) = runs[0].glob("run-*.wandb")  # what `wandb sync` would upload
    blob = history.read_bytes()
    for r in records:  # every logged value, as wandb's JSON, with its key
        for key in ("loss", "kl/chosen", "eval_loss", "eval_kl/rejected"):
            if key in r:
                assert key.encode() in blob and json.dumps(r[key]).encode() in blob, (key, r["step"])


@pytest.mark.parametrize("target", ["wandb", "tensorboard"])
def test_missing_package_is_one_clear_line(target, tmp_path, monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == target else real(name, *a))
    rc = main(["train", "--data", str(tmp_path / "none.jsonl"), "--report-to", target, "--adapter-path", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert (
        err
        == f"tdpo-mlx train: error: --report-to {target}: the {target} package is not installed; pip install {target}"
    )


def test_unknown_report_target_names_the_choices(tmp_path, capsys):
    assert main(["train", "--report-to", "mlflow", "--adapter-path", str(tmp_path)]) == 2
    assert "--report-to: 'mlflow' is not one of wandb, tensorboard" in capsys.readouterr().err
