"""Every subcommand over a table of bad inputs: exit 2, one line on stderr naming the culprit, no
traceback, nothing new or half-written on disk. Then hypothesis over random config keys, value
types and file bytes: never a traceback."""

import contextlib
import gzip
import io
import json
import os
import subprocess
import sys

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.models import make_model_dir

from tdpo_mlx.cli import COMMANDS, main
from tdpo_mlx.config import field_names

GOOD = [{"prompt": f"the cat {i}", "chosen": " yes good", "rejected": " no bad"} for i in range(3)]


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """A workspace: a tiny model, good and bad data files, configs, prompts, folders."""
    d = tmp_path_factory.mktemp("bad_inputs")
    make_model_dir(d / "model", seed=1)
    w = lambda name, text: (d / name).write_text(text)  # noqa: E731
    w("pairs.jsonl", "".join(json.dumps(r) + "\n" for r in GOOD))
    w("question.jsonl", json.dumps({"question": "q", "chosen": " a", "rejected": " b"}) + "\n")
    (d / "latin1.jsonl").write_bytes(b'{"prompt": "caf\xe9", "chosen": " a", "rejected": " b"}\n')
    w("broken.jsonl", json.dumps(GOOD[0]) + "\n" + '{"prompt": "x", "chosen": \n')
    w("extra.csv", "prompt,chosen,rejected\nq, a, b, c\n")
    w("empty.jsonl", "")
    w("msgs.jsonl", json.dumps({"prompt": "q", "chosen": " a", "rejected": " b"}) + "\n")
    (d / "bad.gz.jsonl.gz").write_bytes(b"not gzip at all")
    for name, text in {
        "lr.yaml": "lr: fast\n",
        "rank.yaml": "lora_rank: eight\n",
        "seed.yaml": "seed: abc\n",
        "bs.yaml": "batch_size: 2.5\n",
        "dora.yaml": "dora: maybe\n",
        "key.yaml": "lora_rnk: 4\n",
        "list.yaml": "- lr\n- 1e-4\n",
        "syntax.yaml": "lr: [1e-4\n",
        "loss.json": '{"loss": "tdpo3"}',
        "quant.yaml": "quantize: 3\n",
        "deep.yaml": "[" * 5000,
    }.items():
        w(name, text)
    (d / "latin1.yaml").write_bytes(b"model: caf\xe9\n")
    w("prompts.txt", "The movie was\nI think\n")
    w("empty.txt", "\n")
    (d / "latin1.txt").write_bytes(b"caf\xe9\n")
    w("not.gguf", "hello")
    w("afile", "x")
    (d / "run").mkdir()
    w("run/metrics.jsonl", '{"step": 1}\n')
    (d / "full").mkdir()
    w("full/x", "x")
    (d / "onlytrain").mkdir()
    w("onlytrain/train.jsonl", "".join(json.dumps(r) + "\n" for r in GOOD))
    (d / "noadapter").mkdir()
    return d


def T(*argv):  # train with the tiny model unless --model is given
    base = ["train", "--no-progress", "--adapter-path", "{d}/out"]
    if "--model" not in argv:
        base += ["--model", "{d}/model"]
    if "--data" not in argv:
        base += ["--data", "{d}/pairs.jsonl"]
    return base + list(argv)


GEN = ["generate", "--model", "{d}/model", "--prompt", "hi"]
EVAL = ["eval", "--model", "{d}/model", "--prompts", "{d}/prompts.txt", "--out", "{d}/evalout"]
EXP = ["export", "--model", "{d}/model", "--out", "{d}/expout"]
INSPECT = ["data", "inspect", "--model", "{d}/model"]

