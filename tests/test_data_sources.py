"""Preference data sources, format detection, key mapping and bad-input errors."""

import csv
import gzip
import json

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from support.chat_tokenizers import CHATML, chatml_tokenizer, plain_tokenizer

from tdpo_mlx.data import DataError, load_preference_data

ROWS = [
    {"prompt": "What is 2+2?", "chosen": " 4.", "rejected": " 5."},
    {"prompt": "Hello", "chosen": " Hello world!", "rejected": " No."},
    {"prompt": "Question", "chosen": " Completed answer", "rejected": " Wrong", "system": "Be brief."},
]


def ids(pairs):
    return [(p.prompt_ids, p.chosen_ids, p.rejected_ids, p.index) for p in pairs]


def write(path, rows):
    name = path.name
    if name.endswith(".jsonl.gz"):
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    elif name.endswith(".jsonl"):
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif name.endswith(".json"):
        path.write_text(json.dumps(rows))
    elif name.endswith(".parquet"):
        pq.write_table(pa.Table.from_pylist(rows), path)
    elif name.endswith(".csv"):
        keys = sorted({k for r in rows for k in r})
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, keys)
            w.writeheader()
            w.writerows(rows)
    return path


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz", ".json", ".parquet", ".csv"])
def test_every_file_type_gives_the_same_pairs(tmp_path, suffix):
    tok = plain_tokenizer()
    want, _ = load_preference_data(ROWS, tokenizer=tok)
    # every row carries every column (parquet takes its schema from the rows, csv from the header)
    rows = [dict(r, system=r.get("system", "" if suffix == ".csv" else None)) for r in ROWS]
    got, s = load_preference_data(write(tmp_path / f"d{suffix}", rows), tokenizer=tok)
    assert ids(got) == ids(want) and s.kept == 3 and s.records == 3 and s.data_format == "standard"


def test_jsonl_saved_as_json_and_split_object(tmp_path):
    tok = plain_tokenizer()
    want, _ = load_preference_data(ROWS, tokenizer=tok)
    p = tmp_path / "lines.json"
    p.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    assert ids(load_preference_data(p, tokenizer=tok)[0]) == ids(want)
    q = tmp_path / "splits.json"
    q.write_text(json.dumps({"train": ROWS, "test": ROWS[:1]}))
    assert ids(load_preference_data(q, tokenizer=tok, split="train")[0]) == ids(want)
    assert len(load_preference_data(q, tokenizer=tok, split="test")[0]) == 1
    # a single file is never handed back as another split (eval on training data)
    with pytest.raises(FileNotFoundError, match="single file and has no 'valid' split"):
        load_preference_data(p, tokenizer=tok, split="valid")
    assert len(load_preference_data(p, tokenizer=tok, split=None)[0]) == 3


@pytest.mark.parametrize(
    "split,alias",
    [
        ("train", "train"),
        ("valid", "valid"),
        ("validation", "valid"),
        ("eval", "valid"),
        ("valid", "validation"),
        ("test", "test"),
    ],
)
def test_directory_split_files(tmp_path, split, alias):
    tok = plain_tokenizer()
    sizes = {"train": 3, "test": 1}
    sizes[alias] = 2
    for name, n in sizes.items():
        write(tmp_path / f"{name}.jsonl", ROWS[:n])
    pairs, s = load_preference_data(tmp_path, tokenizer=tok, split=split)
    assert len(pairs) == sizes["test" if split == "test" else "train" if split == "train" else alias]
    assert s.source.endswith(".jsonl")


def test_directory_with_data_subfolder_and_missing_split(tmp_path):
    tok = plain_tokenizer()
    (tmp_path / "data").mkdir()
    write(tmp_path / "data" / "train.parquet", ROWS)
    assert len(load_preference_data(tmp_path, tokenizer=tok)[0]) == 3
    with pytest.raises(FileNotFoundError, match=r"no 'valid' file.*valid/validation/eval"):
        load_preference_data(tmp_path, tokenizer=tok, split="valid")


def test_saved_dataset_dict_folder(tmp_path):

    tok = plain_tokenizer()
    dd = datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(ROWS), "validation": datasets.Dataset.from_list(ROWS[:2])}
    )
    dd.save_to_disk(str(tmp_path / "ds"))
    assert len(load_preference_data(tmp_path / "ds", tokenizer=tok, split="valid")[0]) == 2
    assert len(load_preference_data(datasets.Dataset.from_list(ROWS), tokenizer=tok)[0]) == 3


