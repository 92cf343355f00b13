"""The prompt once: chosen and rejected rows continue one pass of their shared prompt.

A batch's rows i (chosen) and B + i (rejected) start with the same prompt. Computed row by row,
the transformer body runs that prompt twice, for the policy and again for the reference: on HH
(prompts p50 91 tokens, responses p50 31) about 37% of the body's tokens, 25% at the benchmark's
256 + 256. Here the body runs in two calls instead:

1. the B prompts without their last token, left-padded to a common width W, into a key/value
   cache (mlx-lm's :class:`~mlx_lm.models.cache.BatchKVCache`: per-row RoPE offsets, so every
   real token keeps its position, and a mask that hides the left padding);
2. the cache repeated for the 2B rows, then each row's last prompt token followed by its response
   (all but the last token), right-padded to a common width R.

Call 2's hidden states are exactly those of the scored positions (target t predicts response
token t), so the LM head sees the same (2B, R, D) it would gather from the full rows. Attention
is the same computation over the same keys; the only change is which rows a matmul batches, so
values agree with the row-by-row pass to float32 rounding. Gradients are exact: the repeat's
vector-Jacobian product sums the chosen and rejected contributions into the one prompt pass.

Models: any mlx-lm causal LM whose body takes ``cache=`` and whose layers all use plain
attention caches (KVCache; RotatingKVCache layers get their window from the mask, which mlx-lm
builds from the cache: exact at any length). :func:`prompt_sharing_ok` checks a model once
numerically; models that fail (or have recurrent layers) use the full rows, and so do models
whose blocks are checkpointed (``--grad-checkpoint``): mlx's ``mx.checkpoint`` passes no gradient
to arrays a block reads from outside its arguments, such as the cached prompt keys.
"""

from __future__ import annotations

from typing import NamedTuple

import mlx.core as mx
import numpy as np
from mlx_lm.models.cache import BatchKVCache, KVCache, RotatingKVCache

from .data.batches import EncodedPair, make_batch
from .models import eval_mode


class _PrefixCache(BatchKVCache):
    """mlx-lm's left-padded batch cache for the two calls, without state that accumulates.

    The prompt call stores its keys and values (and sets the offsets); after :meth:`repeated`
    the response call reads prefix + new keys and stores nothing. So a block that runs twice
    (mx.checkpoint recomputes blocks in backward under ``--grad-checkpoint``) sees the same
    cache both times; no preallocated zero buffer and no in-place slice writes either."""

    frozen = False

    def update_and_fetch(self, keys, values):
        if self.frozen:
            return mx.concatenate([self.keys, keys], axis=2), mx.concatenate([self.values, values], axis=2)
        self.keys, self.values = keys, values
        self._idx = keys.shape[2]
        self.offset = self._idx - self.left_padding
        return keys, values

    def repeated(self, n: int) -> _PrefixCache:
        """The filled cache for n copies of its rows, stacked (rows [0, B), then [B, 2B), ...)."""
        out = _PrefixCache([])
        out.keys = mx.concatenate([self.keys] * n)
        out.values = mx.concatenate([self.values] * n)
        out.left_padding = mx.concatenate([self.left_padding] * n)
        out.offset = mx.concatenate([self.offset] * n)
        out._idx = self._idx
        out.frozen = True
        return out


class SharedLayout(NamedTuple):
    """A :class:`~tdpo_mlx.data.Batch` laid out for the two calls (module notes).

    Attributes:
        prompt_inputs: (B, W) int32, each prompt without its last token, left-padded; None when
            W = 0 (every prompt is one token).
        left_padding: (B,) int, the padding of each prompt row.
        inputs: (2B, R) int32, the last prompt token then the response without its last token,
            right-padded; chosen rows first.
        targets: (2B, R) int32, the response tokens (``inputs`` shifted by one).
        mask: (2B, R) bool, the real targets (the batch's ``target_mask`` in this layout).
        prompt_tokens_saved: prompt tokens the body does not compute twice (sum of W_i = Lp_i - 1).
    """

    prompt_inputs: mx.array | None
    left_padding: list
    inputs: mx.array
    targets: mx.array
    mask: mx.array
    prompt_tokens_saved: int