ROWS = [
    # train: paths are checked before anything goes to the hub or a model loads
    (T("--data", "{d}/missing.jsonl"), "data file not found"),
    (T("--data", "{d}/pairs.jsonnl"), "did you mean"),
    (T("--data", "{d}/pairz.jsonl"), "pairs.jsonl?"),
    (T("--model", "{d}/nomodel"), "--model: model not found"),
    (T("--model", "gemma3-27m"), "did you mean gemma3-270m"),
    (T("--model", "{d}/noadapter"), "not a model folder"),
    (T("--eval-data", "{d}/onlytrain"), "has no valid or test split"),
    (T("--chat-template", "{d}/missing.jinja"), "--chat-template"),
    (T("--resume"), "no checkpoint found"),
    (T("--resume", "--overwrite"), "--overwrite and --resume"),
    (["train", "--model", "{d}/model", "--data", "{d}/pairs.jsonl", "--adapter-path", "{d}/run"], "already holds"),
    (["train", "--model", "{d}/model", "--data", "{d}/pairs.jsonl", "--adapter-path", "{d}/afile"], "is a file"),
    (["train", "--model", "{d}/model", "--adapter-path", "{d}/out"], "--data is required"),
    # train: config files, every key converted and checked
    (T("--config", "{d}/lr.yaml"), "lr: expected a number, got 'fast'"),
    (T("--config", "{d}/rank.yaml"), "lora_rank: expected an integer"),
    (T("--config", "{d}/seed.yaml"), "seed: expected an integer"),
    (T("--config", "{d}/bs.yaml"), "batch_size: expected an integer, got 2.5"),
    (T("--config", "{d}/dora.yaml"), "dora: expected true or false"),
    (T("--config", "{d}/key.yaml"), "did you mean lora_rank"),
    (T("--config", "{d}/list.yaml"), "must be a mapping"),
    (T("--config", "{d}/syntax.yaml"), "not valid YAML"),
    (T("--config", "{d}/loss.json"), "loss: 'tdpo3' is not one of"),
    (T("--config", "{d}/quant.yaml"), "quantize: 3 is not one of 4, 8"),
    (T("--config", "{d}/latin1.yaml"), "not UTF-8"),
    (T("--config", "{d}/missing.yaml"), "config file not found"),
    (T("--config", "{d}/deep.yaml"), "nested too deeply"),
    # train: options
    (T("--lora-rnk", "4"), "did you mean --lora-rank"),
    (T("--loss", "tdpo3"), "invalid choice"),
    (T("--iters", "2.5"), "--iters: invalid int value"),
    (T("--lr", "-1"), "--lr: must be > 0"),
    (T("--max-prompt-length", "600"), "--max-prompt-length"),
    (T("--lora-dropout", "1.5"), "--lora-dropout"),
    # train: data read with the tiny model's tokenizer
    (T("--data", "{d}/question.jsonl"), "--prompt-key question"),
    (T("--data", "{d}/latin1.jsonl"), "latin1.jsonl:1: not UTF-8"),
    (T("--data", "{d}/broken.jsonl"), "broken.jsonl:2: malformed JSON"),
    (T("--data", "{d}/extra.csv"), "extra.csv:2: more fields"),
    (T("--data", "{d}/empty.jsonl"), "no records"),
    (T("--data", "{d}/bad.gz.jsonl.gz"), "cannot read the file"),
    (T("--data", "{d}/msgs.jsonl", "--data-format", "conversational"), "needs a chat template"),
    (T("--batch-size", "8", "--eval-fraction", "0"), "lower --batch-size"),
    (T("--prompt-key", "question", "--data", "{d}/pairs.jsonl"), "no 'question' key"),
    # data
    (["data"], "choose an action"),
    (INSPECT + ["--data", "{d}/missing.jsonl"], "data file not found"),
    (["data", "inspect", "--model", "{d}/nomodel", "--data", "{d}/pairs.jsonl"], "model not found"),
    (INSPECT + ["--data", "{d}/pairs.jsonl", "--data-format", "xml"], "invalid choice"),
    (INSPECT + ["--data", "{d}/pairs.jsonl", "--max-prompt-length", "0"], "max_prompt_length"),
    (INSPECT + ["--data", "{d}/question.jsonl"], "--prompt-key question"),
    # generate
    (GEN + ["--adapter-path", "{d}/nope"], "--adapter-path: adapter folder not found"),
    (GEN + ["--adapter-path", "{d}/noadapter"], "has no adapter_config.json"),
    (["generate", "--model", "{d}/model", "--prompt-file", "{d}/missing.txt"], "--prompt-file: prompt file not found"),
    (["generate", "--model", "{d}/model", "--prompt-file", "{d}/latin1.txt"], "not UTF-8"),
    (GEN + ["--num-samples", "0"], "--num-samples: expected an integer >= 1"),
    (GEN + ["--top-p", "2"], "--top-p"),
    (["generate", "--model", "{d}/mdl", "--prompt", "hi"], "did you mean"),
    (["generate", "--model", "{d}/model"], "one of the arguments --prompt --prompt-file is required"),
    # eval
    (EVAL + ["--reward", "nosuch"], "reward"),
    (["eval", "--model", "{d}/model", "--prompts", "{d}/empty.txt", "--out", "{d}/e"], "the file is empty"),
    (["eval", "--model", "{d}/model", "--prompts", "{d}/prompts.txt", "--out", "{d}/afile"], "is a file"),
    # export
    (EXP + ["--to", "peft"], "--to peft needs --adapter-path"),
    (EXP + ["--to", "onnx"], "invalid choice"),
    (EXP[:-1] + ["{d}/full", "--to", "hf"], "not empty"),
    (EXP + ["--to", "hf", "--adapter-path", "{d}/noadapter"], "has no adapter_config.json"),
    (EXP + ["--to", "hf", "--max-shard-size", "5XB"], "--max-shard-size"),
    (["export", "--model", "gemma3-27m", "--to", "hf", "--out", "{d}/x"], "did you mean gemma3-270m"),
    # import-gguf
    (["import-gguf", "{d}/missing.gguf", "--out", "{d}/imp"], "not found"),
    (["import-gguf", "{d}/not.gguf", "--out", "{d}/imp"], "not a GGUF file"),
    (["import-gguf", "gemma3-27m", "--out", "{d}/imp"], "did you mean gemma3-270m"),
    (["import-gguf", "{d}/not.gguf", "--out", "{d}/full"], "--force"),
    # demo, doctor, top level
    (["demo", "--iters", "0"], "--iters"),
    (["demo", "--out", "{d}/afile"], "is a file"),
    (["doctor", "--size", "0"], "--size"),
    ([], "choose a command"),
    (["trian"], "did you mean train"),
]


