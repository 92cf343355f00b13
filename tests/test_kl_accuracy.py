"""Float32 KL(pi_ref || pi_theta) near zero and with masked (-inf) logits, in the plain
definition (tdpo_mlx.stats) and in the fast path's chunk kernels: MLX's (tdpo_mlx.fast_stats)
and NumPy's (tdpo_mlx.cpu_head); the NumPy kernel's values and head maps against MLX's."""

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten

from tdpo_mlx import cpu_head, fast_stats
from tdpo_mlx.stats import token_statistics

V = 262144


def _kl64(yp, yr):
    """KL(p_r || p_p) per row in float64 over finite entries of p_r (0 log 0 = 0)."""
    yp, yr = np.asarray(yp, np.float64), np.asarray(yr, np.float64)
    lp = yp - np.logaddexp.reduce(yp, axis=-1, keepdims=True)
    lr = yr - np.logaddexp.reduce(yr, axis=-1, keepdims=True)
    pr = np.exp(lr)
    return np.sum(np.where(pr > 0, pr * (lr - np.where(pr > 0, lp, 0.0)), 0.0), axis=-1)


def _mlx_kl(yp, yr):
    """MLX's chunk kernel's KL (no softcap, no scale) on (C, V) logits."""
    tgt = mx.zeros((yp.shape[0],), mx.int32)
    return fast_stats._terms_fn(1.0, None, False)(mx.concatenate([yp, yr]), tgt)[2]


def _numpy_kl(yp, yr):
    """NumPy's kernel's KL on the same logits."""
    y = np.concatenate([np.array(yp), np.array(yr)])
    tgt = np.zeros(yp.shape[0], np.int64)
    return mx.array(cpu_head.logit_statistics(y, tgt, 1.0, None, False, cpu_head.Workspace())[2])


def _plain_kl(yp, yr):
    tgt = mx.zeros(yp.shape[:-1], mx.int32)
    return token_statistics(yp[None], yr[None], tgt[None])[2][0]


def _near_zero_logits(seed=0, rows=6):
    """Reference logits spread like an LM's; the policy a small perturbation (KL ~1e-8..1e-4)."""
    rng = np.random.default_rng(seed)
    yr = (rng.standard_normal((rows, V)) * 3.0).astype(np.float32)
    eps = np.array([0.0, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2], np.float32)[:rows, None]
    yp = (yr + eps * rng.standard_normal((rows, V))).astype(np.float32)
    return yp, yr


@pytest.mark.parametrize("path", ["plain", "mlx", "numpy"])
def test_kl_near_zero_at_full_vocabulary(path):
    yp, yr = _near_zero_logits()
    want = _kl64(yp, yr)
    fn = {"plain": _plain_kl, "mlx": _mlx_kl, "numpy": _numpy_kl}[path]
    got = np.array(fn(mx.array(yp), mx.array(yr)), np.float64)
    assert got[0] == 0.0  # identical distributions: exactly zero
    # float32 logits are the input: the float64 truth of those exact numbers is what is matched.
    # The plain definition is non-negative by construction and accurate to float32 relative
    # rounding; the fast kernel's grouped form with blocked sums is within a few 1e-7 absolute
    # (two float32 sums of ~40 rounded to 1 ulp; the textbook form was off by ~2e-6 here).
    if path == "plain":
        assert np.all(got >= 0.0)
        assert np.all(np.abs(got - want) <= 1e-8 + 2e-4 * want), (got, want)
    else:
        assert np.all(got >= -5e-7)
        assert np.all(np.abs(got - want) <= 5e-7 + 2e-4 * want), (got, want)


def test_direct_form_was_negative_here():
    """The textbook float32 form on the same logits goes below zero (what the tests above guard)."""
    yp, yr = (mx.array(a) for a in _near_zero_logits(rows=3))
    lp = yp - mx.logsumexp(yp, axis=-1, keepdims=True)
    lr = yr - mx.logsumexp(yr, axis=-1, keepdims=True)
    direct = np.array(mx.sum(mx.exp(lr) * (lr - lp), axis=-1))
    want = _kl64(np.array(yp), np.array(yr))
    assert np.abs(direct - want).max() > 1e-6


