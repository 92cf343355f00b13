"""Token rules of the preference data (cases D1-D4, D7-D9 of ../shared/cases/preference-data.md)."""

import itertools

import mlx.core as mx
import numpy as np
import pytest
from mlx_lm.tokenizer_utils import TokenizerWrapper
from support.chat_tokenizers import (
    CHATML,
    GEMMA_LIKE,
    bos_tokenizer,
    chatml_tokenizer,
    d4_tokenizer,
    plain_tokenizer,
    sentencepiece_like_tokenizer,
)
from tokenizers import Tokenizer, normalizers
from transformers import PreTrainedTokenizerFast

from tdpo_mlx.data import DataError, EncodedPair, load_preference_data, make_batch
from tdpo_mlx.data.rules import TokenRules
from tdpo_mlx.data.truncate import truncate_pair
from tdpo_mlx.losses import LOSS_TYPES, pair_metrics, preference_loss
from tdpo_mlx.stats import reduce_statistics, sequence_statistics, split_pairs

U = [{"role": "user", "content": "What is 2+2?"}]
A4 = [{"role": "assistant", "content": "4."}]
A5 = [{"role": "assistant", "content": "5."}]
CONV = {"prompt": U, "chosen": A4, "rejected": A5}
STD = {"prompt": "What is 2+2?", "chosen": " 4.", "rejected": " 5."}
HH = {
    "chosen": "\n\nHuman: What is 2+2?\n\nAssistant: It is 4.",
    "rejected": "\n\nHuman: What is 2+2?\n\nAssistant: It is 5.",
}
TEMPLATED = {"chatml": chatml_tokenizer, "bos": bos_tokenizer}
ALL = {"chatml": chatml_tokenizer, "bos": bos_tokenizer, "plain": plain_tokenizer}


def end_ids(tok):
    return {tok.eos_token_id} | {i for i, t in tok.added_tokens_decoder.items() if "end" in t.content}


def check_pair(tok, pair, *, bos_expected: bool):
    """Invariants every encoded pair must hold (D1/D2): one BOS at 0 or none, one end token
    per response, at its end, no BOS in a response, plain ints."""
    bos = tok.bos_token_id
    ends = end_ids(tok)
    for resp in (pair.chosen_ids, pair.rejected_ids):
        full = pair.prompt_ids + resp
        assert all(isinstance(i, int) and i >= 0 for i in full)
        if bos_expected:
            assert full[0] == bos and full.count(bos) == 1
        else:
            assert bos is None or bos not in full
        assert len(resp) >= 2 and resp[-1] in ends
        assert sum(i in ends for i in resp) == 1
        assert bos is None or bos not in resp
    assert pair.chosen_ids != pair.rejected_ids


def load(rows, tok, **kw):
    return load_preference_data(rows, tokenizer=tok, **kw)


# ----------------------------------------------------------------------------- D1


@pytest.mark.parametrize("name", sorted(TEMPLATED))
def test_d1_chat_reply_has_one_end_token(name):
    tok = TEMPLATED[name]()
    (pair,), _ = load([CONV], tok)
    eot = tok.convert_tokens_to_ids("<|im_end|>" if name == "chatml" else "<end_of_turn>")
    assert pair.chosen_ids == tok.encode("4.", add_special_tokens=False) + [eot]
    assert pair.rejected_ids == tok.encode("5.", add_special_tokens=False) + [eot]
    check_pair(tok, pair, bos_expected=name == "bos")


@pytest.mark.parametrize("extra", ["{{ eos_token }}", "\n{{ eos_token }}", "\n{{ eos_token }}\n\n"])
def test_d1_template_adding_eos_after_end_of_turn_is_collapsed(extra):
    # a template that writes EOS again after the end-of-turn (which is itself the EOS)
    tok = chatml_tokenizer()
    template = CHATML.replace("<|im_end|>\n{% endfor %}", "<|im_end|>" + extra + "{% endfor %}")
    (pair,), _ = load([CONV], tok, chat_template=template)
    assert pair.chosen_ids == tok.encode("4.", add_special_tokens=False) + [tok.eos_token_id]
    check_pair(tok, pair, bos_expected=False)


