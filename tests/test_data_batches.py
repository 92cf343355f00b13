"""Masks, batches and batch independence (cases D5, D6), BatchIterator, split_holdout."""

import math

import mlx.core as mx
import numpy as np
import pytest

from tdpo_mlx.data import BatchIterator, EncodedPair, make_batch, response_target_mask, split_holdout
from tdpo_mlx.stats import model_statistics, reduce_statistics, split_pairs

LN8 = math.log(8.0)


class Uniform:
    """Stub model: equal probability for every token of a V-token vocabulary."""

    def __init__(self, vocab=8):
        self.vocab = vocab

    def __call__(self, ids):
        return mx.zeros((*ids.shape, self.vocab))


def test_d5_prompt_tokens_are_not_scored():
    # the case's ids [10, 11] / [12] / [13, 14] taken mod V = 8 so they index the stub's vocabulary
    pair = EncodedPair([10 % 8, 11 % 8], [12 % 8], [13 % 8, 14 % 8])
    b = make_batch([pair], pad_id=0, pad_to=6)
    assert b.input_ids.shape == (2, 6)
    assert np.array(b.target_mask).astype(int).tolist() == [[0, 1, 0, 0, 0], [0, 1, 1, 0, 0]]
    stats = model_statistics(Uniform(), b, reference_model=Uniform())
    c, r = split_pairs(stats)
    assert float(c.logps[0]) == pytest.approx(-LN8, abs=1e-5)  # -2.0794
    assert float(r.logps[0]) == pytest.approx(-2 * LN8, abs=1e-5)  # -4.1589 (not -6.2383)
    assert float(c.n_tokens[0]) == 1 and float(r.n_tokens[0]) == 2


@pytest.mark.parametrize("seed", range(5))
def test_d5_masks_cover_exactly_the_response_positions(seed):
    """Random pairs and widths: the mask marks target t iff token t+1 is a response token."""
    rng = np.random.default_rng(seed)
    pairs = [
        EncodedPair(
            rng.integers(1, 50, rng.integers(1, 6)).tolist(),
            rng.integers(1, 50, rng.integers(1, 6)).tolist(),
            rng.integers(1, 50, rng.integers(1, 6)).tolist(),
        )
        for _ in range(4)
    ]
    width = max(p.max_length for p in pairs) + int(rng.integers(0, 3))
    b = make_batch(pairs, pad_id=0, pad_to=width)
    mask = np.array(b.target_mask)
    targets = np.array(b.targets)
    rows = [(p.prompt_ids, p.chosen_ids) for p in pairs] + [(p.prompt_ids, p.rejected_ids) for p in pairs]
    for i, (prompt, resp) in enumerate(rows):
        want = np.zeros(width - 1, bool)
        want[len(prompt) - 1 : len(prompt) - 1 + len(resp)] = True
        assert (mask[i] == want).all()
        assert targets[i][mask[i]].tolist() == resp


def test_masks_come_from_lengths_when_pad_equals_eos():
    eos = 7
    pair = EncodedPair([1, 2], [3, eos], [4, 5, eos])
    b = make_batch([pair, EncodedPair([1], [eos, eos], [2, eos])], pad_id=eos)
    mask = np.array(b.target_mask).astype(int)
    assert mask.tolist() == [[0, 1, 1, 0], [1, 1, 0, 0], [0, 1, 1, 1], [1, 1, 0, 0]]


def test_d6_mask_is_not_shifted():
    # tokens [10, 11, 12, 13], response token mask [0, 0, 1, 0]: token 12 is the response
    b = make_batch([EncodedPair([10, 11], [12], [12])], pad_id=13, pad_to=4)
    assert b.input_ids.tolist()[0] == [10, 11, 12, 13]
    mask = b.target_mask
    logp = -(mx.arange(3, dtype=mx.float32) + 1)[None, :] * mx.ones((2, 1))  # log-prob at t = -(t+1)
    s = reduce_statistics(logp, logp, mx.zeros_like(logp), mask)
    assert float(s.logps[0]) == pytest.approx(-2.0)  # log p(12 | 10, 11): target index 1
    assert np.array(response_target_mask(mx.array([3]), mx.array([2]), 3)).tolist() == [[False, True, False]]


def tiny_llama(seed):
    from mlx_lm.models import llama

    mx.random.seed(seed)
    args = llama.ModelArgs(
        model_type="llama",
        hidden_size=32,
        num_hidden_layers=2,
        intermediate_size=48,
        num_attention_heads=4,
        num_key_value_heads=2,
        rms_norm_eps=1e-5,
        vocab_size=40,
    )
    model = llama.Model(args)
    mx.eval(model.parameters())
    return model


