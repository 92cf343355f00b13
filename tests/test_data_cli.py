"""``tdpo-mlx data inspect`` on a locally built tokenizer."""

import json

from support.chat_tokenizers import chatml_tokenizer, plain_tokenizer

from tdpo_mlx.cli import main
from tdpo_mlx.data import load_preference_data


def test_inspect_marks_the_scored_spans(tmp_path, capsys):
    tok = plain_tokenizer()
    tok.save_pretrained(tmp_path / "tok")
    rows = [
        {"prompt": "What is 2+2?", "chosen": " 4.", "rejected": " 5."},
        {"prompt": "Hello", "chosen": " Hello world!", "rejected": ""},
    ]
    f = tmp_path / "d.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["data", "inspect", "--data", str(f), "--model", str(tmp_path / "tok"), "-n", "5", "--show-ids"]) == 0
    out = capsys.readouterr().out
    assert "--- chosen ---\nWhat is 2+2?[[ 4.</s>]]" in out
    assert "--- rejected ---\nWhat is 2+2?[[ 5.</s>]]" in out
    assert "record 1" not in out.split("data:")[0]  # the empty-response record is not shown
    assert "records read 2, pairs kept 1, dropped 1" in out and "records 1)" in out
    pairs, _ = load_preference_data(rows[:1], tokenizer=tok)
    assert f"chosen ids {pairs[0].chosen_ids}" in out


def test_inspect_conversational_with_template_file(tmp_path, capsys):
    tok = chatml_tokenizer()
    tok.save_pretrained(tmp_path / "tok")
    row = {
        "chosen": [{"role": "user", "content": "A"}, {"role": "assistant", "content": "D"}],
        "rejected": [{"role": "user", "content": "A"}, {"role": "assistant", "content": "E"}],
    }
    (tmp_path / "train.jsonl").write_text(json.dumps(row) + "\n")
    assert main(["data", "inspect", "--data", str(tmp_path), "--model", str(tmp_path / "tok")]) == 0
    out = capsys.readouterr().out
    assert "<|im_start|>user\nA<|im_end|>\n<|im_start|>assistant\n[[D<|im_end|>]]" in out
    assert "format=conversational" in out
