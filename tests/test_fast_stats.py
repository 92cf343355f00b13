"""The fast statistics path (stats.batch_statistics) against the plain definition.

Tiny random mlx-lm models with a large vocabulary and LoRA adapters whose ``lora_b`` is
non-zero (so policy != reference); values and LoRA gradients must agree within 1e-4 relative.
"""

import warnings

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten
from mlx_lm.models import gemma2, gemma3_text, llama, qwen2
from mlx_lm.tuner.lora import LoRALinear
from mlx_lm.tuner.utils import linear_to_lora_layers
from support.models import random_lora

from tdpo_mlx import fast_stats as stats
from tdpo_mlx.data import EncodedPair, make_batch
from tdpo_mlx.fast_stats import batch_statistics, default_chunk_size
from tdpo_mlx.stats import model_statistics

V = 32000
RTOL = 1e-4


def _llama(tied, seed=0, vocab=V):
    mx.random.seed(seed)
    args = llama.ModelArgs(
        model_type="llama",
        hidden_size=64,
        num_hidden_layers=2,
        intermediate_size=128,
        num_attention_heads=4,
        rms_norm_eps=1e-5,
        vocab_size=vocab,
        num_key_value_heads=2,
        tie_word_embeddings=tied,
    )
    return llama.Model(args)


def _batch(vocab=V, seed=0):
    rng = np.random.default_rng(seed)

    def ids(n):
        return rng.integers(3, vocab, n).tolist()

    # unequal prompt and response lengths -> right padding, several chunks with padding
    pairs = [EncodedPair(ids(5), ids(7), ids(4)), EncodedPair(ids(3), ids(6), ids(9))]
    return make_batch(pairs, pad_id=0)


def _coef(n, seed=3):
    rng = np.random.default_rng(seed)
    return [mx.array(rng.standard_normal(n).astype(np.float32)) for _ in range(3)]


def _loss(fn, batch, coef, **kw):
    def f(model):
        s = fn(model, batch, **kw)
        return mx.sum(coef[0] * s.logps + coef[1] * s.kl + coef[2] * s.logratio)

    return f


def _assert_stats_close(a, b):
    for name in ("logps", "ref_logps", "logratio", "kl", "n_tokens"):
        x, y = np.array(getattr(a, name)), np.array(getattr(b, name))
        assert x.shape == y.shape, name
        # logratio = logps - ref_logps: its rounding is that of the two sums it subtracts
        ref = np.abs(np.array(a.logps)).max() if name == "logratio" else np.abs(x).max()
        tol = RTOL * max(ref, 1e-3) + 1e-6
        assert np.abs(x - y).max() <= tol, (name, x, y)


def _assert_grads_close(ga, gb):
    ga, gb = dict(tree_flatten(ga)), dict(tree_flatten(gb))
    assert ga.keys() == gb.keys() and ga
    for k in ga:
        x, y = np.array(ga[k]), np.array(gb[k])
        scale = np.abs(x).max()
        assert scale > 0, f"gradient of {k} is zero: the test would not see a wrong path"
        assert np.abs(x - y).max() <= RTOL * scale, (k, np.abs(x - y).max(), scale)


def _check(model, batch, reference_model=None, chunk_size=8, avgs=(False,), **kw):
    for avg in avgs:
        plain = model_statistics(model, batch, reference_model=reference_model, average_log_prob=avg)
        fast = batch_statistics(
            model, batch, reference_model=reference_model, average_log_prob=avg, chunk_size=chunk_size, **kw
        )
        _assert_stats_close(plain, fast)
        coef = _coef(plain.logps.shape[0])
        _, gp = nn.value_and_grad(
            model, _loss(model_statistics, batch, coef, reference_model=reference_model, average_log_prob=avg)
        )(model)
        _, gf = nn.value_and_grad(
            model,
            _loss(
                batch_statistics,
                batch,
                coef,
                reference_model=reference_model,
                average_log_prob=avg,
                chunk_size=chunk_size,
                **kw,
            ),
        )(model)
        _assert_grads_close(gp, gf)


