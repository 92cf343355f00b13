"""TDPO/DPO/SFT losses against a hand-written NumPy version and hand-computed values."""

import math

import mlx.core as mx
import numpy as np
import pytest

from tdpo_mlx.losses import pair_metrics, preference_loss
from tdpo_mlx.stats import SequenceStatistics


def _stats(rng, b):
    logps = rng.normal(-30, 5, b)
    ref = logps - rng.normal(0, 2, b)
    kl = rng.uniform(0, 3, b)
    n = rng.integers(1, 40, b).astype(float)
    return SequenceStatistics(*(mx.array(x, dtype=mx.float32) for x in (logps, ref, logps - ref, kl, n)))


def _np_loss(c, r, loss_type, beta, alpha):
    cm, rm = np.array(c.logratio), np.array(r.logratio)
    ck, rk = np.array(c.kl), np.array(r.kl)
    if loss_type == "tdpo1":
        u = (cm - rm) - (rk - ck)
    elif loss_type == "tdpo2":
        u = (cm - rm) - alpha * (rk - ck)
    else:
        u = cm - rm
    loss = np.log1p(np.exp(-beta * u))  # -log sigmoid(beta u)
    if loss_type == "sft":
        loss = -np.array(c.logps)
    if loss_type.startswith("tdpo"):
        return loss, beta * (cm + ck), beta * (rm + rk)
    return loss, beta * cm, beta * rm


@pytest.mark.parametrize("loss_type", ["tdpo1", "tdpo2", "dpo", "sft"])
def test_losses_match_numpy(loss_type):
    rng = np.random.default_rng(0)
    c, r = _stats(rng, 16), _stats(rng, 16)
    out = preference_loss(c, r, loss_type, beta=0.1, alpha=0.5)
    want = _np_loss(c, r, loss_type, 0.1, 0.5)
    for got, exp in zip(out, want):
        np.testing.assert_allclose(np.array(got), exp, rtol=1e-5, atol=1e-5)


def test_hand_computed_tdpo():
    # m_w=1, m_l=-1, KL_w=0.5, KL_l=2: tdpo1 u = 2 - 1.5 = 0.5; tdpo2 u = 2 - 0.5*1.5 = 1.25
    c = SequenceStatistics(*(mx.array([x]) for x in (-3.0, -4.0, 1.0, 0.5, 3.0)))
    r = SequenceStatistics(*(mx.array([x]) for x in (-5.0, -4.0, -1.0, 2.0, 3.0)))
    sp = lambda z: math.log1p(math.exp(-z))  # noqa: E731
    assert preference_loss(c, r, "tdpo1", beta=1.0).losses.item() == pytest.approx(sp(0.5), abs=1e-6)
    assert preference_loss(c, r, "tdpo2", beta=1.0, alpha=0.5).losses.item() == pytest.approx(sp(1.25), abs=1e-6)
    assert preference_loss(c, r, "dpo", beta=0.1).losses.item() == pytest.approx(sp(0.2), abs=1e-6)
    assert preference_loss(c, r, "sft").losses.item() == pytest.approx(3.0)
    out = preference_loss(c, r, "tdpo2", beta=0.1)
    assert out.chosen_rewards.item() == pytest.approx(0.15)
    assert out.rejected_rewards.item() == pytest.approx(0.1)
    m = pair_metrics(c, r, out)
    assert m["kl/margin"].item() == pytest.approx(-1.5)  # chosen - rejected, as the authors log it
    assert m["rewards/accuracies"].item() == 1.0


def test_identical_statistics_give_ln2():
    """D10: policy == reference -> margins 0, KL 0, loss ln 2 for dpo, tdpo1, tdpo2."""
    z = mx.zeros((3,))
    s = SequenceStatistics(z - 5, z - 5, z, z, z + 4)
    for lt in ("dpo", "tdpo1", "tdpo2"):
        np.testing.assert_allclose(np.array(preference_loss(s, s, lt).losses), math.log(2), atol=1e-7)


def test_unknown_loss_type():
    z = mx.zeros((1,))
    s = SequenceStatistics(z, z, z, z, z)
    with pytest.raises(ValueError, match="tdpo1"):
        preference_loss(s, s, "ipo")


def _grad_wrt_kl(loss_type):
    c0, r0 = mx.array([0.3]), mx.array([-0.2])

    def f(kw, kl):
        c = SequenceStatistics(c0, c0, c0, kw, c0)
        r = SequenceStatistics(r0, r0, r0, kl, r0)
        return preference_loss(c, r, loss_type, beta=0.1, alpha=0.5).losses.sum()

    return mx.grad(f, argnums=(0, 1))(mx.array([0.4]), mx.array([0.9]))


def test_tdpo2_stops_gradient_through_chosen_kl():
    g_w, g_l = _grad_wrt_kl("tdpo2")
    assert g_w.item() == 0.0
    assert g_l.item() != 0.0
    g_w1, g_l1 = _grad_wrt_kl("tdpo1")
    assert g_w1.item() != 0.0
    # tdpo1: d/dKL_w = -d/dKL_l
    assert g_w1.item() == pytest.approx(-g_l1.item())
