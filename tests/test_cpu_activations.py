"""The CPU backend's activations (tdpo_mlx.cpu_activations) against MLX's own, values and
gradients, and models switched by install() against the same models unswitched."""

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten
from test_shared_prompt import MODELS

from tdpo_mlx import cpu_activations as act


def _x():
    x = np.concatenate([np.linspace(-20, 20, 200_001), [0.0, -0.0, 1e-30, -1e-30, 1e-4, -7.9, 7.9, 50.0, -50.0]])
    return x.astype(np.float32)


def test_tanh_within_float32_rounding():
    x = _x()
    got = np.array(act.tanh(mx.array(x)), np.float64)
    want = np.tanh(x.astype(np.float64))
    assert np.abs(got - want).max() < 4e-7
    mlx_own = np.array(mx.tanh(mx.array(x)), np.float64)
    assert np.abs(got - want).max() <= np.abs(mlx_own - want).max() + 3e-7
    assert np.all(got[x == 0] == 0.0) and np.all(np.abs(got) <= 1.0)


@pytest.mark.parametrize("mine,theirs", [(act.gelu_approx, nn.gelu_approx), (act.silu, nn.silu)])
def test_activation_values_and_gradients(mine, theirs):
    x = mx.array(_x() / 4)
    np.testing.assert_allclose(np.array(mine(x)), np.array(theirs(x)), rtol=2e-6, atol=2e-6)
    g_mine = np.array(mx.grad(lambda a: mx.sum(mine(a)))(x))
    g_theirs = np.array(mx.grad(lambda a: mx.sum(theirs(a)))(x))
    # 1 - tanh^2 near saturation inherits the rational tanh's 3e-7 absolute error, times up to
    # ~13 in GELU's derivative: within 1.5e-5 of MLX's where the derivative reaches 1.13
    np.testing.assert_allclose(g_mine, g_theirs, rtol=2e-5, atol=1.5e-5)
    assert np.abs(g_mine - g_theirs).max() > 0  # a different computation, not MLX's own


@pytest.mark.parametrize("name", ["gemma3-window-shorter-than-rows", "llama-untied", "qwen2"])
def test_install_keeps_outputs_and_parameters(name):
    model = MODELS[name]()
    x = mx.array([[3, 17, 5, 99, 12, 7, 64, 2]])
    before = model(x)
    names = [k for k, _ in tree_flatten(model.parameters())]
    assert act.install(model) == len(model.layers)
    assert [k for k, _ in tree_flatten(model.parameters())] == names
    np.testing.assert_allclose(np.array(model(x)), np.array(before), rtol=1e-5, atol=1e-5)
    assert act.install(model) == 0  # already switched
    assert all(type(layer.mlp).__call__ is not type(layer.mlp).__mro__[1].__call__ for layer in model.layers)


def test_install_keeps_lora_gradients():
    from support.models import random_lora
    from test_shared_prompt import _batch, _close

    from tdpo_mlx.fast_stats import batch_statistics

    batch = _batch()
    grads = []
    for switch in (False, True):
        model = random_lora(MODELS["gemma3-window-shorter-than-rows"]())
        if switch:
            act.install(model)

        def loss(m):
            s = batch_statistics(m, batch, chunk_size=8)
            return mx.sum(s.logps - 0.5 * s.kl)

        grads.append(dict(tree_flatten(nn.value_and_grad(model, loss)(model)[1])))
    for k in grads[0]:
        assert _close(grads[1][k], grads[0][k], 1e-4)[0], k
