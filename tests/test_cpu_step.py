"""The CPU training step (tdpo_mlx.cpu_step: forward with a pending VJP, the head in NumPy, the
loss's per-position gradient, backward) against nn.value_and_grad over batch_statistics (MLX's
kernel, the Metal/CUDA path) and the plain full-logits definition."""

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten
from mlx_lm.models import gemma2
from mlx_lm.tuner.lora import LoRALinear
from support.models import random_lora
from test_shared_prompt import COMMON, MODELS, _batch, _close, _llama

from tdpo_mlx import cpu_step, fast_stats
from tdpo_mlx.fast_stats import batch_statistics
from tdpo_mlx.losses import preference_loss
from tdpo_mlx.objective import accumulate_gradients
from tdpo_mlx.stats import model_statistics, split_pairs


def _coef_loss(coef):
    def loss(s):
        total = mx.sum(coef[0] * s.logps + coef[1] * s.kl + coef[2] * s.logratio)
        return total, {"kl": mx.stop_gradient(s.kl)}

    return loss


def _tdpo2_loss(s):
    chosen, rejected = split_pairs(s)
    return preference_loss(chosen, rejected, "tdpo2", 0.1, 0.5).losses.mean(), {}


def _compare(model, batch, loss, reference_model=None, **kw):
    """cpu_step against the traced path and the plain definition, within 1e-4 and 2e-5 relative (the
    traced path's kernel uses MLX's CPU exp, off by up to 3.9e-6 relative; NumPy's ~1e-7)."""
    kw = dict(reference_model=reference_model, **kw)
    got = cpu_step.value_and_grad(model, batch, loss, chunk_size=8, **kw)
    assert got is not None, "the CPU step did not apply: the test would compare nothing"
    (value, aux), grads = got

    def traced(m):
        return loss(batch_statistics(m, batch, chunk_size=8, **kw))

    def plain(m):
        avg = kw.get("average_log_prob", False)
        return loss(model_statistics(m, batch, reference_model=reference_model, average_log_prob=avg))

    for fn, rtol in ((traced, 1e-4), (plain, 2e-5)):
        (v, a), g = nn.value_and_grad(model, fn)(model)
        assert _close(value, v, rtol)[0], (float(value), float(v))
        for k in a:
            assert _close(aux[k], a[k], rtol)[0], k
        g, mine = dict(tree_flatten(g)), dict(tree_flatten(grads))
        assert g.keys() == mine.keys() and g
        for k in g:
            assert np.abs(np.array(g[k])).max() > 0, f"gradient of {k} is zero: the test would not see a wrong path"
            ok, info = _close(mine[k], g[k], rtol)
            assert ok, (k, fn.__name__, info)


def _coef(n, seed=3):
    rng = np.random.default_rng(seed)
    return [mx.array(rng.standard_normal(n).astype(np.float32)) for _ in range(3)]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_cpu_step_equals_traced_and_plain(name):
    batch = _batch()
    _compare(random_lora(MODELS[name]()), batch, _coef_loss(_coef(batch.input_ids.shape[0])))


@pytest.mark.parametrize("share", [True, False])
def test_average_log_prob_and_rows(share):
    batch = _batch()
    loss = _coef_loss(_coef(batch.input_ids.shape[0], seed=5))
    _compare(random_lora(_llama(True)), batch, loss, average_log_prob=True, share_prompt=share)


def test_tdpo2_loss_skips_the_chosen_map():
    _compare(random_lora(_llama()), _batch(), _tdpo2_loss, kl_grad="rejected")


def test_separate_reference_and_dora():
    ref = _llama(seed=1)
    ref.freeze()
    batch = _batch()
    _compare(random_lora(_llama(), dora=True), batch, _coef_loss(_coef(6)), reference_model=ref)


def test_gemma2_full_rows():
    mx.random.seed(0)
    args = gemma2.ModelArgs(
        model_type="gemma2",
        num_attention_heads=2,
        head_dim=32,
        num_key_value_heads=1,
        query_pre_attn_scalar=32.0,
        **COMMON,
    )
    _compare(random_lora(gemma2.Model(args)), _batch(), _coef_loss(_coef(6)))


def test_dropout_draws_one_mask_for_value_and_gradient():
    """One forward pass: the gradient belongs to the dropout mask the loss was computed with
    (the traced path with the same random state draws the same masks)."""
    model = random_lora(_llama())
    for _, m in model.named_modules():
        if isinstance(m, LoRALinear):
            m.dropout = nn.Dropout(0.3)
    model.train()
    batch = _batch()
    loss = _coef_loss(_coef(6))
    mx.random.seed(11)
    (value, _), grads = cpu_step.value_and_grad(model, batch, loss, chunk_size=8)
    mx.random.seed(11)
    (v, _), g = nn.value_and_grad(model, lambda m: loss(batch_statistics(m, batch, chunk_size=8)))(model)
    assert _close(value, v, 2e-5)[0]
    for k, x in tree_flatten(g):
        assert _close(dict(tree_flatten(grads))[k], x, 2e-5)[0], k


def test_does_not_apply_to_quantized_or_trainable_heads():
    q = _llama(True)
    nn.quantize(q, group_size=64, bits=4)
    assert cpu_step.value_and_grad(random_lora(q), _batch(), _tdpo2_loss) is None
    head = random_lora(_llama(False))
    head.lm_head = LoRALinear.from_base(head.lm_head, r=4)
    assert cpu_step.value_and_grad(head, _batch(), _tdpo2_loss) is None


def test_trainer_uses_it_and_restores_parameters(monkeypatch):
    """accumulate_gradients goes through cpu_step on the CPU backend; the policy keeps its own
    parameter arrays afterwards, and the switch off gives the traced path's gradients."""
    model = random_lora(_llama())
    before = dict(tree_flatten(model.trainable_parameters()))
    calls = []
    real = cpu_step.value_and_grad
    monkeypatch.setattr(cpu_step, "value_and_grad", lambda *a, **k: calls.append(1) or real(*a, **k))
    res = accumulate_gradients(model, [_batch()], loss_type="tdpo2")
    assert calls == [1]
    after = dict(tree_flatten(model.trainable_parameters()))
    assert all(after[k] is before[k] for k in before)
    monkeypatch.setitem(fast_stats.NUMPY_HEAD, "on", False)
    ref = accumulate_gradients(model, [_batch()], loss_type="tdpo2")
    assert abs(res.loss - ref.loss) < 1e-6
    for k, x in tree_flatten(ref.grads):
        assert _close(dict(tree_flatten(res.grads))[k], x, 2e-5)[0], k


def test_numpy_chunk_size_and_workspace_reuse():
    from tdpo_mlx import cpu_head

    assert cpu_head.default_chunk_size(262144) == 128  # 128 MiB of float32 logits per chunk
    assert cpu_head.default_chunk_size(49152) == 512
    assert cpu_head.default_chunk_size(10**9) == 8
    work = cpu_head.Workspace()
    big = work.get("y", (4, 10))
    small = work.get("y", (2, 10))  # a short last chunk: a view of the same buffer
    assert np.shares_memory(big, small) and small.shape == (2, 10) and work.nbytes == 160
    assert not np.shares_memory(big, work.get("y", (5, 10))) and work.nbytes == 200
