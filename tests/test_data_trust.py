"""Data is never silently misread: format detection, directory splits, data options in train."""

import json

import pytest
from support.chat_tokenizers import plain_tokenizer

from tdpo_mlx.config import TrainConfig
from tdpo_mlx.data import DataError, load_preference_data, load_train_eval


def _write(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _rows(n, tag="t"):
    return [{"prompt": f"Q{tag}{i}", "chosen": f" yes {i}", "rejected": f" no {i}"} for i in range(n)]


@pytest.mark.parametrize(
    "row, culprit",
    [
        ({"question": "Why?", "chosen": " yes", "rejected": " no"}, "--prompt-key question"),
        ({"instruction": "Do", "chosen": " yes", "rejected": " no", "id": 3}, "--prompt-key instruction"),
        ({"chosen": " yes", "rejected": " no", "source": "web"}, "it also has ['source']"),
        ({"query": "x", "good": " yes", "bad": " no"}, "no 'chosen' key (and no 'prompt')"),
        ({"chosen": " yes"}, "no 'rejected' key"),
    ],
)
def test_unknown_text_keys_are_an_error_not_the_hh_format(tmp_path, row, culprit):
    f = _write(tmp_path / "d.jsonl", [row])
    with pytest.raises(DataError) as e:
        load_preference_data(f, tokenizer=plain_tokenizer())
    msg = str(e.value)
    assert culprit in msg and f"{f}:1 (record 0)" in msg and "keys found: " in msg and "--prompt-key" in msg


def test_the_mapping_option_fixes_it_and_keeps_the_question(tmp_path):
    tok = plain_tokenizer()
    rows = [{"question": f"Why {i}?", "chosen": " yes", "rejected": " no"} for i in range(8)]
    f = _write(tmp_path / "d.jsonl", rows)
    pairs, s = load_preference_data(f, tokenizer=tok, prompt_key="question")
    assert s.data_format == "standard" and s.kept == 8
    assert [tok.decode(p.prompt_ids) for p in pairs] == [r["question"] for r in rows]


def test_hh_shape_only_and_each_record_checked(tmp_path):
    tok = plain_tokenizer()
    hh = {"chosen": "\n\nHuman: hi\n\nAssistant: yes", "rejected": "\n\nHuman: hi\n\nAssistant: no", "id": 7}
    pairs, s = load_preference_data([hh], tokenizer=tok)
    assert s.data_format == "implicit" and tok.decode(pairs[0].prompt_ids) == "\n\nHuman: hi\n\nAssistant:"
    with pytest.raises(DataError, match=r"\(record 1\): record has no 'prompt' key .* \['note'\]"):
        load_preference_data([hh, {**hh, "note": "extra"}], tokenizer=tok)
    # asked for explicitly, the other keys are ignored
    assert load_preference_data([{**hh, "note": "x"}], tokenizer=tok, data_format="implicit")[1].kept == 1


def _cfg(**kw):
    return TrainConfig(**{"max_length": 64, "max_prompt_length": 32, "eval_fraction": 0.25, **kw})


def test_directory_with_valid_or_test_evaluates_on_it(tmp_path):
    tok = plain_tokenizer()
    d = tmp_path / "d"
    _write(d / "train.jsonl", _rows(8, "t"))
    _write(d / "valid.jsonl", _rows(3, "v"))
    _write(d / "test.jsonl", _rows(2, "x"))
    tr, ev = load_train_eval(_cfg(data=str(d)), tok, log=lambda _: None)
    assert len(tr) == 8 and [tok.decode(p.prompt_ids) for p in ev] == ["Qv0", "Qv1", "Qv2"]
    (d / "valid.jsonl").unlink()
    tr, ev = load_train_eval(_cfg(data=str(d)), tok, log=lambda _: None)
    assert len(tr) == 8 and [tok.decode(p.prompt_ids) for p in ev] == ["Qx0", "Qx1"]
    (d / "test.jsonl").unlink()
    tr, ev = load_train_eval(_cfg(data=str(d)), tok, log=lambda _: None)  # train only: a held-out fraction
    assert (len(tr), len(ev)) == (6, 2) and all(tok.decode(p.prompt_ids).startswith("Qt") for p in tr + ev)


def test_eval_data_directory_never_uses_its_train_split(tmp_path):
    tok = plain_tokenizer()
    f = _write(tmp_path / "train.jsonl", _rows(4, "t"))
    e = tmp_path / "e"
    _write(e / "train.jsonl", _rows(5, "w"))
    _write(e / "valid.jsonl", _rows(2, "v"))
    tr, ev = load_train_eval(_cfg(data=str(f), eval_data=str(e)), tok, log=lambda _: None)
    assert len(tr) == 4 and [tok.decode(p.prompt_ids) for p in ev] == ["Qv0", "Qv1"]
    (e / "valid.jsonl").unlink()
    with pytest.raises(ValueError, match=r"--eval-data .*e: has no valid or test split"):
        load_train_eval(_cfg(data=str(f), eval_data=str(e)), tok, log=lambda _: None)
    tr, ev = load_train_eval(_cfg(data=str(f), eval_data=str(e / "train.jsonl")), tok, log=lambda _: None)
    assert len(ev) == 5  # a file is evaluated whole


def test_train_config_data_options_reach_the_loader(tmp_path):
    tok = plain_tokenizer()
    rows = [{"q": f"Q{i}", "good": " yes", "bad": " no", "sys": "Be brief."} for i in range(4)]
    f = _write(tmp_path / "d.jsonl", rows)
    cfg = _cfg(data=str(f), prompt_key="q", chosen_key="good", rejected_key="bad", system_key="sys", eval_fraction=0)
    tr, ev = load_train_eval(cfg, tok, log=lambda _: None)
    assert [tok.decode(p.prompt_ids) for p in tr] == [f"Be brief.\n\nQ{i}" for i in range(4)] and ev == []
    with pytest.raises(DataError, match="conversational data needs a chat template"):
        load_train_eval(_cfg(data=str(f), data_format="conversational", prompt_key="q"), tok, log=lambda _: None)