@pytest.mark.parametrize("average", [False, True])
def test_pair_statistics_do_not_depend_on_the_batch(average):
    policy, ref = tiny_llama(0), tiny_llama(1)
    rng = np.random.default_rng(0)

    def rand(n):
        return rng.integers(3, 40, n).tolist()

    pairs = [
        EncodedPair(rand(3), rand(2), rand(7)),
        EncodedPair(rand(9), rand(5), rand(1)),
        EncodedPair(rand(1), rand(12), rand(4)),
        EncodedPair(rand(5), rand(3), rand(3)),
    ]
    together = model_statistics(policy, make_batch(pairs, pad_id=2), reference_model=ref, average_log_prob=average)
    c_all, r_all = split_pairs(together)
    for i, p in enumerate(pairs):
        alone = model_statistics(
            policy, make_batch([p], pad_id=0, pad_to=30), reference_model=ref, average_log_prob=average
        )
        c, r = split_pairs(alone)
        for f_all, f in ((c_all, c), (r_all, r)):
            for name in ("logps", "ref_logps", "logratio", "kl", "n_tokens"):
                a, b = float(getattr(f_all, name)[i]), float(getattr(f, name)[0])
                assert abs(a - b) <= 1e-5 * max(1.0, abs(a)), (i, name, a, b)
    assert np.array(c_all.n_tokens).tolist() == [2, 5, 12, 3]
    assert float(mx.min(together.kl)) > 0  # two different models: a real check, not 0 == 0


# ----------------------------------------------------------------------------- iteration


def _pairs(n):
    return [EncodedPair([1] * (1 + i % 5), [2] * (1 + i % 3), [3] * (1 + i % 4), index=i) for i in range(n)]


def test_batch_iterator_deterministic_resumable_and_complete():
    pairs = [EncodedPair([1, 100 + i], [2] * (1 + i % 3), [3] * (1 + i % 4), index=i) for i in range(23)]
    it = BatchIterator(pairs, batch_size=4, seed=3)
    assert it.batches_per_epoch == 5
    seen = []
    for _ in range(5):
        b = next(it)
        seen += np.array(b.input_ids)[: b.n_pairs, 1].tolist()
    assert len(set(seen)) == 20 and all(100 <= s < 123 for s in seen)  # one epoch: no pair twice
    state = it.state_dict()
    a = [np.array(next(it).input_ids).tolist() for _ in range(7)]
    it2 = BatchIterator(pairs, batch_size=4, seed=3)
    it2.load_state_dict(state)
    assert [np.array(next(it2).input_ids).tolist() for _ in range(7)] == a
    it3 = BatchIterator(pairs, batch_size=4, seed=3)
    first = [np.array(next(it3).input_ids).tolist() for _ in range(5)]
    it4 = BatchIterator(pairs, batch_size=4, seed=4)
    assert first != [np.array(next(it4).input_ids).tolist() for _ in range(5)]


# ----------------------------------------------------------------------------- holdout


def test_split_holdout_deterministic_disjoint_complete():
    pairs = _pairs(50)
    tr, ev = split_holdout(pairs, 0.1, seed=0)
    tr2, ev2 = split_holdout(pairs, 0.1, seed=0)
    assert [p.index for p in ev] == [p.index for p in ev2] and len(ev) == 5 and len(tr) == 45
    assert sorted(p.index for p in tr + ev) == list(range(50))
    assert [p.index for p in tr] == sorted(p.index for p in tr)
    assert [p.index for p in split_holdout(pairs, 0.1, seed=1)[1]] != [p.index for p in ev]
    assert split_holdout(pairs, 0.0, 0) == (pairs, [])
    assert len(split_holdout(_pairs(3), 0.01, 0)[1]) == 1 and len(split_holdout(_pairs(3), 0.9, 0)[0]) == 1
    with pytest.raises(ValueError):
        split_holdout(pairs, 1.0, 0)
    with pytest.raises(ValueError):
        split_holdout(_pairs(1), 0.5, 0)


def test_eval_batches_sorted_by_length_every_pair_once():
    from tdpo_mlx.data import eval_batches

    rng = np.random.default_rng(0)
    pairs = [
        EncodedPair([1] * int(rng.integers(1, 30)), [2] * int(rng.integers(1, 30)), [3] * int(rng.integers(1, 30)), i)
        for i in range(11)
    ]
    batches = eval_batches(pairs, 4, pad_id=0)
    assert [b.n_pairs for b in batches] == [4, 4, 3]
    widths = [b.input_ids.shape[1] for b in batches]
    assert widths == sorted(widths)
    assert widths[-1] == max(p.max_length for p in pairs)
    # every pair once: the multiset of (prompt, chosen, rejected) lengths is kept
    seen = sorted(
        (int(b.prompt_lengths[i]), int(b.lengths[i]), int(b.lengths[i + b.n_pairs]))
        for b in batches
        for i in range(b.n_pairs)
    )
    want = sorted(
        (len(p.prompt_ids), len(p.prompt_ids + p.chosen_ids), len(p.prompt_ids + p.rejected_ids)) for p in pairs
    )
    assert seen == want
    unsorted = [make_batch(pairs[i : i + 4]) for i in range(0, 11, 4)]
    assert sum(b.input_ids.size for b in batches) < sum(b.input_ids.size for b in unsorted)