@pytest.mark.parametrize("tied", [False, True])
def test_llama_lora_values_and_gradients(tied):
    model = random_lora(_llama(tied))
    batch = _batch()
    # policy and reference really differ, so KL and log-ratio gradients are exercised
    s = model_statistics(model, batch)
    assert float(mx.min(s.kl)) > 1e-3 and float(mx.max(mx.abs(s.logratio))) > 1e-3
    _check(model, batch, chunk_size=8, avgs=(False, True))  # 33 scored positions -> 5 chunks, the last one padded


def test_one_chunk_and_auto_chunk_size():
    model = random_lora(_llama(False))
    batch = _batch()
    plain = model_statistics(model, batch)
    for c in (None, 1000):
        _assert_stats_close(plain, batch_statistics(model, batch, chunk_size=c))


def test_default_chunk_size():
    assert default_chunk_size(262144) == 64  # 64 MiB of float32 logits per chunk
    assert default_chunk_size(32000) == 512
    assert default_chunk_size(100) == 1024
    assert default_chunk_size(10**8) == 8


def test_gemma3_text_tied():
    mx.random.seed(0)
    args = gemma3_text.ModelArgs(
        model_type="gemma3_text",
        hidden_size=64,
        num_hidden_layers=2,
        intermediate_size=128,
        num_attention_heads=2,
        head_dim=32,
        rms_norm_eps=1e-6,
        vocab_size=8000,
        num_key_value_heads=1,
        sliding_window=8,
        sliding_window_pattern=2,
    )
    model = gemma3_text.Model(args)
    model.tie_word_embeddings = True
    model.pop("lm_head")
    _check(random_lora(model), _batch(vocab=8000))


def test_final_logit_softcapping_gemma2():
    mx.random.seed(0)
    args = gemma2.ModelArgs(
        model_type="gemma2",
        hidden_size=64,
        num_hidden_layers=2,
        intermediate_size=128,
        num_attention_heads=2,
        head_dim=32,
        rms_norm_eps=1e-6,
        vocab_size=8000,
        num_key_value_heads=1,
        final_logit_softcapping=0.5,  # small cap: tanh is far from linear at these logits
    )
    model = random_lora(gemma2.Model(args))
    plan = stats.find_head_plan(model)
    assert plan.cap == 0.5
    _check(model, _batch(vocab=8000))


def test_trainable_head_takes_the_checkpoint_route():
    model = random_lora(_llama(False))
    model.lm_head = LoRALinear.from_base(model.lm_head, r=4, scale=2.0)
    model.lm_head.lora_b = 0.05 * mx.random.normal(model.lm_head.lora_b.shape, key=mx.random.key(7))
    assert stats.has_trainable(stats.find_head_plan(model).module)
    assert "lm_head.lora_b" in dict(tree_flatten(model.trainable_parameters()))
    _check(model, _batch())


def test_separate_reference_model():
    model = random_lora(_llama(False, seed=0))
    ref = _llama(False, seed=1)
    ref.freeze()
    _check(model, _batch(), reference_model=ref)


def test_not_differentiable_mode_values():
    model = random_lora(_llama(False))
    batch = _batch()
    _assert_stats_close(
        model_statistics(model, batch), batch_statistics(model, batch, differentiable=False, chunk_size=8)
    )


def test_fast_false_is_the_plain_path():
    model = random_lora(_llama(True))
    batch = _batch()
    a, b = model_statistics(model, batch), batch_statistics(model, batch, fast=False)
    for x, y in zip(a, b):
        assert np.array_equal(np.array(x), np.array(y))


def test_unknown_logit_transform_falls_back_with_a_warning():
    class Scaled(llama.Model):  # logits = 2 * lm_head(h): not what the head plan knows
        def __call__(self, inputs, cache=None, input_embeddings=None):
            return 2.0 * super().__call__(inputs, cache, input_embeddings)

    mx.random.seed(0)
    model = Scaled(_llama(False).args)
    random_lora(model)
    batch = _batch()
    stats._WARNED.discard(type(model).__module__)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        fast = batch_statistics(model, batch)
    assert any("full-logits" in str(x.message) for x in w)
    _assert_stats_close(model_statistics(model, batch), fast)


