"""`tdpo-mlx train` trusts the checkpoint on resume, refuses to clobber a run, leaves no empty folder."""

import json
import random

import pytest
from support.models import make_model_dir

from tdpo_mlx.cli import main

WORDS = ["the", "cat", "dog", "sat", "ran", "on", "mat", "good", "bad", "yes", "no", "fine", "great"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("train_trust")
    model = make_model_dir(tmp / "model", seed=3)
    rng = random.Random(0)
    data = tmp / "pairs.jsonl"
    rows = [
        {
            "prompt": " ".join(rng.choices(WORDS, k=4)),
            "chosen": " " + " ".join(rng.choices(WORDS, k=3)),
            "rejected": " " + " ".join(rng.choices(WORDS, k=2)),
        }
        for _ in range(12)
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return model, data


def _train(setup, out, *extra):
    model, data = setup
    base = ["train", "--model", str(model), "--data", str(data), "--adapter-path", str(out), "--batch-size", "2"]
    base += ["--no-progress", "--eval-every", "0", "--lora-keys", "q_proj", "v_proj", "--max-eval-pairs", "2"]
    try:
        return main(base + list(extra))
    except SystemExit as e:
        return e.code


def _scale(out):
    return json.loads((out / "adapter_config.json").read_text())["lora_parameters"]["scale"]


def test_resume_takes_the_checkpoints_alpha_and_refuses_a_conflicting_one(setup, tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(setup, out, "--iters", "2", "--lora-alpha", "48", "--lora-rank", "4") == 0
    assert _scale(out) == 12.0  # 48 / 4
    capsys.readouterr()
    # resuming without repeating --lora-alpha / --lora-rank keeps the checkpoint's adapters (scale 12, not 16/8)
    assert _train(setup, out, "--iters", "3", "--resume") == 0
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["lora_parameters"]["scale"] == 12.0 and cfg["lora_parameters"]["rank"] == 4
    assert cfg["train_config"]["lora_alpha"] == 48.0 and "step 3/3" in capsys.readouterr().out
    # a conflicting value is an error naming both values
    assert _train(setup, out, "--iters", "4", "--resume", "--lora-alpha", "16") == 2
    err = capsys.readouterr().err
    assert (
        err.count("\n") == 1 and "--lora-alpha 16.0 conflicts with the checkpoint" in err and "--lora-alpha 48.0" in err
    )
    assert _train(setup, out, "--iters", "4", "--resume", "--dora") == 2
    assert "--dora True conflicts" in capsys.readouterr().err
    other = make_model_dir(tmp_path / "other", seed=4)
    assert _train((other, setup[1]), out, "--iters", "4", "--resume") == 2
    assert f"--model {other} conflicts with the checkpoint" in capsys.readouterr().err


def test_an_existing_run_is_not_overwritten_without_resume_or_overwrite(setup, tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(setup, out, "--iters", "1") == 0
    metrics = (out / "metrics.jsonl").read_text()
    capsys.readouterr()
    assert _train(setup, out, "--iters", "1") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already holds a run" in err and "--resume" in err and "--overwrite" in err
    assert (out / "metrics.jsonl").read_text() == metrics
    assert _train(setup, out, "--iters", "2", "--overwrite", "--steps-per-report", "1") == 0
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs if "loss" in r] == [1, 2]  # started over at step 1


def test_a_failed_run_leaves_no_empty_folder(setup, tmp_path, capsys):
    model, _ = setup
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "chosen": " a", "rejected": " b"}\n')
    out = tmp_path / "new"
    rc = main(["train", "--model", str(model), "--data", str(bad), "--adapter-path", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "--prompt-key question" in err
    assert not out.exists()


def test_chat_data_trains_from_the_command_line_with_a_template_file(setup, tmp_path, capsys):
    """Conversational data and a model without a chat template: --chat-template FILE (the option
    the data error points to) exists on train and reaches the loader."""
    model, _ = setup
    rows = [
        {
            "prompt": [{"role": "user", "content": w + " is good"}],
            "chosen": [{"role": "assistant", "content": "yes"}],
            "rejected": [{"role": "assistant", "content": "no"}],
        }
        for w in ("the cat", "the dog", "a mat", "what", "how", "why")
    ]
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tpl = tmp_path / "t.jinja"
    tpl.write_text("{% for m in messages %}{{ m['role'] }} {{ m['content'] }} {% endfor %}")
    args = ["train", "--model", str(model), "--data", str(data), "--iters", "1", "--batch-size", "2", "--no-progress"]
    assert main(args + ["--adapter-path", str(tmp_path / "a")]) == 2
    assert "needs a chat template" in capsys.readouterr().err and not (tmp_path / "a").exists()
    assert main(args + ["--adapter-path", str(tmp_path / "b"), "--chat-template", str(tpl)]) == 0
    assert "format=conversational" in capsys.readouterr().out


def test_default_warmup_lets_a_short_run_reach_its_lr():
    from tdpo_mlx.config import TrainConfig
    from tdpo_mlx.trainer import build_optimizer

    for iters, first_full in ((3, 0), (12, 1), (30, 3)):
        sched = build_optimizer(TrainConfig(lr=1e-3, iters=iters), iters)._schedulers["learning_rate"]
        got = [float(sched(s)) for s in range(iters)]
        # warm-up min(150, 10%) = 0, 1, 3 steps: full lr from then on (with 150 it would stay < lr / 37)
        assert got[first_full:] == pytest.approx([1e-3] * (iters - first_full)), (iters, got)
        assert all(g < 1e-3 for g in got[:first_full])
    # set explicitly, the paper's 150 stands: 3 steps stay at lr * (s + 1) / 151
    opt = build_optimizer(TrainConfig(lr=1e-3, iters=3, warmup_steps=150), 3)
    assert float(opt._schedulers["learning_rate"](2)) == pytest.approx(1e-3 * 3 / 151)


def test_python_api_resume_takes_the_checkpoints_alpha(setup, tmp_path):
    from tdpo_mlx.config import TrainConfig
    from tdpo_mlx.errors import UserError
    from tdpo_mlx.trainer import train

    model, data = setup
    kw = dict(model=str(model), data=str(data), adapter_path=str(tmp_path / "api"), batch_size=2, progress=False)
    train(TrainConfig(**kw, iters=2, lora_alpha=48.0, lora_rank=4, lora_keys=["q_proj"]))
    train(TrainConfig(**kw, iters=3, resume="latest"))
    assert _scale(tmp_path / "api") == 12.0
    with pytest.raises(UserError, match=r"--lora-alpha 20.0 conflicts .* --lora-alpha 48.0"):
        train(TrainConfig(**kw, iters=4, resume="latest", lora_alpha=20.0))