@pytest.mark.parametrize("name", sorted(ALL))
@pytest.mark.parametrize("suffix", ["", "{eos}", "{eos}\n", "{eos}{eos}"])
def test_d1_plain_text_gets_exactly_one_eos(name, suffix):
    tok = ALL[name]()
    eos = tok.eos_token
    row = {
        "prompt": "What is 2+2?",
        "chosen": " 4." + suffix.format(eos=eos),
        "rejected": " 5." + suffix.format(eos=eos),
    }
    (pair,), s = load([row], tok)
    assert pair.chosen_ids == tok.encode(" 4.", add_special_tokens=False) + [tok.eos_token_id]
    assert pair.rejected_ids == tok.encode(" 5.", add_special_tokens=False) + [tok.eos_token_id]
    check_pair(tok, pair, bos_expected=name == "bos")


# ----------------------------------------------------------------------------- D2


@pytest.mark.parametrize("row", [CONV, STD, HH], ids=["conversational", "standard", "implicit"])
@pytest.mark.parametrize("name", sorted(ALL))
def test_d2_exactly_one_bos_or_none(name, row):
    tok = ALL[name]()
    if name == "plain" and row is CONV:
        pytest.skip("no template")
    (pair,), _ = load([row], tok)
    check_pair(tok, pair, bos_expected=name == "bos")


def test_d2_bos_strings_in_text_are_not_doubled():
    tok = bos_tokenizer()
    row = {"prompt": "<bos>What is 2+2?", "chosen": "<bos> 4.", "rejected": " 5."}
    (pair,), _ = load([row], tok)
    assert pair.prompt_ids == [tok.bos_token_id] + tok.encode("What is 2+2?", add_special_tokens=False)
    assert pair.chosen_ids == tok.encode(" 4.", add_special_tokens=False) + [tok.eos_token_id]
    check_pair(tok, pair, bos_expected=True)


def test_d2_template_without_bos_string_still_gets_the_tokenizers_bos():
    # the tokenizer adds BOS on encode but this template does not render it (mlx-lm's
    # generate then encodes with special tokens): one BOS, as at inference
    tok = bos_tokenizer()
    (pair,), _ = load([CONV], tok, chat_template=GEMMA_LIKE.replace("{{ bos_token }}", ""))
    check_pair(tok, pair, bos_expected=True)
    (pair2,), _ = load([CONV], tok)
    assert pair.prompt_ids == pair2.prompt_ids


def test_d2_add_bos_override():
    tok = bos_tokenizer()
    (pair,), _ = load([STD], tok, add_bos=False)
    assert tok.bos_token_id not in pair.prompt_ids + pair.chosen_ids
    with pytest.raises(ValueError, match="no BOS"):
        load([STD], plain_tokenizer(), add_bos=True)


def test_d2_tokenizer_without_bos_never_yields_none():
    for tok in (chatml_tokenizer(), plain_tokenizer()):
        rules = TokenRules(tok)
        assert rules.add_bos is False and rules.with_bos([5, 6]) == [5, 6]


# ----------------------------------------------------------------------------- D3


@pytest.mark.parametrize("name", sorted(TEMPLATED))
def test_d3_finished_conversation_has_no_generation_prompt(name):
    tok = TEMPLATED[name]()
    row = {"system": "Be brief.", "prompt": "Question", "chosen": "Completed answer", "rejected": "Wrong"}
    (pair,), s = load([row], tok, data_format="conversational")
    assert s.data_format == "conversational"
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Question"}]
    for content, resp in (("Completed answer", pair.chosen_ids), ("Wrong", pair.rejected_ids)):
        full = tok.apply_chat_template(
            msgs + [{"role": "assistant", "content": content}], tokenize=False, add_generation_prompt=False
        )
        # ends right after the reply's end-of-turn: the full rendering minus the trailing newline
        assert tok.decode(pair.prompt_ids + resp) == full[: len(full) - 1] and full.endswith("\n")
    gen = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert tok.decode(pair.prompt_ids) == gen