def test_hub_dataset_id_through_load_dataset(monkeypatch):

    calls = []

    def fake_load_dataset(name, split=None, **kw):
        calls.append((name, split))
        if split != "validation":
            raise ValueError(f"Unknown split \"{split}\". Should be one of ['train', 'validation'].")
        return datasets.Dataset.from_list(ROWS[:2])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    pairs, s = load_preference_data("someone/prefs", tokenizer=plain_tokenizer(), split="valid")
    assert len(load_preference_data("org/data-2.5", tokenizer=plain_tokenizer(), split="validation")[0]) == 2
    calls.remove(("org/data-2.5", "validation"))
    assert len(pairs) == 2 and calls == [("someone/prefs", "valid"), ("someone/prefs", "validation")]
    assert s.source == "someone/prefs[validation]"
    calls.clear()
    with pytest.raises(DataError, match="no split 'test'"):
        load_preference_data("someone/prefs", tokenizer=plain_tokenizer(), split="test")


def test_missing_local_file_is_not_sent_to_the_hub(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_preference_data(tmp_path / "nope.jsonl", tokenizer=plain_tokenizer())
    for missing in ("./missing_dir", "data/sub/dir"):
        with pytest.raises(FileNotFoundError):
            load_preference_data(missing, tokenizer=plain_tokenizer())


# ----------------------------------------------------------------------------- bad input


def test_malformed_jsonl_line_names_file_and_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text(json.dumps(ROWS[0]) + "\n\n" + '{"prompt": "x", "chosen": ' + "\n")
    with pytest.raises(DataError, match=r"bad\.jsonl:3: malformed JSON"):
        load_preference_data(p, tokenizer=plain_tokenizer())
    p.write_text(json.dumps(ROWS[0]) + "\n[1, 2]\n")
    with pytest.raises(DataError, match=r"bad\.jsonl:2: expected a JSON object"):
        load_preference_data(p, tokenizer=plain_tokenizer())


def test_malformed_json_and_csv(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text('[\n{"prompt": "x",\n "chosen" "y"}\n]')
    with pytest.raises(DataError, match=r"bad\.json:3: malformed JSON"):
        load_preference_data(p, tokenizer=plain_tokenizer())
    q = tmp_path / "bad.csv"
    q.write_text("prompt,chosen,rejected\nQ, a, b\nQ, a, b, extra\n")
    with pytest.raises(DataError, match=r"bad\.csv:3: more fields"):
        load_preference_data(q, tokenizer=plain_tokenizer())


def test_missing_key_lists_keys_and_the_option(tmp_path):
    p = write(tmp_path / "d.jsonl", [{"question": "Q", "good": " a", "bad": " b"}])
    with pytest.raises(
        DataError,
        match=r"d\.jsonl:1 \(record 0\): record has no 'chosen' key.*"
        r"\['bad', 'good', 'question'\].*--chosen-key",
    ):
        load_preference_data(p, tokenizer=plain_tokenizer())
    pairs, s = load_preference_data(
        p, tokenizer=plain_tokenizer(), prompt_key="question", chosen_key="good", rejected_key="bad"
    )
    assert s.data_format == "standard" and len(pairs) == 1
    # a later record missing the key is named too
    q = write(tmp_path / "e.jsonl", ROWS[:2] + [{"prompt": "Q", "chosen": " a"}])
    with pytest.raises(DataError, match=r"e\.jsonl:3 \(record 2\).*'rejected'.*--rejected-key"):
        load_preference_data(q, tokenizer=plain_tokenizer())


def test_wrong_value_types_are_named():
    with pytest.raises(DataError, match=r"record 0.*'chosen' must be a string.*got int"):
        load_preference_data([{"prompt": "Q", "chosen": 3, "rejected": " b"}], tokenizer=plain_tokenizer())
    with pytest.raises(DataError, match=r"record 0.*message 0 needs 'role' and 'content'"):
        load_preference_data(
            [{"prompt": [{"text": "Q"}], "chosen": " a", "rejected": " b"}], tokenizer=chatml_tokenizer()
        )
    with pytest.raises(ValueError, match="--data-format: unknown format .xml."):
        load_preference_data(ROWS, tokenizer=plain_tokenizer(), data_format="xml")


def test_no_pair_kept_is_an_error():
    with pytest.raises(DataError, match=r"no pair kept out of 1 records.*empty_response"):
        load_preference_data([{"prompt": "Q", "chosen": "", "rejected": " b"}], tokenizer=plain_tokenizer())


# ----------------------------------------------------------------------------- formats


def test_format_detection_and_override():
    tok = chatml_tokenizer()
    conv = {
        "prompt": [{"role": "user", "content": "Q"}],
        "chosen": [{"role": "assistant", "content": "a"}],
        "rejected": [{"role": "assistant", "content": "b"}],
    }
    whole = {
        "chosen": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "a"}],
        "rejected": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "b"}],
    }
    std = {"prompt": "Q", "chosen": "a", "rejected": "b"}
    hh = {"chosen": "\n\nHuman: Q\n\nAssistant: a", "rejected": "\n\nHuman: Q\n\nAssistant: b"}
    assert load_preference_data([conv], tokenizer=tok)[1].data_format == "conversational"
    assert load_preference_data([whole], tokenizer=tok)[1].data_format == "conversational"
    assert load_preference_data([std], tokenizer=tok)[1].data_format == "standard"
    assert load_preference_data([hh], tokenizer=tok)[1].data_format == "implicit"
    # conversational, whole conversations and strings-as-chat all give the same ids
    a = ids(load_preference_data([conv], tokenizer=tok)[0])
    assert ids(load_preference_data([whole], tokenizer=tok)[0]) == a
    assert ids(load_preference_data([std], tokenizer=tok, data_format="conversational")[0]) == a
    # implicit forced on a record with a prompt uses only chosen/rejected
    hh_p = dict(hh, prompt="ignored")
    assert ids(load_preference_data([hh_p], tokenizer=tok, data_format="implicit")[0]) == ids(
        load_preference_data([hh], tokenizer=tok)[0]
    )
    with pytest.raises(DataError, match="'prompt' key.*--prompt-key"):
        load_preference_data([hh], tokenizer=tok, data_format="standard")