@pytest.mark.parametrize("path", ["plain", "mlx", "numpy"])
def test_masked_vocabulary_gives_zero_log_zero(path):
    rng = np.random.default_rng(1)
    yr = (rng.standard_normal((3, 1000)) * 2).astype(np.float32)
    yp = (yr + 0.1 * rng.standard_normal((3, 1000))).astype(np.float32)
    yp[:, 500:], yr[:, 500:] = -np.inf, -np.inf  # the same masked half in both
    yp[2], yr[2] = yp[1], yr[1]
    fn = {"plain": _plain_kl, "mlx": _mlx_kl, "numpy": _numpy_kl}[path]
    got = np.array(fn(mx.array(yp), mx.array(yr)), np.float64)
    want = _kl64(yp[:, :500], yr[:, :500])
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-8 if path == "plain" else 5e-7)


def test_policy_zero_where_reference_is_not_is_infinite():
    yr = mx.zeros((1, 8))
    yp = mx.array([[0.0] * 7 + [-np.inf]])
    for fn in (_plain_kl, _mlx_kl, _numpy_kl):
        assert np.array(fn(yp, yr))[0] == np.inf


def test_plain_gradient_with_masked_vocabulary_is_finite_and_right():
    rng = np.random.default_rng(2)
    yr = (rng.standard_normal((2, 64))).astype(np.float32)
    yp = (yr + 0.3 * rng.standard_normal((2, 64))).astype(np.float32)
    yr[:, 40:], yp[:, 40:] = -np.inf, -np.inf
    g = mx.grad(lambda a: mx.sum(_plain_kl(a, mx.array(yr))))(mx.array(yp))
    g = np.array(g)
    pp = np.exp(yp[:, :40] - np.logaddexp.reduce(yp[:, :40], axis=-1, keepdims=True))
    pr = np.exp(yr[:, :40] - np.logaddexp.reduce(yr[:, :40], axis=-1, keepdims=True))
    np.testing.assert_allclose(g[:, :40], pp - pr, atol=1e-6)  # d KL / d y_theta = p_theta - p_r
    assert np.all(g[:, 40:] == 0)


def test_numpy_exp_within_float32_rounding():
    """The kernel's exponential (NumPy's) against float64: MLX's own CPU exp is the yardstick."""
    x = np.concatenate([np.linspace(-87.0, 0.0, 1_000_003), [-1e-30, -0.0]]).astype(np.float32)
    want = np.exp(x.astype(np.float64))
    mine = np.abs(np.exp(x).astype(np.float64) - want) / want
    theirs = np.abs(np.array(mx.exp(mx.array(x)), np.float64) - want) / want
    assert mine.max() < 2.5e-7 and mine.max() <= theirs.max()