def test_d3_plain_standard_record_with_system():
    tok = plain_tokenizer()
    row = {"system": "Be brief.", "prompt": "Question", "chosen": " Completed answer", "rejected": " Wrong"}
    (pair,), s = load([row], tok)
    assert s.data_format == "standard"
    assert pair.prompt_ids == tok.encode("Be brief.\n\nQuestion", add_special_tokens=False)


# ----------------------------------------------------------------------------- D4


def test_d4_boundary_where_generation_prompt_stops_being_a_prefix():
    tok = d4_tokenizer()
    row = {
        "prompt": [{"role": "user", "content": "hi"}],
        "chosen": [{"role": "assistant", "content": "ok"}],
        "rejected": [{"role": "assistant", "content": "no way"}],
    }
    (pair,), _ = load([row], tok)
    assert pair.chosen_ids == tok.encode("ok<E>", add_special_tokens=False)
    assert pair.rejected_ids == tok.encode("no way<E>", add_special_tokens=False)
    assert tok.decode(pair.prompt_ids) == "User: hi\n<A>\n"
    assert "<T>" not in tok.decode(pair.prompt_ids + pair.chosen_ids)
    # the loss is finite (uniform stub model)
    batch = make_batch([pair], pad_id=0)
    v = len(tok)
    logits = mx.zeros((2, batch.input_ids.shape[1] - 1, v))
    stats = sequence_statistics(logits, logits, batch.targets, batch.target_mask)
    c, r = split_pairs(stats)
    assert float(c.n_tokens[0]) == len(pair.chosen_ids) >= 1
    for lt in LOSS_TYPES:
        out = preference_loss(c, r, lt, 0.1, 0.5)
        assert np.isfinite(np.array(out.losses)).all()


def test_d4_template_that_rerenders_the_history_is_an_error_naming_the_record():
    tok = chatml_tokenizer()
    # the last user turn is rendered differently when it is the last message
    bad = CHATML.replace("{{ m['content'] }}", "{{ m['content'] }}{% if loop.last %}!{% endif %}")
    rows = [CONV, CONV]
    with pytest.raises(ValueError, match=r"record 0.*renders the prompt messages differently"):
        load(rows, tok, chat_template=bad)


def test_d4_template_that_drops_the_reply_is_an_error():
    tok = chatml_tokenizer()
    bad = CHATML.replace("{{ m['content'] }}", "{{ m['content'] if m['role'] != 'assistant' else 'x' }}")
    with pytest.raises(ValueError, match=r"record 0.*not in its scored tokens"):
        load([CONV], tok, chat_template=bad)


# ----------------------------------------------------------------------------- D7 / D8 truncation


def test_d7_prompt_is_cut_so_both_responses_survive():
    prompt, chosen, rejected = list(range(100, 110)), [1, 2, 3], [4, 5]
    for mpl in range(1, 6):
        p, c, r, pcut, rcut = truncate_pair(prompt, chosen, rejected, max_length=8, max_prompt_length=mpl)
        assert p == prompt[-5:] and c == chosen and r == rejected and pcut and not rcut
    p, *_ = truncate_pair(prompt, chosen, rejected, max_length=8, max_prompt_length=5, truncation_mode="keep_start")
    assert p == prompt[:5]
    # BOS stays at index 0 when the prompt is cut
    p, *_ = truncate_pair([1] + prompt[1:], chosen, rejected, max_length=8, max_prompt_length=4, keep_first=1)
    assert p == [1] + prompt[-4:]
    # a longer kept prompt leaves room only for cut responses, never for none
    p, c, r, _, rcut = truncate_pair(prompt, chosen, rejected, max_length=8, max_prompt_length=7)
    assert p == prompt[-7:] and c == [1] and r == [4] and rcut


def test_d7_limits_that_would_empty_responses_are_refused():
    for mpl, ml in ((8, 8), (256, 8), (0, 8)):
        with pytest.raises(ValueError, match="max_prompt_length"):
            truncate_pair([1] * 10, [1], [2], max_length=ml, max_prompt_length=mpl)
    with pytest.raises(ValueError, match="max_prompt_length"):
        load([STD], plain_tokenizer(), max_length=8)  # default max_prompt_length 256
    with pytest.raises(ValueError, match="truncation_mode"):
        truncate_pair([1], [1], [2], max_length=8, max_prompt_length=4, truncation_mode="middle")


