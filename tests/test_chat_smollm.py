"""Chat data end to end on the real SmolLM2-135M-Instruct (ChatML template): HH texts converted
to message lists (scripts/hh_to_chat.py), the scored span of every record, and the CLI chain
data inspect -> train -> generate --chat -> eval --chat -> every export."""

import importlib.util
import json
import pathlib

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from support.gguf_files import random_llama_hf, sentencepiece_vocab, write_llama_like
from transformers import AutoTokenizer

from tdpo_mlx.cli import main
from tdpo_mlx.data import load_preference_data
from tdpo_mlx.generation import chat_prompts
from tdpo_mlx.gguf import import_gguf, read_gguf

ROOT = pathlib.Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("hh_to_chat", ROOT / "scripts" / "hh_to_chat.py")
hh_to_chat = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(hh_to_chat)

RECORDS = [
    {  # whole conversations, no system message: the template adds its default one
        "chosen": [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "2+2 is 4."}],
        "rejected": [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "It is 5."}],
    },
    {  # prompt key, system message, two earlier turns
        "prompt": [
            {"role": "system", "content": "You answer in one word."},
            {"role": "user", "content": "Colour of the sky?"},
            {"role": "assistant", "content": "Blue."},
            {"role": "user", "content": "And grass?"},
        ],
        "chosen": [{"role": "assistant", "content": "Green."}],
        "rejected": [{"role": "assistant", "content": "Purple, mostly, on Tuesdays."}],
    },
    {
        "prompt": [{"role": "user", "content": "Say hello  with   spaces\nand a newline."}],
        "chosen": [{"role": "assistant", "content": "Hello  there,\n\n  friend! 123"}],
        "rejected": [{"role": "assistant", "content": "No."}],
    },
]


def test_hh_to_messages_turns():
    text = "\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: How are you?\n\nAssistant:  Fine, thanks. "
    assert hh_to_chat.hh_to_messages(text) == [
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "How are you?"},
        {"role": "assistant", "content": "Fine, thanks."},
    ]
    assert hh_to_chat.hh_to_messages("\n\nHuman: only a question") is None
    assert hh_to_chat.hh_to_messages("preamble\n\nHuman: q\n\nAssistant: a") is None
    assert hh_to_chat.hh_to_messages("\n\nHuman: q\n\nHuman: q2\n\nAssistant: a") is None
    records, skipped = hh_to_chat.convert(
        [{"chosen": text, "rejected": text.replace("Fine, thanks.", "Bad.")}, {"chosen": "x", "rejected": "y"}]
    )
    assert skipped == 1 and records[0]["rejected"][-1] == {"role": "assistant", "content": "Bad."}


@pytest.fixture(scope="module")
def smollm_tok(smollm_dir):
    return AutoTokenizer.from_pretrained(smollm_dir)


def _replies(rec):
    return rec["chosen"][-1]["content"], rec["rejected"][-1]["content"]


def _assert_span(tok, pair, rec):
    """The scored ids are exactly the assistant reply's ids plus <|im_end|>: no header, no
    generation prompt, no second end-of-turn; the prompt ends with the assistant header."""
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    header = tok.encode("<|im_start|>assistant\n", add_special_tokens=False)
    assert pair.prompt_ids[-len(header) :] == header
    for ids, reply in zip((pair.chosen_ids, pair.rejected_ids), _replies(rec)):
        assert ids == tok.encode(reply, add_special_tokens=False) + [im_end]
        assert tok.decode(ids) == reply + "<|im_end|>"


@pytest.mark.slow
def test_scored_span_is_reply_plus_im_end(smollm_tok, hh_file):
    hh, _ = hh_to_chat.convert(json.loads(line) for line in __import__("gzip").open(hh_file, "rt", encoding="utf-8"))
    records = RECORDS + hh[:300]
    pairs, summary = load_preference_data(records, tokenizer=smollm_tok, max_length=8192, max_prompt_length=4096)
    assert summary.kept >= len(RECORDS) + 290
    by_index = {p.index: p for p in pairs}
    assert set(range(len(RECORDS))) <= set(by_index)
    for i, pair in by_index.items():
        _assert_span(smollm_tok, pair, records[i])
    # the default system prompt comes from the GGUF's template when a record has none
    assert "You are a helpful AI assistant named SmolLM" in smollm_tok.decode(by_index[0].prompt_ids)


