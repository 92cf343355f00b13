"""The prompt once (tdpo_mlx.shared_prompt): the two-call body pass against full rows.

Each model case checks, with sharing verified active (a spy counts the shared calls):
statistics and LoRA gradients with the prompt shared equal the same path over full rows within
1e-5 relative, and the plain full-logits definition within the fast path's usual 1e-4.
"""

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten
from mlx_lm.models import gemma2, gemma3_text, llama, qwen2
from support.models import random_lora

from tdpo_mlx import fast_stats, shared_prompt
from tdpo_mlx.data import EncodedPair, make_batch
from tdpo_mlx.fast_stats import batch_statistics
from tdpo_mlx.stats import model_statistics

V = 4000
TIGHT = 1e-5


COMMON = dict(hidden_size=64, num_hidden_layers=2, intermediate_size=128, rms_norm_eps=1e-6, vocab_size=V)


def _llama(tied=False, seed=0):
    mx.random.seed(seed)
    return llama.Model(
        llama.ModelArgs(
            model_type="llama", num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tied, **COMMON
        )
    )


def _qwen2():
    mx.random.seed(0)
    return qwen2.Model(qwen2.ModelArgs(model_type="qwen2", num_attention_heads=4, num_key_value_heads=2, **COMMON))


def _gemma3(window):
    mx.random.seed(0)
    args = gemma3_text.ModelArgs(
        model_type="gemma3_text",
        num_attention_heads=2,
        head_dim=32,
        num_key_value_heads=1,
        sliding_window=window,
        sliding_window_pattern=2,
        **COMMON,
    )
    model = gemma3_text.Model(args)
    model.tie_word_embeddings = True
    model.pop("lm_head")
    return model


class _SoftcapLlama(llama.Model):
    """Llama with Gemma 2's final logit softcap (gemma2 itself cannot share: see below)."""

    final_logit_softcapping = 0.5

    def __call__(self, inputs, cache=None, input_embeddings=None):
        return 0.5 * mx.tanh(super().__call__(inputs, cache, input_embeddings) / 0.5)


def _softcap():
    mx.random.seed(0)
    return _SoftcapLlama(_llama().args)


def _batch(prompts=(7, 3, 1), chosen=(5, 8, 4), rejected=(9, 2, 6), seed=0):
    """Pairs with unequal prompts (one of a single token) and responses: left and right padding."""
    rng = np.random.default_rng(seed)

    def ids(n):
        return rng.integers(3, V, n).tolist()

    return make_batch([EncodedPair(ids(p), ids(c), ids(r)) for p, c, r in zip(prompts, chosen, rejected)])


def _loss(batch, coef, **kw):
    def f(model):
        s = batch_statistics(model, batch, chunk_size=8, **kw)
        return mx.sum(coef[0] * s.logps + coef[1] * s.kl + coef[2] * s.logratio)

    return f


def _close(a, b, rtol):
    a, b = np.array(a), np.array(b)
    scale = max(np.abs(b).max(), 1e-3)
    return np.abs(a - b).max() <= rtol * scale + 1e-7, (np.abs(a - b).max(), scale)


class _Spy:
    def __init__(self, monkeypatch):
        self.calls = 0
        real = fast_stats.shared_hidden

        def counted(body, layout):
            self.calls += 1
            return real(body, layout)

        monkeypatch.setattr(fast_stats, "shared_hidden", counted)


def _check(model, batch, monkeypatch, reference_model=None, kl_grad="all"):
    spy = _Spy(monkeypatch)
    kw = dict(reference_model=reference_model, kl_grad=kl_grad)
    shared = batch_statistics(model, batch, chunk_size=8, **kw)
    assert spy.calls == 2, "the prompt was not shared: the test would compare the full rows with themselves"
    rows = batch_statistics(model, batch, chunk_size=8, share_prompt=False, **kw)
    plain = model_statistics(model, batch, reference_model=reference_model)
    for name in ("logps", "ref_logps", "kl", "n_tokens"):
        ok, info = _close(getattr(shared, name), getattr(rows, name), TIGHT)
        assert ok, (name, info)
        ok, info = _close(getattr(shared, name), getattr(plain, name), 1e-4)
        assert ok, (name, "plain", info)
    coef = [
        mx.array(np.random.default_rng(i).standard_normal(shared.logps.shape[0]).astype(np.float32)) for i in (3, 4, 5)
    ]
    _, g_shared = nn.value_and_grad(model, _loss(batch, coef, **kw))(model)
    _, g_rows = nn.value_and_grad(model, _loss(batch, coef, share_prompt=False, **kw))(model)
    g_shared, g_rows = dict(tree_flatten(g_shared)), dict(tree_flatten(g_rows))
    assert g_shared.keys() == g_rows.keys() and g_shared
    for k in g_rows:
        assert np.abs(np.array(g_rows[k])).max() > 0, f"gradient of {k} is zero: the test would not see a wrong path"
        ok, info = _close(g_shared[k], g_rows[k], TIGHT)
        assert ok, (k, info)


