"""Plain statistics against a NumPy reference, the D5/D6/D10 cases."""

import math

import mlx.core as mx
import numpy as np
import pytest

from tdpo_mlx.data import Batch, EncodedPair, make_batch, response_target_mask
from tdpo_mlx.stats import sequence_statistics, split_pairs


def _np_stats(pl, rl, tg, mask):
    def lsm(x):
        x = x.astype(np.float64)
        return x - np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1, keepdims=True)) - x.max(-1, keepdims=True)

    lp, lr = lsm(pl), lsm(rl)
    pt = np.take_along_axis(lp, tg[..., None], -1)[..., 0]
    rt = np.take_along_axis(lr, tg[..., None], -1)[..., 0]
    kl = (np.exp(lr) * (lr - lp)).sum(-1)
    return (pt * mask).sum(-1), ((pt - rt) * mask).sum(-1), (kl * mask).sum(-1)


def test_plain_statistics_match_numpy():
    rng = np.random.default_rng(1)
    n, t, v = 3, 7, 50
    pl = rng.normal(0, 3, (n, t, v)).astype(np.float32)
    rl = rng.normal(0, 3, (n, t, v)).astype(np.float32)
    tg = rng.integers(0, v, (n, t))
    mask = (rng.uniform(size=(n, t)) > 0.3).astype(np.float32)
    s = sequence_statistics(mx.array(pl), mx.array(rl), mx.array(tg), mx.array(mask))
    logps, margin, kl = _np_stats(pl, rl, tg, mask)
    np.testing.assert_allclose(np.array(s.logps), logps, rtol=1e-5)
    np.testing.assert_allclose(np.array(s.logratio), margin, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.array(s.kl), kl, rtol=1e-4)
    avg = sequence_statistics(mx.array(pl), mx.array(rl), mx.array(tg), mx.array(mask), average_log_prob=True)
    np.testing.assert_allclose(np.array(avg.kl), kl / np.maximum(mask.sum(-1), 1), rtol=1e-4)


def test_identical_logits_zero_kl_and_margin():
    """D10: identical policy and reference -> KL 0 (never below -1e-6) and margin 0."""
    rng = np.random.default_rng(2)
    x = mx.array(rng.normal(0, 5, (2, 5, 300)).astype(np.float32))
    tg = mx.array(rng.integers(0, 300, (2, 5)))
    s = sequence_statistics(x, x, tg, mx.ones((2, 5)))
    assert np.all(np.abs(np.array(s.kl)) < 1e-6)
    assert np.all(np.array(s.logratio) == 0)


def test_d5_prompt_tokens_not_scored():
    """D5: prompt [10, 11], chosen [12], rejected [13, 14], padded to 6, uniform V=8."""
    ids = mx.array([[10, 11, 12, 0, 0, 0], [10, 11, 13, 14, 0, 0]]) % 8
    batch = Batch(ids, mx.array([3, 4]), mx.array([2, 2]), n_pairs=1)
    np.testing.assert_array_equal(np.array(batch.target_mask), [[0, 1, 0, 0, 0], [0, 1, 1, 0, 0]])
    logits = mx.zeros((2, 5, 8))
    s = sequence_statistics(logits, logits, batch.targets, batch.target_mask)
    np.testing.assert_allclose(np.array(s.logps), [-2.0794415, -4.1588831], atol=1e-6)
    c, r = split_pairs(s)
    assert c.logps.item() == pytest.approx(-2.0794415, abs=1e-6)
    assert r.n_tokens.item() == 2


def test_d6_mask_not_shifted():
    """D6: tokens [10, 11, 12, 13], response token mask [0, 0, 1, 0]: score = log p(12 | 10, 11)
    = value at target index 1 = -2 with a stub whose log-prob at target position t is -(t+1)."""
    # prompt = 2 tokens, response = [12] only, token 13 outside: length 3 of 4
    mask = response_target_mask(mx.array([3]), mx.array([2]), 3)
    np.testing.assert_array_equal(np.array(mask), [[0, 1, 0]])
    stub = mx.array([[-1.0, -2.0, -3.0]])
    assert mx.sum(stub * mask).item() == -2.0


def test_real_eos_scored_when_padding_is_eos():
    """Pad id equal to EOS must not hide the real EOS of a response: the ids go through
    make_batch with EOS-valued padding, and the scored log-prob sums over exactly the response
    tokens [7, EOS] (2 x -ln 8 under uniform logits), not over the padding."""
    eos = 1
    batch = make_batch([EncodedPair([5, 6], [7, eos], [eos])], pad_id=eos, pad_to=6)
    np.testing.assert_array_equal(np.array(batch.input_ids), [[5, 6, 7, eos, eos, eos], [5, 6, eos, eos, eos, eos]])
    logits = mx.zeros((2, 5, 8))
    s = sequence_statistics(logits, logits, batch.targets, batch.target_mask)
    np.testing.assert_allclose(np.array(s.logps), [-2 * math.log(8), -math.log(8)], rtol=1e-6)
    np.testing.assert_array_equal(np.array(s.n_tokens), [2, 1])