def test_truncation_invariants_exhaustive():
    """Every small combination: fits, responses keep >= 1 token, prompt kept as needed."""
    for P, C, R, ml in itertools.product(range(0, 9), range(1, 9), range(1, 9), range(2, 13)):
        prompt, chosen, rejected = list(range(100, 100 + P)), list(range(C)), list(range(50, 50 + R))
        for mpl, mode in itertools.product(range(1, ml), ("keep_end", "keep_start")):
            p, c, r, pcut, rcut = truncate_pair(
                prompt, chosen, rejected, max_length=ml, max_prompt_length=mpl, truncation_mode=mode
            )
            assert len(p) + len(c) <= ml and len(p) + len(r) <= ml
            assert c and r and c == chosen[: len(c)] and r == rejected[: len(r)]
            if P + max(C, R) <= ml:
                assert (p, c, r, pcut, rcut) == (prompt, chosen, rejected, False, False)
            else:
                assert len(p) >= min(P, mpl)
                assert p == (prompt[len(prompt) - len(p) :] if mode == "keep_end" else prompt[: len(p)])
                # the longer response fills the width exactly unless it fits whole
                assert len(p) + max(len(c), len(r)) == ml or not rcut
                assert rcut == (max(len(c), len(r)) < max(C, R))


def test_d7_empty_response_refused_with_its_index_and_counted():
    tok = plain_tokenizer()
    rows = [STD, {"prompt": "Q", "chosen": "", "rejected": " no"}, {"prompt": "Q", "chosen": " yes", "rejected": "  "}]
    pairs, s = load(rows, tok)
    assert [p.index for p in pairs] == [0]
    assert s.dropped == {"empty_response": 2} and s.kept == 1 and s.records == 3
    assert "record 1" in s.dropped_examples["empty_response"][0]
    assert "record 2" in s.dropped_examples["empty_response"][1]
    assert "empty" in s.format()
    with pytest.raises(DataError, match=r"record 1\).*chosen response is empty"):
        load(rows, tok, strict=True)


def test_d7_truncated_pair_has_finite_loss_and_metrics():
    # max_length 8, prompt 10 tokens, chosen 3, rejected 2; also a pair with no scored token
    p, c, r, *_ = truncate_pair(list(range(10, 20)), [1, 2, 3], [4, 5], max_length=8, max_prompt_length=5)

    batch = make_batch([EncodedPair(p, c, r)], pad_id=0)
    assert batch.input_ids.shape[1] == 8
    logits = mx.random.normal((2, 7, 32), key=mx.random.key(0))
    ref = mx.random.normal((2, 7, 32), key=mx.random.key(1))
    for avg in (False, True):
        stats = sequence_statistics(logits, ref, batch.targets, batch.target_mask, average_log_prob=avg)
        ch, rj = split_pairs(stats)
        for lt in LOSS_TYPES:
            out = preference_loss(ch, rj, lt, 0.1, 0.5)
            for v in [out.losses, *pair_metrics(ch, rj, out).values()]:
                assert np.isfinite(np.array(v)).all()
    # a row with an empty mask averages to 0 (division by max(n_tokens, 1)), not NaN
    z = mx.zeros((1, 3))
    s = reduce_statistics(z - 1, z - 1, z, mx.zeros((1, 3), dtype=mx.bool_), True)
    assert float(s.logps[0]) == 0.0 and float(s.n_tokens[0]) == 0.0


def test_d8_prompt_kept_shared_and_longer_response_cut():
    prompt, chosen, rejected = list(range(100, 110)), list(range(20)), [50, 51, 52, 53]
    p, c, r, pcut, rcut = truncate_pair(prompt, chosen, rejected, max_length=16, max_prompt_length=8)
    assert p == prompt[-8:] and c == chosen[:8] and r == rejected and pcut and rcut

    b = make_batch([EncodedPair(p, c, r)])
    assert np.array(b.lengths).tolist() == [16, 12]
    ids = np.array(b.input_ids)
    assert (ids[0, :8] == ids[1, :8]).all() and np.array(b.prompt_lengths).tolist() == [8, 8]