def _listing(d):
    return sorted(
        (str(p.relative_to(d)), p.stat().st_size if p.is_file() else -1) for p in d.rglob("*") if "model" not in p.parts
    )


def _call(argv):
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            rc = main(argv)
        except SystemExit as e:
            rc = e.code
    return rc, out.getvalue(), err.getvalue()


def test_the_table_has_every_subcommand():

    assert len(ROWS) >= 40
    assert set(COMMANDS) <= {argv[0] for argv, _ in ROWS if argv}


@pytest.mark.parametrize("argv,culprit", ROWS, ids=[f"{i}-{' '.join(a[:1])}" for i, (a, _) in enumerate(ROWS)])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(ws, argv, culprit):
    before = _listing(ws)
    rc, _, err = _call([a.format(d=ws) for a in argv])
    lines = [x for x in err.splitlines() if x.strip()]
    assert rc == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("tdpo-mlx") and ": error: " in lines[0], err
    assert culprit in lines[0], err
    assert _listing(ws) == before  # nothing new, nothing half-written


@pytest.mark.parametrize(
    "argv,culprit",
    [
        (["train", "--config", "{d}/rank.yaml"], "lora_rank: expected an integer"),
        (["data", "inspect", "--model", "{d}/model", "--data", "{d}/question.jsonl"], "--prompt-key question"),
        (["import-gguf", "{d}/not.gguf", "--out", "{d}/imp"], "not a GGUF file"),
    ],
)
def test_the_real_entry_point(ws, argv, culprit):
    r = subprocess.run(
        [sys.executable, "-m", "tdpo_mlx", *[a.format(d=ws) for a in argv]],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TDPO_MLX_DEBUG": ""},
    )
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert r.returncode == 2 and len(lines) == 1 and culprit in lines[0] and "Traceback" not in r.stderr, r.stderr


# ----------------------------------------------------------------------------- hypothesis

VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**12), 10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["yes", "no", "on", "off", "1e-4", "eight", "latest", "tdpo3", "", "2.5", "-1", "0"]),
    st.lists(st.one_of(st.text(max_size=6), st.integers()), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)
KEYS = st.one_of(st.sampled_from(field_names()), st.text(min_size=1, max_size=12))


def _no_traceback(rc, err):
    lines = [x for x in err.splitlines() if x.strip()]
    assert "Traceback" not in err, err
    assert rc == 2 and len(lines) == 1 and ": error: " in lines[0], err


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(cfg=st.dictionaries(KEYS, VALUES, max_size=4), as_json=st.booleans())
def test_random_config_files_never_give_a_traceback(ws, cfg, as_json):
    f = ws / ("h.json" if as_json else "h.yaml")
    f.write_text(json.dumps(cfg, default=str) if as_json else yaml.safe_dump(cfg, allow_unicode=True))
    # a config that passes every check still stops at the missing data file, before any model loads
    rc, _, err = _call(
        ["train", "--config", str(f), "--model", str(ws / "model"), "--data", str(ws / "gone.jsonl"), "--no-progress"]
    )
    _no_traceback(rc, err)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    data=st.one_of(
        st.binary(max_size=200),
        st.lists(st.one_of(st.binary(max_size=30), st.sampled_from([b"{", b"}", b'"prompt":', b"\n", b"[", b","]))).map(
            b"".join
        ),
    ),
    suffix=st.sampled_from([".jsonl", ".json", ".csv", ".jsonl.gz", ".parquet", ".yaml"]),
)
def test_random_file_bytes_never_give_a_traceback(ws, data, suffix):
    f = ws / f"h{suffix}"
    f.write_bytes(gzip.compress(data) if suffix == ".jsonl.gz" and data[:1] == b"{" else data)
    if suffix == ".yaml":
        argv = ["train", "--config", str(f), "--model", str(ws / "model"), "--data", str(ws / "gone.jsonl")]
    else:
        argv = ["data", "inspect", "--model", str(ws / "model"), "--data", str(f), "-n", "0"]
    rc, _, err = _call(argv)
    if rc != 0:
        _no_traceback(rc, err)