def test_grad_checkpoint_keeps_values_and_gradients():
    mx.random.seed(0)
    args = qwen2.ModelArgs(
        model_type="qwen2",
        hidden_size=64,
        num_hidden_layers=2,
        intermediate_size=128,
        num_attention_heads=4,
        rms_norm_eps=1e-6,
        vocab_size=V,
        num_key_value_heads=2,
    )
    model = random_lora(qwen2.Model(args))
    batch = _batch()
    coef = _coef(4)
    _, g_ref = nn.value_and_grad(model, _loss(model_statistics, batch, coef))(model)
    cls = type(model.layers[0])
    saved = cls.__call__
    try:
        stats.enable_grad_checkpoint(model)
        stats.enable_grad_checkpoint(model)  # second call must not wrap twice
        assert cls.__call__ is not saved and getattr(cls, "_tdpo_grad_checkpoint", False)
        _, g_ck = nn.value_and_grad(model, _loss(batch_statistics, batch, coef, chunk_size=8))(model)
        _assert_grads_close(g_ref, g_ck)
    finally:
        cls.__call__ = saved
        cls._tdpo_grad_checkpoint = False


def test_enable_grad_checkpoint_needs_layers():
    with pytest.raises(ValueError, match="no transformer layers"):
        stats.enable_grad_checkpoint(nn.Linear(2, 2))


@pytest.mark.slow
def test_real_gemma_fast_equals_plain(gemma_dir):
    """Gemma 3 270M (vocab 262,144), one short pair, LoRA on the last 2 blocks: values within
    1e-4; LoRA gradients within 5e-3 in norm -- MLX's float32 CPU reductions over 262k logits
    are themselves only accurate to a few 1e-4 here (both paths, measured against float64)."""
    from mlx_lm.utils import load

    model, _ = load(gemma_dir)
    mx.random.seed(0)
    random_lora(model, rank=8, num_layers=2)
    for _, m in model.named_modules():
        if hasattr(m, "lora_b"):
            m.lora_b = m.lora_b * 0.02  # keep the policy close to the base (KL of a few nats)
    rng = np.random.default_rng(0)
    batch = make_batch(
        [
            EncodedPair(
                rng.integers(10, 262144, 8).tolist(),
                rng.integers(10, 262144, 12).tolist(),
                rng.integers(10, 262144, 10).tolist(),
            )
        ]
    )
    plain = model_statistics(model, batch)
    fast = batch_statistics(model, batch)
    _assert_stats_close(plain, fast)
    coef = _coef(2)
    _, gp = nn.value_and_grad(model, _loss(model_statistics, batch, coef))(model)
    _, gf = nn.value_and_grad(model, _loss(batch_statistics, batch, coef))(model)
    gp, gf = dict(tree_flatten(gp)), dict(tree_flatten(gf))
    diff = sum(float(mx.sum((gp[k] - gf[k]) ** 2)) for k in gp) ** 0.5
    norm = sum(float(mx.sum(gp[k] ** 2)) for k in gp) ** 0.5
    assert norm > 0 and diff / norm < 5e-3


def test_dora_values_and_gradients():
    model = _llama(False)
    model.freeze()
    linear_to_lora_layers(model, 2, {"rank": 4, "scale": 2.0, "dropout": 0.0}, use_dora=True)
    key = mx.random.key(5)
    for _, m in model.named_modules():
        if hasattr(m, "lora_b"):
            key, sub = mx.random.split(key)
            m.lora_b = 0.05 * mx.random.normal(m.lora_b.shape, key=sub)
    mx.eval(model.parameters())
    _check(model, _batch())


@pytest.mark.parametrize("tied", [True, False])
def test_qlora_quantized_head_values_and_gradients(tied):
    """A quantized base (QLoRA): the tied head is a QuantizedEmbedding (target rows looked up,
    dequantized), the untied one a QuantizedLinear (target rows through the one-hot VJP)."""
    model = _llama(tied)
    nn.quantize(model, group_size=64, bits=4)
    head = stats.find_head_plan(model).module
    assert isinstance(head, nn.QuantizedEmbedding if tied else nn.QuantizedLinear)
    _check(random_lora(model), _batch())