def test_d8_through_the_loader():
    tok = plain_tokenizer()
    words = " ".join(["ok"] * 10)
    row = {"prompt": words, "chosen": " " + " ".join(["yes"] * 20), "rejected": " no no"}
    (pair,), s = load([row], tok, max_length=16, max_prompt_length=8)
    assert len(pair.prompt_ids) == 8 and len(pair.prompt_ids) + len(pair.chosen_ids) == 16
    full_prompt = tok.encode(words, add_special_tokens=False)
    assert pair.prompt_ids == full_prompt[-8:]
    assert pair.rejected_ids == tok.encode(" no no", add_special_tokens=False) + [tok.eos_token_id]
    assert s.prompt_cut == 1 and s.response_cut == 1


def test_identical_after_truncation_dropped():
    tok = plain_tokenizer()
    row = {"prompt": "Q", "chosen": " ok ok ok ok ok ok ok ok yes", "rejected": " ok ok ok ok ok ok ok ok no"}
    pairs, s = load([row, STD], tok, max_length=6, max_prompt_length=1)
    assert s.dropped == {"identical_after_truncation": 1} and [p.index for p in pairs] == [1]


# ----------------------------------------------------------------------------- D9


@pytest.mark.parametrize("system", [None, "Be brief."])
@pytest.mark.parametrize("name", sorted(TEMPLATED))
def test_d9_multi_turn_scores_only_the_last_reply(name, system):
    tok = TEMPLATED[name]()
    hist = [{"role": "user", "content": "A"}, {"role": "assistant", "content": "B"}, {"role": "user", "content": "C"}]
    if system:
        hist = [{"role": "system", "content": system}] + hist
    row = {
        "chosen": hist + [{"role": "assistant", "content": "D"}],
        "rejected": hist + [{"role": "assistant", "content": "E"}],
    }
    (pair,), s = load([row], tok)
    assert s.data_format == "conversational"
    gen = tok.apply_chat_template(hist, tokenize=False, add_generation_prompt=True)
    assert tok.decode(pair.prompt_ids) == gen
    eot = tok.convert_tokens_to_ids("<|im_end|>" if name == "chatml" else "<end_of_turn>")
    assert pair.chosen_ids == tok.encode("D", add_special_tokens=False) + [eot]
    assert pair.rejected_ids == tok.encode("E", add_special_tokens=False) + [eot]
    # "B" is never scored: the scored positions hold exactly the ids of "D<eot>"
    b = make_batch([pair])
    mask = np.array(b.target_mask)
    targets = np.array(b.targets)
    assert targets[0][mask[0]].tolist() == pair.chosen_ids
    check_pair(tok, pair, bos_expected=name == "bos")


def test_d9_histories_that_differ_are_refused():
    tok = chatml_tokenizer()
    good = {
        "chosen": [{"role": "user", "content": "A"}, {"role": "assistant", "content": "D"}],
        "rejected": [{"role": "user", "content": "A"}, {"role": "assistant", "content": "E"}],
    }
    bad = {
        "chosen": [
            {"role": "user", "content": "A"},
            {"role": "assistant", "content": "B"},
            {"role": "user", "content": "C"},
            {"role": "assistant", "content": "D"},
        ],
        "rejected": [
            {"role": "user", "content": "A"},
            {"role": "assistant", "content": "X"},
            {"role": "user", "content": "C"},
            {"role": "assistant", "content": "E"},
        ],
    }
    pairs, s = load([good, bad], tok)
    assert s.dropped == {"histories_differ": 1} and len(pairs) == 1
    with pytest.raises(DataError, match=r"record 1\).*differ before the last reply \(first at message 1\)"):
        load([good, bad], tok, strict=True)
    # the same rule for HH-style whole texts
    hh_bad = {
        "chosen": "\n\nHuman: hi\n\nAssistant: a\n\nHuman: x\n\nAssistant: yes",
        "rejected": "\n\nHuman: hi\n\nAssistant: b\n\nHuman: x\n\nAssistant: no",
    }
    pairs, s = load([HH, hh_bad], plain_tokenizer())
    assert s.dropped == {"histories_differ": 1} and len(pairs) == 1


