"""`tdpo-mlx train`: options = TrainConfig fields, config file < command line, end-to-end run."""

import dataclasses
import json
import math
import random
import re

import pytest
from support.models import make_model_dir

from tdpo_mlx.cli import build_parser, main
from tdpo_mlx.cli.train import config_from_args
from tdpo_mlx.config import TrainConfig

ISSUE_OPTIONS = [
    "--model",
    "--data",
    "--loss",
    "--beta",
    "--alpha",
    "--ref-model",
    "--lora-rank",
    "--lora-alpha",
    "--lora-dropout",
    "--lora-layers",
    "--lora-keys",
    "--dora",
    "--quantize",
    "--optimizer",
    "--lr",
    "--warmup-steps",
    "--lr-schedule",
    "--batch-size",
    "--grad-accum",
    "--max-grad-norm",
    "--iters",
    "--epochs",
    "--eval-every",
    "--save-every",
    "--adapter-path",
    "--resume",
    "--seed",
    "--max-length",
    "--max-prompt-length",
    "--truncation-mode",
    "--config",
]


def _parse(argv):
    return build_parser(only="train").parse_args(["train", *argv])


def test_help_lists_every_option_with_its_default(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    flat = " ".join(text.split())
    for opt in ISSUE_OPTIONS:
        assert opt in text, opt
    for f in dataclasses.fields(TrainConfig):
        assert "--" + f.name.replace("_", "-") in text
    with_default = [f for f in dataclasses.fields(TrainConfig) if f.default is not None]
    assert flat.count("(default:") == len(with_default)  # each shown once; None ones say what happens
    assert "(default: None)" not in flat and "min(150, 10% of the run's steps)" in flat
    # each option's own help block shows its field's default (the values themselves: test_paper_defaults)
    blocks = {
        b.split()[0].rstrip(","): " ".join(b.split()) for b in re.split(r"\n(?=  -)", text) if b.startswith("  -")
    }
    for f in with_default:
        shown = " ".join(f.default) if isinstance(f.default, list) else f.default
        option = "--" + f.name.replace("_", "-")
        assert f"(default: {shown})" in blocks[option], (option, blocks[option])


def test_paper_defaults():
    c = TrainConfig()
    assert (c.beta, c.alpha, c.optimizer, c.max_length, c.max_prompt_length, c.max_grad_norm) == (
        0.1,
        0.5,
        "rmsprop",
        512,
        256,
        10.0,
    )
    # the paper's 150 warm-up steps, capped at 10% of a short run's steps unless set
    assert c.warmup_steps is None
    assert [c.warmup_for(n) for n in (3, 12, 30, 1000, 1500, 5000)] == [0, 1, 3, 100, 150, 150]
    assert TrainConfig(warmup_steps=40).warmup_for(3) == 40


def test_config_file_then_command_line_overrides(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text(
        "model: /m\nlora-rank: 16\nlr_schedule: cosine\nbeta: 0.2\nlora_keys: [q_proj, v_proj]\n"
        "dora: true\nresume: true\n"
    )
    c = config_from_args(_parse(["--config", str(f), "--beta", "0.05", "--no-dora", "--iters", "3"]))
    assert (c.model, c.lora_rank, c.lr_schedule) == ("/m", 16, "cosine")  # from the file
    assert (c.beta, c.dora, c.iters) == (0.05, False, 3)  # command line wins
    assert c.lora_keys == ["q_proj", "v_proj"] and c.resume == "latest"
    assert c.alpha == 0.5  # untouched default
    c2 = config_from_args(_parse(["--lora-keys", "self_attn.q_proj", "self_attn.v_proj", "--resume"]))
    assert c2.lora_keys == ["self_attn.q_proj", "self_attn.v_proj"] and c2.resume == "latest"


def test_config_file_errors_name_the_file_and_key(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("lora_rnk: 4\n")
    with pytest.raises(ValueError, match=r"bad.yaml: unknown option 'lora_rnk' \(did you mean lora_rank"):
        config_from_args(_parse(["--config", str(f)]))
    assert main(["train", "--config", str(f)]) == 2
    with pytest.raises(ValueError, match="--max-prompt-length"):
        config_from_args(_parse(["--max-length", "100", "--max-prompt-length", "200"]))


def test_train_end_to_end_from_the_command_line(tmp_path, capsys):
    model_dir = make_model_dir(tmp_path / "model", seed=9)

    rng = random.Random(0)
    words = ["the", "cat", "dog", "sat", "ran", "on", "mat", "good", "bad", "yes", "no", "fine", "great"]
    with open(tmp_path / "pairs.jsonl", "w") as fh:
        for _ in range(24):
            fh.write(
                json.dumps(
                    {
                        "prompt": " ".join(rng.choices(words, k=4)),
                        "chosen": " " + " ".join(rng.choices(words, k=3)),
                        "rejected": " " + " ".join(rng.choices(words, k=2)),
                    }
                )
                + "\n"
            )
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        f"model: {model_dir}\ndata: {tmp_path / 'pairs.jsonl'}\nloss: tdpo1\niters: 50\n"
        f"batch-size: 2\nwarmup-steps: 1\nlr: 0.005\neval_fraction: 0.25\nprogress: false\n"
    )
    out = tmp_path / "adapters"
    rc = main(
        [
            "train",
            "--config",
            str(cfg),
            "--iters",
            "3",
            "--eval-every",
            "2",
            "--steps-per-report",
            "1",
            "--adapter-path",
            str(out),
            "--lora-keys",
            "q_proj",
            "v_proj",
        ]
    )
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "done: 3 steps" in text and "step 3/3 | loss" in text
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs if "eval_loss" in r] == [0, 2, 3]
    assert [r["step"] for r in recs if "loss" in r] == [1, 2, 3]
    assert abs(recs[0]["eval_loss"] - math.log(2)) < 1e-6
    cfg_json = json.loads((out / "adapter_config.json").read_text())
    assert cfg_json["tdpo"]["loss"] == "tdpo1" and cfg_json["train_config"]["iters"] == 3
    assert cfg_json["lora_parameters"]["keys"] == ["self_attn.q_proj", "self_attn.v_proj"]
    # resume past the end with more iterations continues at step 4
    rc = main(
        [
            "train",
            "--config",
            str(cfg),
            "--iters",
            "4",
            "--adapter-path",
            str(out),
            "--resume",
            "--lora-keys",
            "q_proj",
            "v_proj",
            "--steps-per-report",
            "1",
        ]
    )
    text = capsys.readouterr().out
    assert rc == 0 and "resumed from" in text and "step 4/4" in text
