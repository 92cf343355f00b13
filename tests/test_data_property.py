"""Property test over random prompts, responses and limits (hypothesis)."""

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.chat_tokenizers import bos_tokenizer, chatml_tokenizer, plain_tokenizer

from tdpo_mlx.data import DataError, load_preference_data, make_batch

TOKS = {"bos": bos_tokenizer, "plain": plain_tokenizer, "chatml": chatml_tokenizer}
ALPHABET = st.sampled_from(list("abcdefghij klmnop,.!?0123456789\n'\"é中—") + ["the", " answer", " is", "ok"])
text = st.lists(ALPHABET, min_size=0, max_size=25).map("".join)
response = st.lists(ALPHABET, min_size=1, max_size=25).map("".join).filter(lambda s: s.strip())


@st.composite
def case(draw):
    n = draw(st.integers(1, 4))
    fmt = draw(st.sampled_from(["standard", "implicit"]))
    rows = []
    for _ in range(n):
        p, c, r = draw(text), " " + draw(response), " " + draw(response)
        if fmt == "standard":
            rows.append({"prompt": p, "chosen": c, "rejected": r})
        else:
            head = f"\n\nHuman: {p}\n\nAssistant:"
            rows.append({"chosen": head + c, "rejected": head + r})
    max_length = draw(st.integers(3, 48))
    mpl = draw(st.integers(1, max_length - 1))
    mode = draw(st.sampled_from(["keep_end", "keep_start"]))
    return draw(st.sampled_from(sorted(TOKS))), rows, max_length, mpl, mode


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case())
def test_random_pairs_fit_share_prompt_and_decode_back(c):
    name, rows, max_length, mpl, mode = c
    tok = TOKS[name]()
    try:
        pairs, s = load_preference_data(
            rows, tokenizer=tok, max_length=max_length, max_prompt_length=mpl, truncation_mode=mode
        )
    except DataError as e:
        assert "no pair kept" in str(e)
        return
    assert s.kept == len(pairs) and s.kept + sum(s.dropped.values()) == len(rows)
    allowed = {"identical_responses", "identical_after_truncation"}
    if name != "bos":  # an empty prompt without BOS leaves the first response token unscorable
        allowed.add("empty_prompt")
    assert set(s.dropped) <= allowed
    assert s.decode_mismatches == 0
    for pair in pairs:
        row = rows[pair.index]
        if "prompt" in row:
            texts = (row["chosen"], row["rejected"])
            pr = row["prompt"]
            if pr.strip() and texts[0].startswith(pr) and texts[1].startswith(pr):  # repaired on load
                texts = (texts[0][len(pr) :], texts[1][len(pr) :])
        else:
            cut = row["chosen"].rfind("Assistant:") + len("Assistant:")
            texts = (row["chosen"][cut:], row["rejected"][cut:])
        for ids, t in zip((pair.chosen_ids, pair.rejected_ids), texts):
            assert 1 <= len(ids) and len(pair.prompt_ids) + len(ids) <= max_length
            full = tok.encode(t, add_special_tokens=False) + [tok.eos_token_id]
            assert ids == full[: len(ids)]  # the response, cut at its end only
            assert tok.decode(full[:-1]) == t  # and it decodes back to the text
            assert tok.decode(ids[:-1] if ids[-1] == tok.eos_token_id else ids).rstrip("\ufffd") in t
        if name == "bos":
            assert pair.prompt_ids[0] == tok.bos_token_id and pair.prompt_ids.count(tok.bos_token_id) == 1
        else:
            assert None not in pair.prompt_ids
    b = make_batch(pairs, pad_id=tok.eos_token_id)
    ids = np.array(b.input_ids)
    pl = np.array(b.prompt_lengths)
    n = b.n_pairs
    assert ids.shape[1] <= max_length
    for i in range(n):  # chosen and rejected rows share the prompt ids
        assert pl[i] == pl[n + i] and (ids[i, : pl[i]] == ids[n + i, : pl[i]]).all()
    mask = np.array(b.target_mask)
    assert (mask.sum(axis=1) == [len(p.chosen_ids) for p in pairs] + [len(p.rejected_ids) for p in pairs]).all()