def test_d9_last_message_must_be_the_assistant():
    row = {"chosen": [{"role": "user", "content": "A"}], "rejected": [{"role": "user", "content": "B"}]}
    with pytest.raises(DataError, match="must end with an assistant message"):
        load([row], chatml_tokenizer())


# ----------------------------------------------------------------------------- implicit prompt


def test_implicit_hh_prompt_up_to_last_assistant_marker():
    tok = plain_tokenizer()
    row = {
        "chosen": "\n\nHuman: hi\n\nAssistant: hey\n\nHuman: 2+2?\n\nAssistant: It is 4.",
        "rejected": "\n\nHuman: hi\n\nAssistant: hey\n\nHuman: 2+2?\n\nAssistant: It is 5.",
    }
    (pair,), s = load([row], tok)
    assert s.data_format == "implicit"
    assert tok.decode(pair.prompt_ids) == "\n\nHuman: hi\n\nAssistant: hey\n\nHuman: 2+2?\n\nAssistant:"
    assert tok.decode(pair.chosen_ids[:-1]) == " It is 4."
    assert s.decode_mismatches == 0


@pytest.mark.parametrize(
    "chosen,rejected,prompt",
    [
        ("The answer is 4", "The answer is 5", "The answer is"),
        ("Yes.", "Yes. But no.", "Yes"),  # one text is a prefix of the other: back off a token
        ("abc", "xyz", ""),  # nothing shared
    ],
)
def test_implicit_without_marker_longest_common_prefix_on_token_boundary(chosen, rejected, prompt):
    tok = bos_tokenizer()
    (pair,), _ = load([{"chosen": chosen, "rejected": rejected}], tok)
    assert tok.decode(pair.prompt_ids[1:]) == prompt
    assert tok.decode(pair.chosen_ids[:-1]) == chosen[len(prompt) :]
    assert tok.decode(pair.rejected_ids[:-1]) == rejected[len(prompt) :]
    # without BOS an empty shared prefix leaves the first response token unscorable: refused
    if not prompt:
        pairs, s = load([{"chosen": chosen, "rejected": rejected}, HH], plain_tokenizer())
        assert s.dropped == {"empty_prompt": 1}


def test_identical_responses_dropped_and_counted():
    tok = plain_tokenizer()
    rows = [STD, {"prompt": "Q", "chosen": " same", "rejected": " same"}, {"chosen": "x y", "rejected": "x y"}]
    pairs, s = load(rows[:2], tok)
    assert s.dropped == {"identical_responses": 1} and s.kept == 1
    pairs, s = load([HH, rows[2]], tok)
    assert s.dropped == {"identical_responses": 1}
    conv_same = {"prompt": U, "chosen": A4, "rejected": A4}
    pairs, s = load([CONV, conv_same], chatml_tokenizer())
    assert s.dropped == {"identical_responses": 1}


# ----------------------------------------------------------------------------- SentencePiece seam


@pytest.mark.parametrize(
    "prompt,chosen,rejected",
    [
        ("Question:\n", "It is 4.", "It is 5. \u00e9"),  # no leading space: dummy prefix would add one
        ("\n\nHuman: hi\n\nAssistant:", " It is 4.", " No."),  # HH: the response starts with a space
        ("The answer is", " yes", "no"),
    ],
)
def test_sentencepiece_seam_scored_ids_decode_back_in_context(prompt, chosen, rejected):
    tok = sentencepiece_like_tokenizer()
    (pair,), s = load([{"prompt": prompt, "chosen": chosen, "rejected": rejected}], tok)
    assert s.decode_mismatches == 0
    ctx = tok.decode(pair.prompt_ids)
    for ids, text in ((pair.chosen_ids, chosen), (pair.rejected_ids, rejected)):
        assert ids[-1] == tok.eos_token_id and tok.eos_token_id not in ids[:-1]
        assert tok.decode(pair.prompt_ids + ids[:-1]) == ctx + text
        # the ids are what the tokenizer gives for prompt + response (no extra word-start piece)
        joint = tok.encode(prompt + text, add_special_tokens=False)
        assert joint[len(pair.prompt_ids) - 1 :] == ids[:-1]
    check_pair(tok, pair, bos_expected=True)