@pytest.mark.parametrize(
    "scale,cap,grad", [(1.0, None, "all"), (0.5, None, "tok"), (1.0, 3.0, "all"), (1.0, None, "none")]
)
def test_numpy_kernel_equals_mlx_kernel(scale, cap, grad):
    """Values and both head maps of one chunk: cpu_head.chunk_terms against MLX's chunk kernel."""
    from tdpo_mlx.head_plan import HeadPlan

    rng = np.random.default_rng(3)
    v, d, c = 3000, 16, 12
    head = nn.Linear(d, v, bias=False)
    head.weight = mx.array((rng.standard_normal((v, d)) * 0.5).astype(np.float32))
    hp = mx.array(rng.standard_normal((c, d)).astype(np.float32))
    hr = hp + 0.2 * mx.array(rng.standard_normal((c, d)).astype(np.float32))
    tgt = mx.array(rng.integers(0, v, c).astype(np.int32))
    plan = HeadPlan(None, head, head, scale, cap, v)
    w = cpu_head.head_weight(plan)
    got = cpu_head.chunk_terms(w, w, *(np.array(a) for a in (hp, hr, tgt)), scale, cap, grad, cpu_head.Workspace())
    if grad == "none":
        want = fast_stats._frozen_head_chunk(plan, plan, False)(hp, hr, tgt)
    else:
        fn = fast_stats._frozen_head_chunk(plan, plan, True, grad == "all")
        want = fn.__closure__[[type(x.cell_contents).__name__ for x in fn.__closure__].index("custom_function")]
        want = want.cell_contents(hp, hr, tgt)
    assert len(got) == len(want)
    # values against float64 (MLX's CPU exp is off by up to 3.9e-6 relative, NumPy's by ~1e-7)
    z = np.concatenate([np.array(hp), np.array(hr)]).astype(np.float64) @ np.array(head.weight, np.float64).T
    y = cap * np.tanh(scale * z / cap) if cap else scale * z
    logp = y - np.logaddexp.reduce(y, axis=-1, keepdims=True)
    t = np.array(tgt)
    truth = (logp[np.arange(c), t], logp[c + np.arange(c), t], _kl64(y[:c], y[c:]))
    for a, b, x in zip(got[:3], want[:3], truth):
        assert np.abs(a - x).max() <= 1e-6 * max(1.0, np.abs(x).max())
        assert np.abs(a - x).max() <= np.abs(np.array(b) - x).max() + 2e-7
    for a, b in zip(got[3:], want[3:]):  # the maps through the head
        b = np.array(b)
        np.testing.assert_allclose(a, b, rtol=0, atol=2e-5 * max(1.0, np.abs(b).max()))


def test_tdpo2_skips_the_chosen_kl_map_exactly():
    """kl_grad="rejected" equals the full path for a loss that stops the chosen KL's gradient."""
    from mlx_lm.models import llama
    from mlx_lm.tuner.utils import linear_to_lora_layers

    from tdpo_mlx.data import EncodedPair, make_batch
    from tdpo_mlx.losses import preference_loss
    from tdpo_mlx.stats import split_pairs

    mx.random.seed(0)
    args = llama.ModelArgs(
        model_type="llama",
        hidden_size=64,
        num_hidden_layers=2,
        intermediate_size=128,
        num_attention_heads=4,
        rms_norm_eps=1e-5,
        vocab_size=4000,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )
    model = llama.Model(args)
    model.freeze()
    linear_to_lora_layers(model, 2, {"rank": 4, "scale": 2.0, "dropout": 0.0})
    for _, m in model.named_modules():
        if hasattr(m, "lora_b"):
            m.lora_b = 0.05 * mx.random.normal(m.lora_b.shape)
    rng = np.random.default_rng(0)
    ids = lambda n: rng.integers(3, 4000, n).tolist()  # noqa: E731
    batch = make_batch([EncodedPair(ids(5), ids(7), ids(4)), EncodedPair(ids(3), ids(6), ids(9))])

    def loss(kl_grad):
        def f(m):
            s = fast_stats.batch_statistics(m, batch, chunk_size=8, kl_grad=kl_grad)
            return preference_loss(*split_pairs(s), "tdpo2", 0.1, 0.5).losses.mean()

        return f

    (la, ga), (lb, gb) = (nn.value_and_grad(model, loss(k))(model) for k in ("all", "rejected"))
    assert abs(la.item() - lb.item()) <= 1e-6
    ga, gb = dict(tree_flatten(ga)), dict(tree_flatten(gb))
    for k in ga:
        np.testing.assert_allclose(np.array(gb[k]), np.array(ga[k]), atol=1e-5 * np.abs(np.array(ga[k])).max())
    with pytest.raises(ValueError, match="kl_grad"):
        fast_stats.batch_statistics(model, batch, kl_grad="chosen")