@pytest.mark.slow
def test_chat_end_to_end_cli(smollm_dir, tmp_path, capsys):
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in RECORDS * 3))
    assert main(["data", "inspect", "--model", smollm_dir, "--data", str(data), "-n", "1"]) == 0
    out = capsys.readouterr().out
    assert "[[2+2 is 4.<|im_end|>]]" in out and "[[It is 5.<|im_end|>]]" in out

    adapters = tmp_path / "adapters"
    argv = ["train", "--model", smollm_dir, "--data", str(data), "--loss", "tdpo2", "--iters", "2"]
    argv += ["--batch-size", "2", "--max-length", "96", "--max-prompt-length", "64", "--eval-every", "2"]
    argv += ["--eval-fraction", "0.34"]
    argv += ["--lora-layers", "4", "--lr", "1e-5", "--warmup-steps", "0", "--adapter-path", str(adapters)]
    assert main([*argv, "--no-progress"]) == 0, capsys.readouterr().err
    assert "done: 2 steps" in capsys.readouterr().out

    q = ["--model", smollm_dir, "--adapter-path", str(adapters), "--chat", "--temp", "0", "--max-tokens", "8"]
    assert main(["generate", *q, "--prompt", "What is the capital of France?", "--json"]) == 0
    sample = json.loads(capsys.readouterr().out.strip().splitlines()[0])
    assert sample["prompt"].endswith("<|im_start|>assistant\n") and "<|im_start|>user\nWhat is" in sample["prompt"]
    assert "Paris" in sample["completion"]

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("What is the capital of France?\nName a colour.\n")
    ev = tmp_path / "eval"
    assert main(["eval", *q, "--prompts", str(prompts), "--samples-per-prompt", "1", "--out", str(ev)]) == 0
    res = json.loads((ev / "eval.json").read_text())
    assert res["settings"]["chat"] is True and [r["name"] for r in res["rows"]] == ["reference", "adapters"]
    capsys.readouterr()

    for to in ("peft", "hf", "mlx", "gguf"):
        out_dir = tmp_path / f"export-{to}"
        argv = ["export", "--model", smollm_dir, "--adapter-path", str(adapters), "--to", to, "--out", str(out_dir)]
        assert main(argv) == 0, capsys.readouterr().err
    cfg = json.loads((tmp_path / "export-hf" / "tokenizer_config.json").read_text())
    template = cfg.get("chat_template") or (tmp_path / "export-hf" / "chat_template.jinja").read_text()
    assert "<|im_start|>" in template
    meta = read_gguf(tmp_path / "export-gguf" / "model.gguf").metadata
    assert meta["tokenizer.ggml.pre"] == "smollm" and "<|im_start|>" in meta["tokenizer.chat_template"]


def test_chat_prompts_hold_bos_once(tmp_path):
    """--chat renders each prompt with the template; a BOS the template writes is left to the
    tokenizer's encode when that adds one (Gemma-style), so the ids hold BOS once."""
    src = tmp_path / "sp.gguf"
    hf = random_llama_hf(np.random.default_rng(0), len(sentencepiece_vocab()[0]))
    write_llama_like(src, "llama", hf, {"default": Q.F32})
    model_dir = import_gguf(src, tmp_path / "m")
    with pytest.raises(ValueError, match="chat template"):
        chat_prompts(AutoTokenizer.from_pretrained(model_dir), ["hello"])
    cfg = json.loads((model_dir / "tokenizer_config.json").read_text())
    cfg["chat_template"] = (
        "{{ bos_token }}{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}[assistant]{% endif %}"
    )
    (model_dir / "tokenizer_config.json").write_text(json.dumps(cfg))
    tok = AutoTokenizer.from_pretrained(model_dir)
    (text,) = chat_prompts(tok, ["hello"], system="be brief")
    assert text == "[system]be brief[user]hello[assistant]"
    assert tok.encode(text).count(tok.bos_token_id) == 1 and tok.encode(text)[0] == tok.bos_token_id