@pytest.mark.parametrize(
    "prompt,chosen,rejected,straddles",
    [
        ("[INST] What is 2+2? [/INST] ", "Sure.", "No!", False),  # Llama-2 layout: the prompt ends in a space
        ("[INST] hi [/INST] ", "(4)", "It is 5.", False),  # a response starting with a symbol
        ("Question: ", "yes", "no", True),  # the joint encoding merges the space into "▁y"
        ("Human: hi\n\nAssistant: ", "I can't help with that.", "ok", True),
    ],
)
def test_sentencepiece_prompt_ending_in_space_decodes_to_exactly_prompt_plus_response(
    prompt, chosen, rejected, straddles
):
    tok = sentencepiece_like_tokenizer()
    enc = lambda t: tok.encode(t, add_special_tokens=False)  # noqa: E731
    # the kind: encoded separately, the response's dummy prefix adds a second space at the seam;
    # where a joint token straddles the seam the prompt's own ids are not a prefix of the joint ids
    assert tok.decode(enc(prompt) + enc(chosen)) == prompt + " " + chosen
    assert (enc(prompt + chosen)[: len(enc(prompt))] != enc(prompt)) == straddles
    (pair,), s = load([{"prompt": prompt, "chosen": chosen, "rejected": rejected}], tok)
    assert s.kept == 1 and s.dropped == {} and s.decode_mismatches == 0
    for ids, text in ((pair.chosen_ids, chosen), (pair.rejected_ids, rejected)):
        assert ids[-1] == tok.eos_token_id
        assert pair.prompt_ids[0] == tok.bos_token_id and tok.decode(pair.prompt_ids[1:] + ids[:-1]) == prompt + text
        assert pair.prompt_ids[1:] + ids[:-1] == enc(prompt + text)  # the tokenizer's own ids for the text
    check_pair(tok, pair, bos_expected=True)


def test_pairs_that_cannot_decode_back_are_dropped_and_counted():

    base = plain_tokenizer()
    raw = Tokenizer.from_str(base.backend_tokenizer.to_str())
    raw.normalizer = normalizers.Lowercase()  # decodes "Yes" as "yes": no tokenization gives the text back
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="</s>", pad_token="<pad>")
    rows = [{"prompt": "q", "chosen": " Yes", "rejected": " no"}, {"prompt": "q", "chosen": " yes", "rejected": " no"}]
    pairs, s = load(rows, tok)
    assert [p.index for p in pairs] == [1] and s.dropped == {"decode_mismatch": 1} and s.decode_mismatches == 1
    assert "no tokenization decodes back" in s.format()
    with pytest.raises(DataError, match=r"record 0\): no tokenization of prompt \+ chosen response decodes back"):
        load(rows, tok, strict=True)


def test_mlx_lm_tokenizer_wrapper_is_accepted():

    tok = bos_tokenizer()
    eot = tok.convert_tokens_to_ids("<end_of_turn>")
    wrapped = TokenizerWrapper(tok, eos_token_ids=[tok.eos_token_id, eot])
    for row in (CONV, STD, HH):
        (a,), _ = load([row], wrapped)
        (b,), _ = load([row], tok)
        assert (a.prompt_ids, a.chosen_ids, a.rejected_ids) == (b.prompt_ids, b.chosen_ids, b.rejected_ids)
    # with <end_of_turn> declared an end token, a plain response holding it is refused
    pairs, s = load([STD, {"prompt": "Q", "chosen": " a<end_of_turn> b", "rejected": " c"}], wrapped)
    assert s.dropped == {"special_token_in_response": 1}