def shared_layout(batch) -> SharedLayout | None:
    """The two-call layout of ``batch``, or None when its rows cannot share a prompt (a prompt
    of 0 tokens, or a chosen/rejected pair whose prompt ids differ) or when sharing would run
    more body positions than the full rows: B W + 2B R > 2B (L - 1), padding included. That
    happens when the longest prompt and the longest response belong to different pairs (44% of
    the 547 HH training batches of 4 pairs at max length 512; the row layout's right padding is
    then the smaller waste)."""
    ids = np.array(batch.input_ids)
    lengths = np.array(batch.lengths)
    prompt = np.array(batch.prompt_lengths)
    b = batch.n_pairs
    if prompt.min() < 1 or np.any(prompt[:b] != prompt[b:]):
        return None
    if any(np.any(ids[i, : prompt[i]] != ids[b + i, : prompt[i]]) for i in range(b)):
        return None
    w = int(prompt[:b].max()) - 1
    resp = lengths - prompt  # response tokens per row = scored targets per row
    r = int(resp.max())
    if b * w + 2 * b * r > 2 * b * (ids.shape[1] - 1):
        return None
    left = [w - int(p - 1) for p in prompt[:b]]
    prompt_rows = np.zeros((b, w), dtype=np.int32)
    for i in range(b):
        prompt_rows[i, left[i] :] = ids[i, : prompt[i] - 1]
    inputs = np.zeros((2 * b, r), dtype=np.int32)
    targets = np.zeros((2 * b, r), dtype=np.int32)
    for j in range(2 * b):
        p, n = prompt[j], resp[j]
        inputs[j, :n] = ids[j, p - 1 : p - 1 + n]
        targets[j, :n] = ids[j, p : p + n]
    mask = np.arange(r)[None, :] < resp[:, None]
    return SharedLayout(
        mx.array(prompt_rows) if w > 0 else None,
        left,
        mx.array(inputs),
        mx.array(targets),
        mx.array(mask),
        int(np.sum(prompt[:b] - 1)),
    )


def shared_hidden(body, layout: SharedLayout) -> mx.array:
    """(2B, R, D) final hidden states at the scored positions, the prompts computed once.

    Args:
        body: the transformer body of an mlx-lm causal LM (``model.model``), called as
            ``body(inputs, cache=...)``.
        layout: from :func:`shared_layout`.
    """
    cache = None
    if layout.prompt_inputs is not None:
        cache = [_PrefixCache(layout.left_padding) for _ in body.layers]
        body(layout.prompt_inputs, cache=cache)  # fills the caches; its hidden output is unused
        cache = [c.repeated(2) for c in cache]
    return body(layout.inputs, cache=cache)


_VERDICT = "_tdpo_prompt_sharing_ok"


def prompt_sharing_ok(model, body) -> bool:
    """Whether ``body`` (the body of ``model``) gives the same hidden states with the prompt
    shared as over full rows: structurally (a ``layers`` list, only KVCache/RotatingKVCache in
    ``model.make_cache()``) and numerically on a 2-pair batch with unequal prompts, once per
    model (the verdict is stored on it). Inside ``mx.compile`` the numeric check is skipped."""
    verdict = getattr(model, _VERDICT, None)
    if verdict is not None:
        return verdict
    layers = getattr(body, "layers", None)
    if not layers:
        return _store(model, False)
    if any(getattr(type(layer), "_tdpo_grad_checkpoint", False) for layer in layers):
        return False  # mx.checkpoint'ed blocks drop the gradient that reaches the cached prompt keys
    make_cache = getattr(model, "make_cache", None)
    if make_cache is not None and not all(type(c) in (KVCache, RotatingKVCache) for c in make_cache()):
        return _store(model, False)
    x = list(range(3, 14))
    batch = make_batch([EncodedPair(x[:4], x[4:7], x[7:9]), EncodedPair(x[:2], x[9:11], x[3:4])])
    layout = shared_layout(batch)
    try:
        # the scored positions, row by row in order, in each layout (no dropout)
        with eval_mode(model):
            shared = np.array(shared_hidden(body, layout))[np.array(layout.mask)]
            full = np.array(body(batch.input_ids[:, :-1]))[np.array(batch.target_mask)]
        diff = float(np.abs(shared - full).max())
        scale = max(1.0, float(np.abs(full).max()))
    except (RuntimeError, ValueError, TypeError) as e:
        if "eval" in str(e) or "transform" in str(e):
            return True  # under mx.compile: trust the structure, check next time
        return _store(model, False)
    return _store(model, diff <= 1e-4 * scale)


def _store(model, verdict: bool) -> bool:
    object.__setattr__(model, _VERDICT, verdict)
    return verdict
