"""Real data: Anthropic HH harmless-base test split with the real Gemma 3 270M tokenizer.

Prints only the summary (counts and token lengths), never text samples (offensive content).
"""

import gzip
import json
import time
from pathlib import Path

import pytest
from mlx_lm.utils import load_tokenizer
from support.chat_tokenizers import GEMMA_LIKE

from tdpo_mlx.data import load_preference_data, make_batch


@pytest.fixture(scope="module")
def gemma_tokenizer(gemma_dir):

    return load_tokenizer(Path(gemma_dir))


@pytest.mark.slow
def test_gemma_chat_reply_ends_with_one_end_of_turn(gemma_tokenizer):

    tok = gemma_tokenizer
    row = {
        "prompt": [{"role": "user", "content": "What is 2+2?"}],
        "chosen": [{"role": "assistant", "content": "4."}],
        "rejected": [{"role": "assistant", "content": "5."}],
    }
    template = tok.chat_template or GEMMA_LIKE  # the imported GGUF may carry no template
    (pair,), _ = load_preference_data([row], tokenizer=tok, chat_template=template)
    eot = tok.convert_tokens_to_ids("<end_of_turn>")
    assert pair.prompt_ids[0] == tok.bos_token_id and pair.prompt_ids.count(tok.bos_token_id) == 1
    assert pair.chosen_ids == tok.encode("4.", add_special_tokens=False) + [eot]
    assert pair.rejected_ids == tok.encode("5.", add_special_tokens=False) + [eot]
    assert tok.decode(pair.prompt_ids).endswith("<start_of_turn>model\n")


@pytest.mark.slow
def test_hh_loads_with_gemma_tokenizer(hh_file, gemma_tokenizer):
    tok = gemma_tokenizer
    t0 = time.perf_counter()
    pairs, s = load_preference_data(hh_file, tokenizer=tok, max_length=512, max_prompt_length=256)
    seconds = time.perf_counter() - t0
    print(f"\n{s.format()}\nload_preference_data took {seconds:.2f} s")
    assert s.records == 2312 and s.data_format == "implicit"
    # the file's own faults (counted by reading it with plain Python): 4 empty chosen replies,
    # 5 pairs whose dialogues differ before the last "\n\nAssistant:"
    assert s.dropped == {"empty_response": 4, "histories_differ": 5}
    assert s.dropped_records == {
        "empty_response": [86, 516, 925, 1103],
        "histories_differ": [1254, 1688, 1950, 1952, 2036],
    }
    assert s.kept == len(pairs) == 2303
    assert s.decode_mismatches == 0  # every scored response decodes back to its text
    bos, eos = tok.bos_token_id, tok.eos_token_id
    for p in pairs:
        assert p.prompt_ids[0] == bos and p.prompt_ids.count(bos) == 1
        for r in (p.chosen_ids, p.rejected_ids):
            assert 1 <= len(r) and len(p.prompt_ids) + len(r) <= 512
            assert bos not in r and r.count(eos) <= 1 and (eos not in r or r[-1] == eos)
    untruncated = [p for p in pairs if p.max_length < 512]
    assert all(p.chosen_ids[-1] == eos and p.rejected_ids[-1] == eos for p in untruncated)
    # independent check of the prompt rule on the real file: BOS + the text up to the last
    # "\n\nAssistant:", whole, or BOS + its last tokens when the pair was too long (keep_end)

    rows = [json.loads(line) for line in gzip.open(hh_file, "rt", encoding="utf-8")]
    cut = 0
    for p in pairs:
        text = rows[p.index]["chosen"]
        prompt = text[: text.rfind("\n\nAssistant:") + len("\n\nAssistant:")]
        full = [bos] + tok.encode(prompt, add_special_tokens=False)
        if p.prompt_ids != full:
            cut += 1
            n = len(p.prompt_ids) - 1
            assert p.prompt_ids == [bos] + full[len(full) - n :] and len(p.prompt_ids) >= 256
    assert cut == s.prompt_cut > 0
    b = make_batch(pairs[:8], pad_id=tok.pad_token_id)
    assert b.input_ids.shape[0] == 16
