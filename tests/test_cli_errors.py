"""`tdpo-mlx`: a user's mistake is one line on stderr and exit 2; --debug shows the traceback."""

import argparse
import json
import pathlib
import re
import subprocess
import sys

import pytest
from huggingface_hub.errors import LocalEntryNotFoundError

import tdpo_mlx.data as data_pkg
import tdpo_mlx.evaluation as ev
from tdpo_mlx import __version__
from tdpo_mlx.cli import build_parser, main


def _run(argv, capsys):
    try:
        rc = main(argv)
    except SystemExit as e:
        rc = e.code
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_data_error_is_one_line_and_debug_shows_the_traceback(tmp_path, capsys):
    (tmp_path / "cfg.yaml").write_text("lora_rank: eight\n")
    rc, _, err = _run(["train", "--config", str(tmp_path / "cfg.yaml")], capsys)
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("tdpo-mlx train: error: ") and "lora_rank: expected an integer, got 'eight'" in err
    rc, _, err = _run(["train", "--config", str(tmp_path / "cfg.yaml"), "--debug"], capsys)
    assert rc == 2 and "Traceback" in err and err.strip().splitlines()[-1].startswith("tdpo-mlx train: error: ")


def test_unknown_option_and_choice_get_did_you_mean(capsys):
    rc, _, err = _run(["train", "--lora-rnk", "4"], capsys)
    assert rc == 2 and err.count("\n") == 1
    assert "unrecognized arguments: --lora-rnk (did you mean --lora-rank" in err
    rc, _, err = _run(["train", "--loss", "tdpo3"], capsys)
    assert rc == 2 and err.count("\n") == 1 and "did you mean tdpo2" in err
    rc, _, err = _run(["trian"], capsys)
    assert rc == 2 and err.count("\n") == 1 and "did you mean train" in err


def test_version(capsys):

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"tdpo-mlx {__version__}"


def test_real_entry_point_prints_one_line(tmp_path):
    f = tmp_path / "bad.json"
    f.write_text(json.dumps({"lr": "fast"}))
    r = subprocess.run(
        [sys.executable, "-m", "tdpo_mlx", "train", "--config", str(f)], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "bad.json: lr: expected a number" in r.stderr


def test_hub_failures_are_one_line_naming_the_hub_id(monkeypatch, capsys):

    def offline(*a, **k):
        raise LocalEntryNotFoundError("Got: ConnectError: [Errno -2] Name or service not known\nmore")

    monkeypatch.setattr(ev, "load_model", offline)
    rc, _, err = _run(["generate", "--model", "someone/some-model", "--prompt", "hi"], capsys)
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "hub could not provide what was asked for --model someone/some-model (LocalEntryNotFoundError: Got" in err
    monkeypatch.setattr(ev, "load_model", lambda *a, **k: 1 / 0)  # a bug keeps its traceback
    with pytest.raises(ZeroDivisionError):
        main(["generate", "--model", "someone/some-model", "--prompt", "hi"])


def test_every_option_a_data_error_names_exists_where_data_is_read():
    """The data errors tell the user to pass --prompt-key, --chat-template, ...: each of those
    options exists on `train` (and, unless it is about training, on `data inspect`)."""

    def options(argv):
        parser = build_parser(only=argv[0])
        for name in argv:
            sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
            parser = sub.choices[name]
        return {s for a in parser._actions for s in a.option_strings}

    text = "".join(p.read_text() for p in pathlib.Path(data_pkg.__file__).parent.glob("*.py"))
    named = set(re.findall(r"--[a-z][a-z-]+", text))
    assert {"--prompt-key", "--chat-template", "--data-format", "--system-key"} <= named
    train, inspect = options(["train"]), options(["data", "inspect"])
    training_only = {"--batch-size", "--eval-data", "--eval-fraction", "--max-eval-pairs"}
    assert named <= train
    assert named - training_only <= inspect


def test_debug_environment_variable_shows_the_traceback(tmp_path, monkeypatch, capsys):
    (tmp_path / "c.yaml").write_text("seed: abc\n")
    monkeypatch.setenv("TDPO_MLX_DEBUG", "1")
    rc, _, err = _run(["train", "--config", str(tmp_path / "c.yaml")], capsys)
    assert rc == 2 and "Traceback" in err and "UserError" in err
    assert (
        err.strip().splitlines()[-1]
        == f"tdpo-mlx train: error: {tmp_path / 'c.yaml'}: seed: expected an integer, got 'abc' (str)"
    )