def test_prompt_repeated_inside_chosen_is_stripped():
    # UltraFeedback-style: prompt string, chosen/rejected whole conversations
    tok = chatml_tokenizer()
    row = {
        "prompt": "Q",
        "chosen": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "a"}],
        "rejected": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "b"}],
    }
    ref = {
        "prompt": [{"role": "user", "content": "Q"}],
        "chosen": [{"role": "assistant", "content": "a"}],
        "rejected": [{"role": "assistant", "content": "b"}],
    }
    pairs, s = load_preference_data([row], tokenizer=tok)
    assert ids(pairs) == ids(load_preference_data([ref], tokenizer=tok)[0])
    assert s.repaired == {"prompt_in_responses": 1} and "repaired" in s.format()
    bad = dict(ref, chosen=[{"role": "assistant", "content": "a"}, {"role": "user", "content": "more"}])
    with pytest.raises(DataError, match="holds a 'user' turn"):
        load_preference_data([bad], tokenizer=tok)


def test_conversational_needs_a_template(tmp_path):
    row = {
        "prompt": [{"role": "user", "content": "Q"}],
        "chosen": [{"role": "assistant", "content": "a"}],
        "rejected": [{"role": "assistant", "content": "b"}],
    }
    with pytest.raises(DataError, match="--chat-template"):
        load_preference_data([row], tokenizer=plain_tokenizer())

    f = tmp_path / "t.jinja"
    f.write_text(CHATML.replace("<|im_start|>", "").replace("<|im_end|>", ""))
    (pair,), _ = load_preference_data([row], tokenizer=plain_tokenizer(), chat_template=str(f))
    tok = plain_tokenizer()
    # no special end token in this template: the reply gets EOS appended once
    assert pair.chosen_ids == tok.encode("a", add_special_tokens=False) + [tok.eos_token_id]
    with pytest.raises(
        FileNotFoundError,
        match=r"--chat-template: chat template file \(.jinja\) not found: .*tt.jinja \(did you mean .*/t.jinja\?\)",
    ):
        load_preference_data([row], tokenizer=tok, chat_template=str(tmp_path / "tt.jinja"))


def test_limit_and_summary_text():
    pairs, s = load_preference_data(ROWS, tokenizer=plain_tokenizer(), limit=2)
    assert len(pairs) == 2 and s.records == 2
    text = s.format()
    assert "records read 2, pairs kept 2, dropped 0" in text and "prompt" in text and "p90" in text
    assert s.prompt_lengths["max"] == max(len(p.prompt_ids) for p in pairs)
    d = json.loads(json.dumps(s.as_dict()))
    assert d["kept"] == 2 and d["dropped"] == {} and d["prompt_lengths"] == s.prompt_lengths


def test_prompt_repeated_inside_string_responses_is_not_scored():
    tok = plain_tokenizer()
    rows = [{"prompt": "What is 2+2?", "chosen": "What is 2+2? 4.", "rejected": "What is 2+2? 5."}, ROWS[1]]
    pairs, s = load_preference_data(rows, tokenizer=tok)
    want, _ = load_preference_data([ROWS[0], ROWS[1]], tokenizer=tok)
    assert ids(pairs) == ids(want) and s.repaired == {"prompt_in_responses": 1}
    # a response that only shares a beginning with the prompt is left alone
    row = {"prompt": "What", "chosen": "What a question", "rejected": "No"}
    (pair,), s = load_preference_data([row], tokenizer=tok)
    assert tok.decode(pair.chosen_ids[:-1]) == "What a question" and s.repaired == {}