MODELS = {
    "llama-untied": lambda: _llama(False),
    "llama-tied": lambda: _llama(True),
    "qwen2": _qwen2,
    "gemma3-window-shorter-than-rows": lambda: _gemma3(window=4),
    "llama-softcap": _softcap,
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_shared_prompt_equals_full_rows(name, monkeypatch):
    _check(random_lora(MODELS[name]()), _batch(), monkeypatch)


def test_tdpo2_kl_grad_rejected(monkeypatch):
    _check(random_lora(_llama()), _batch(), monkeypatch, kl_grad="rejected")


def test_separate_reference_model(monkeypatch):
    ref = _llama(seed=1)
    ref.freeze()
    _check(random_lora(_llama()), _batch(), monkeypatch, reference_model=ref)


def test_dora(monkeypatch):
    _check(random_lora(_llama(), dora=True), _batch(), monkeypatch)


def test_qlora(monkeypatch):
    model = _llama(True)
    nn.quantize(model, group_size=64, bits=4)
    _check(random_lora(model), _batch(), monkeypatch)


def test_every_prompt_one_token(monkeypatch):
    """W = 0: no prompt call, the response call alone."""
    batch = _batch(prompts=(1, 1), chosen=(4, 6), rejected=(5, 2))
    assert shared_prompt.shared_layout(batch).prompt_inputs is None
    spy = _Spy(monkeypatch)
    model = random_lora(_llama())
    a = batch_statistics(model, batch, chunk_size=8)
    b = batch_statistics(model, batch, chunk_size=8, share_prompt=False)
    assert spy.calls == 2
    for name in ("logps", "kl"):
        assert _close(getattr(a, name), getattr(b, name), TIGHT)[0]


def test_layout_by_hand():
    batch = make_batch(
        [EncodedPair([5, 6, 7], [9, 10], [14]), EncodedPair([8], [11, 12, 13], [15, 16])],
        pad_id=0,
    )
    lay = shared_prompt.shared_layout(batch)
    assert lay.left_padding == [0, 2]
    assert lay.prompt_inputs.tolist() == [[5, 6], [0, 0]]
    assert lay.inputs.tolist() == [[7, 9, 0], [8, 11, 12], [7, 0, 0], [8, 15, 0]]
    assert lay.targets.tolist() == [[9, 10, 0], [11, 12, 13], [14, 0, 0], [15, 16, 0]]
    assert lay.mask.tolist() == [[1, 1, 0], [1, 1, 1], [1, 0, 0], [1, 1, 0]]
    assert lay.prompt_tokens_saved == 2
    # the layout's mask scores exactly the batch's response targets
    assert int(mx.sum(lay.mask)) == int(mx.sum(batch.target_mask))


def test_sharing_only_when_it_runs_fewer_positions():
    """A long prompt in one pair and a long response in the other: the two calls would run
    2 * 9 + 4 * 10 = 58 positions against the rows' 4 * 10 = 40, so the rows are used."""
    long_prompt = EncodedPair(list(range(3, 13)), [20], [21])
    long_response = EncodedPair([3], list(range(20, 30)), list(range(30, 40)))
    assert shared_prompt.shared_layout(make_batch([long_prompt, long_response])) is None
    assert shared_prompt.shared_layout(make_batch([long_prompt, long_prompt])) is not None


def test_pairs_with_different_prompts_are_not_shared():
    batch = make_batch([EncodedPair([5, 6, 7], [9, 10], [14])])
    ids = np.array(batch.input_ids)
    ids[1, 1] = 99  # the rejected row's prompt no longer equals the chosen one's
    batch.input_ids = mx.array(ids)
    assert shared_prompt.shared_layout(batch) is None


def test_gemma2_is_checked_and_uses_full_rows(monkeypatch):
    """gemma2's attention reshapes queries to 5-D, which mlx-lm's batch mask does not fit: the
    one-time check says no, and the statistics still equal the plain definition."""
    mx.random.seed(0)
    args = gemma2.ModelArgs(model_type="gemma2", num_attention_heads=2, head_dim=32, num_key_value_heads=1, **COMMON)
    model = random_lora(gemma2.Model(args))
    spy = _Spy(monkeypatch)
    batch = _batch()
    fast = batch_statistics(model, batch, chunk_size=8)
    assert spy.calls == 0 and not shared_prompt.prompt_sharing_ok(model, model.model)
    assert _close(fast.kl, model_statistics(model, batch).kl, 1e-4)[0]


def test_grad_checkpointed_blocks_use_full_rows():
    model = _llama()
    cls = type(model.layers[0])
    saved = cls.__call__
    try:
        fast_stats.enable_grad_checkpoint(model)
        assert not shared_prompt.prompt_sharing_ok(model, model.model)
    finally:
        cls.__call__ = saved
        cls._tdpo_grad_checkpoint = False
