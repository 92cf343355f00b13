"""The trainer's statistics path: the same quantities as :func:`tdpo_mlx.stats.model_statistics`
without any (N, T, V) tensor (response-only LM head, chunked KL, custom VJP).
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten
from mlx_lm.tuner.trainer import grad_checkpoint

from . import cpu_head
from .head_plan import HeadPlan, find_head_plan, post_logits, verified_plan
from .models import adapters_disabled
from .shared_prompt import prompt_sharing_ok, shared_hidden, shared_layout
from .stats import SequenceStatistics, model_statistics, vocab_sum

# ---------------------------------------------------------------------------------------------
# Fast, memory-frugal path (the trainer's entry point): response-only LM head, chunked KL.
# ---------------------------------------------------------------------------------------------
#
# Same quantities as :func:`model_statistics`, computed without any (N, T, V) tensor:
#   1. run the transformer *body* (``model.model``) of the policy and of the reference
#      -> final hidden states (N, L-1, D);
#   2. gather the hidden states of the P scored (response-target) positions -> (P, D);
#   3. per chunk of C positions: logits of policy and reference from one stacked (2C, V) head
#      product, log-softmax, target log-prob and KL(pi_ref || pi_theta) (TDPO Eq. 8, one position);
#   4. add the per-position values back into per-row sums.
# Backward: the statistics are linear in the upstream gradient w.r.t. the policy logits,
#   d tok_t / d z = (onehot(y_t) - p_theta) * c'(z),   d kl_t / d z = (p_theta - p_ref) * c'(z)
# (c = the model's final logit transform, e.g. Gemma 2's softcap), so the forward pass maps both
# gradients through the frozen head right away (one stacked product [p_theta c'; p_ref c'] @ W,
# the one-hot part as the target's head row) into two (C, D) arrays and the custom VJP only
# combines them: no logits are kept or recomputed for backward. Under value_and_grad nothing is
# evaluated inside the chunk (evaluated tracers would keep every chunk's (C, V) blocks until
# backward: 21 GB instead of 5.6 GB at the benchmark shape). A head with trainable
# parameters (LoRA on lm_head, trained embeddings) takes the mx.checkpoint route instead.
# Metal: mlx-lm's fused ``tuner.losses.kl_div_loss`` computes the same per-position KL, but its
# VJP needs both (C, V) logits again in backward; the precomputed-gradient design above keeps
# no logits at all, so the portable path is used on every backend (untested on Metal here).
# CPU backend: training goes through tdpo_mlx.cpu_step (the same statistics, the head in NumPy,
# ~2.5x faster there) and evaluation through the NumPy kernel here (_numpy_values_chunk); the
# MLX kernel below is the Metal/CUDA path and the fallback for heads NumPy cannot read.
# Float32 note: MLX's CPU sum over V = 262,144 values measured 4e-4 relative error; both paths
# sum over the vocabulary in blocks of 64 (:func:`tdpo_mlx.stats.vocab_sum`, ~1e-9).

_CHUNK_BYTES = 64 * 2**20  # target size of one (C, V) float32 chunk of logits


def _chunk_terms(z, tgt, scale, cap, want_grad):
    """Per-position statistics from the stacked raw logits of one chunk; what backward needs.

    Args:
        z: (2C, V) raw head outputs, policy rows [0, C) then reference rows [C, 2C).
        tgt: (C,) int32 targets.

    With y = c(z) the model's final logits, lse = logsumexp(y), p = softmax(y):
    tok = y_p[t] - lse_p, ref_tok = y_r[t] - lse_r and
    kl = sum_v p_r(v) (y_r(v) - y_p(v)) + (m_p - m_r) + log(s_p / s_r)  (TDPO Eq. 8, one
    position; m = max, s = sum of exp(y - m)), the grouped form: the logit differences are taken
    first (exact when the two are close) and the sums are :func:`tdpo_mlx.stats.vocab_sum`'s, so
    float32 stays within ~1e-7 of the true KL near zero
    (the textbook sum of p_r (log p_r - log p_p) drifts to ~-1e-6 at V = 262k); p_r = 0 (also
    -inf logits) adds 0. One exponential pass over the stacked rows; no (C, V) one-hot.

    Returns (tok, ref_tok, kl) each (C,) float32 and, with ``want_grad``, also ``p`` (2C, V):
    the softmax of both sides times c'(z_p) (the policy's logit transform derivative, on both
    halves), and ``dc_t`` (C,) = c'(z_p[t]). Then d tok / d z_p = onehot(t) dc_t - p[:C] and
    d kl / d z_p = p[:C] - p[C:], so both head maps come from one product ``p @ W``.
    """
    c = tgt.shape[0]
    z = z.astype(mx.float32)
    y = post_logits(z, scale, cap)
    m = mx.max(y, axis=-1, keepdims=True)
    e = mx.exp(y - m)
    s = vocab_sum(e)
    lse = m + mx.log(s)
    idx = mx.concatenate([tgt, tgt])[:, None]
    tok2 = (mx.take_along_axis(y, idx, axis=-1) - lse)[:, 0]
    p = e * (1.0 / s)
    pr = p[c:]
    cross = vocab_sum(pr * mx.where(pr > 0, y[c:] - y[:c], 0.0))[:, 0]
    # lse_p - lse_r as (m_p - m_r) + log(s_p / s_r): each lse (~10-20) is rounded to ~1e-6
    kl = cross + (m[:c, 0] - m[c:, 0]) + mx.log(s[:c, 0] / s[c:, 0])
    tok, ref_tok = tok2[:c], tok2[c:]
    if not want_grad:
        return tok, ref_tok, kl
    if cap:
        dc = scale * (1.0 - mx.square(mx.tanh(z[:c] * (scale / cap))))
        dc_t = mx.take_along_axis(dc, tgt[:, None], axis=-1)[:, 0]
        p = (p.reshape(2, c, -1) * dc[None]).reshape(2 * c, -1)
    else:
        dc_t = mx.full(tok.shape, scale, mx.float32)
        if scale != 1.0:
            p = p * scale
    return tok, ref_tok, kl, p, dc_t


#: Set "on" to False to use MLX's chunk kernel on the CPU backend too (tests, benchmarks).
NUMPY_HEAD = {"on": True}


def _terms_fn(scale, cap, want_grad):
    """:func:`_chunk_terms` for fixed constants, with MLX's own ``exp``."""

    def fn(z, tgt):
        return _chunk_terms(z, tgt, scale, cap, want_grad)

    return fn


def _numpy_values_chunk(pol: HeadPlan, ref: HeadPlan, work):
    """No-gradient chunk function computed by :func:`tdpo_mlx.cpu_head.chunk_terms` (CPU
    backend, plain float32 heads), or None where that kernel does not apply. Not for use under
    a gradient transform: evaluating a traced body there keeps all its intermediates
    (:mod:`tdpo_mlx.cpu_step` is the training path)."""
    w_pol, w_ref = cpu_head.head_weight(pol), cpu_head.head_weight(ref)
    if w_pol is None or w_ref is None or not NUMPY_HEAD["on"]:
        return None

    def terms(hp, hr, tgt):
        hp, hr, tgt = hp.astype(mx.float32), hr.astype(mx.float32), tgt.astype(mx.int32)
        mx.eval(hp, hr, tgt)
        out = cpu_head.chunk_terms(
            w_pol, w_ref, np.asarray(hp), np.asarray(hr), np.asarray(tgt), pol.scale, pol.cap, "none", work
        )
        return tuple(mx.array(v) for v in out)

    return terms


def _target_rows(plan: HeadPlan, tgt: mx.array, h: mx.array) -> mx.array:
    """(C, D) rows of the head's weight for the targets: d head(h)[t] / d h, without a one-hot.

    Tied (possibly quantized) embeddings look the rows up; an ``nn.Linear`` gathers them;
    other heads take the VJP of a one-hot."""
    module = plan.module
    if plan.head is not module and hasattr(module, "as_linear"):
        return module(tgt).astype(h.dtype)
    if type(module) is nn.Linear:
        return module.weight[tgt].astype(h.dtype)
    onehot = (mx.arange(plan.vocab)[None, :] == tgt[:, None]).astype(mx.float32)
    _, (rows,) = mx.vjp(lambda x: plan.head(x).astype(mx.float32), [h], [onehot])
    return rows


def _frozen_head_chunk(pol: HeadPlan, ref: HeadPlan, differentiable: bool, kl_grad: bool = True):
    """Chunk function (hp, hr, tgt) -> (tok, ref_tok, kl) with a precomputed-gradient VJP.

    Forward (numeric, not differentiated by MLX): the policy and reference logits
    from one stacked head product when both use the same head, the statistics kernel, and both
    gradient maps through the head from one stacked product ``A = p @ W`` (:func:`_chunk_terms`):
    d tok / d h = c'(z_t) W[t] - A_p,  d kl / d h = A_p - A_r.
    ``kl_grad`` False skips A_r (rows whose KL gets no gradient, e.g. TDPO2's chosen rows).
    """
    same_head = pol.module is ref.module

    def logits(hp, hr):
        if same_head:
            return pol.head(mx.concatenate([hp, hr]))
        return mx.concatenate([pol.head(hp), ref.head(hr)])

    if not differentiable:
        terms = _terms_fn(pol.scale, pol.cap, False)

        def plain(hp, hr, tgt):
            return terms(logits(hp, mx.stop_gradient(hr)), tgt)

        return plain

    terms = _terms_fn(pol.scale, pol.cap, True)

    @mx.custom_function
    def chunk(hp, hr, tgt):
        c = hp.shape[0]
        tok, ref_tok, kl, p, dc_t = terms(logits(hp, hr), tgt)
        if not kl_grad:
            p = p[:c]
        h = mx.concatenate([hp, hp]) if kl_grad else hp  # the head is linear: any h gives its VJP
        _, (a,) = mx.vjp(lambda x: pol.head(x).astype(mx.float32), [h], [p])
        d_tok = dc_t[:, None] * _target_rows(pol, tgt, hp).astype(mx.float32) - a[:c]
        d_kl = a[:c] - a[c:] if kl_grad else mx.zeros_like(d_tok)
        # No eval here: evaluating arrays inside the value_and_grad trace keeps every chunk's
        # (C, V) blocks alive until backward (measured: 21 GB instead of 5.9 GB at the benchmark shape).
        return (tok, ref_tok, kl, d_tok.astype(hp.dtype), d_kl.astype(hp.dtype))

    @chunk.vjp
    def chunk_vjp(primals, cotangents, outputs):
        hp, hr, tgt = primals
        g_tok, _, g_kl = cotangents[:3]
        d_tok, d_kl = outputs[3], outputs[4]
        dh = g_tok[:, None].astype(d_tok.dtype) * d_tok
        if kl_grad:
            dh = dh + g_kl[:, None].astype(d_kl.dtype) * d_kl
        return dh, mx.zeros_like(hr), mx.zeros_like(tgt)

    def run(hp, hr, tgt):
        return chunk(hp, hr, tgt)[:3]

    return run


def _trainable_head_chunk(pol: HeadPlan, ref: HeadPlan):
    """Chunk function for a head with trainable parameters: mx.checkpoint recomputes the
    chunk's logits in backward (gradients reach the head's parameters and the hidden states).
    Differentiated by MLX, so uncompiled, with MLX's own ``exp``."""
    module = pol.module

    def run(hp, hr, tgt):
        def inner(params, hp, hr):  # targets are closed over: no VJP w.r.t. indices
            module.update(params)
            z = mx.concatenate([pol.head(hp), mx.stop_gradient(ref.head(hr))])
            return _chunk_terms(z, tgt, pol.scale, pol.cap, False)

        return mx.checkpoint(inner)(module.trainable_parameters(), hp, hr)

    return run


def _eval_if_allowed(arrays) -> bool:
    """mx.eval(arrays); False (nothing evaluated) inside mx.compile, where eval is not allowed."""
    try:
        mx.eval(arrays)
        return True
    except ValueError as e:
        if "eval" not in str(e):
            raise
        return False


def has_trainable(module) -> bool:
    """Whether ``module`` (e.g. an LM head) has trainable parameters."""

    return bool(tree_flatten(module.trainable_parameters()))


def _chunk_plan(mask: mx.array, c: int, split: int) -> list:
    """Scored positions of rows [0, split) and [split, N) as padded chunk groups.

    Returns a list of ``(idx, row_of, chunk, need_kl)``: flat indices into (N * T) (padded
    with 0 to a multiple of ``chunk``), the row of each (-1 for padding), the chunk size used
    (smaller for a small group), and whether the group's KL needs its backward map (False only
    for rows [0, split) when ``split`` < N: the chosen rows under TDPO2).
    """
    m = np.array(mask)
    n, t = m.shape
    groups = []
    for lo, hi in ((0, split), (split, n)):
        if hi <= lo:
            continue
        pos = np.flatnonzero(m[lo:hi].reshape(-1)) + lo * t
        p = int(pos.size)
        cg = c if p >= c else max(8, -(-p // 8) * 8)
        size = max(1, -(-p // cg)) * cg
        idx = np.zeros(size, dtype=np.int32)
        idx[:p] = pos
        row_of = np.full(size, -1, dtype=np.int64)
        row_of[:p] = pos // t
        groups.append((idx, row_of, cg, lo > 0 or split >= n))
    return groups


def default_chunk_size(vocab: int) -> int:
    """Positions per chunk so that one (C, V) float32 logits block is about 64 MiB, in [8, 1024]."""
    c = max(8, min(1024, _CHUNK_BYTES // (4 * max(int(vocab), 1))))
    return 1 << (c.bit_length() - 1)  # a power of two


def head_statistics(pol: HeadPlan, ref: HeadPlan, hidden, ref_hidden, targets, groups, differentiable: bool):
    """Per-position (tok, ref_tok, kl) at the scored positions of ``groups`` (:func:`_chunk_plan`)
    from final hidden states (N, T, D) of policy and reference and the (N, T) int targets, and
    the (N, P') float32 matrix that sums them into rows. The LM-head part of
    :func:`batch_statistics`."""
    n, t = targets.shape
    hidden = hidden.reshape(n * t, -1)
    ref_hidden = mx.stop_gradient(ref_hidden.reshape(n * t, -1))
    flat_targets = targets.reshape(-1)
    trainable = has_trainable(pol.module) and differentiable
    values = None if differentiable else _numpy_values_chunk(pol, ref, cpu_head.WORKSPACE)
    outs, rows = [], []
    for idx, row_of, cg, need_kl in groups:
        if trainable:
            chunk = _trainable_head_chunk(pol, ref)
        else:
            chunk = values or _frozen_head_chunk(pol, ref, differentiable, need_kl)
        idx_mx = mx.array(idx)
        hp = mx.take(hidden, idx_mx, axis=0)
        hr = mx.take(ref_hidden, idx_mx, axis=0)
        tgt = mx.take(flat_targets, idx_mx).astype(mx.int32)
        # Without gradients, finish each chunk before queuing the next (MLX allocates an op's
        # output when the op is queued, so the queue otherwise runs a few chunks' (C, V) blocks
        # ahead). With gradients nothing is evaluated here (see the module notes).
        for i in range(0, len(idx), cg):
            outs.append(chunk(hp[i : i + cg], hr[i : i + cg], tgt[i : i + cg]))
            if not differentiable:
                _eval_if_allowed(outs[-1])
        rows.append(row_of)
    tok, ref_tok, kl = (mx.concatenate(list(v)) if len(outs) > 1 else v[0] for v in zip(*outs))
    return tok, ref_tok, kl, mx.array(row_membership(groups, n))


def row_membership(groups, n: int) -> np.ndarray:
    """(N, P') float32 matrix with a 1 at (row, position) for each scored position of
    ``groups`` (:func:`_chunk_plan`; padding columns are all zero): ``member @ tok`` sums
    per-position values into rows."""
    row_of = np.concatenate([g[1] for g in groups])
    member = np.zeros((n, row_of.size), dtype=np.float32)
    live = row_of >= 0
    member[row_of[live], np.flatnonzero(live)] = 1.0
    return member


def sequence_statistics(tok, ref_tok, kl, member, mask, average_log_prob: bool) -> SequenceStatistics:
    """Per-row :class:`SequenceStatistics` from per-position (P',) values and the (N, P')
    membership (:func:`row_membership`); ``mask`` (N, T) counts the scored tokens."""
    n_tok = mx.sum(mask.astype(mx.float32), axis=-1)
    logps = member @ tok
    ref_logps = mx.stop_gradient(member @ ref_tok)
    seq_kl = member @ kl
    if average_log_prob:
        d = mx.maximum(n_tok, 1.0)
        logps, ref_logps, seq_kl = logps / d, ref_logps / d, seq_kl / d
    return SequenceStatistics(logps, ref_logps, logps - ref_logps, seq_kl, n_tok)


_WARNED: set = set()


def batch_statistics(
    model,
    batch,
    *,
    reference_model=None,
    average_log_prob: bool = False,
    fast: bool = True,
    chunk_size: int | None = None,
    differentiable: bool = True,
    kl_grad: str = "all",
    share_prompt: bool = True,
) -> SequenceStatistics:
    """TDPO statistics of a :class:`tdpo_mlx.data.Batch`: the trainer's entry point.

    Equal to :func:`model_statistics` (within float32 rounding, values and gradients w.r.t. the
    policy's trainable parameters) but never builds an (N, L-1, V) logits tensor: the LM head
    runs only at response-target positions, ``chunk_size`` positions at a time, and keeps no
    (C, V) array for backward (see the comment above). Peak extra memory is a few
    (chunk_size, V) float32 blocks.

    Args:
        model: an mlx-lm causal LM (``model.model`` = transformer body, then ``lm_head`` or
            tied ``embed_tokens``), the policy pi_theta, possibly with LoRA/DoRA adapters.
        batch: :class:`~tdpo_mlx.data.Batch` with 2B rows (chosen rows first).
        reference_model: pi_ref; default ``model`` with adapters off
            (:func:`tdpo_mlx.models.adapters_disabled`). Always under stop_gradient.
        average_log_prob: average instead of sum over response tokens.
        fast: False calls :func:`model_statistics` (the plain full-logits definition).
        chunk_size: positions per LM-head chunk; default :func:`default_chunk_size`, or
            :func:`tdpo_mlx.cpu_head.default_chunk_size` where the NumPy kernel runs.
        differentiable: False skips the work only backward needs (use for evaluation).
        kl_grad: ``"all"``, or ``"rejected"`` when the chosen rows' KL gets no gradient (TDPO2's
            sg(KL_w), Zeng et al. Eq. 18): their KL backward map is then not computed, and a
            gradient reaching it is dropped.
        share_prompt: compute each pair's prompt once for chosen and rejected, for the policy
            and the reference (:mod:`tdpo_mlx.shared_prompt`; models it does not fit, checked
            once, use the full rows). False runs every row in full.

    Returns:
        :class:`SequenceStatistics`, fields (2B,) float32, chosen rows first.

    Models whose logits are not ``head(body(x))`` (checked once numerically on a 6-token
    input) fall back to :func:`model_statistics` with a warning.
    """
    if not fast:
        return model_statistics(model, batch, reference_model, average_log_prob)
    plan = statistics_plan(
        model,
        batch,
        reference_model=reference_model,
        chunk_size=chunk_size,
        kl_grad=kl_grad,
        share_prompt=share_prompt,
        differentiable=differentiable,
        numpy_head=not differentiable,
    )
    if plan is None:
        return model_statistics(model, batch, reference_model, average_log_prob)
    hidden = plan.run_body(plan.pol.body, plan.inputs)
    ref_hidden = reference_hidden(plan, model, reference_model)
    tok, ref_tok, kl, member = head_statistics(
        plan.pol, plan.ref, hidden, ref_hidden, plan.targets, plan.groups, differentiable
    )
    return sequence_statistics(tok, ref_tok, kl, member, plan.mask, average_log_prob)


class StatisticsPlan(NamedTuple):
    """How :func:`batch_statistics` computes a batch: head plans, body inputs and the chunks."""

    pol: HeadPlan
    ref: HeadPlan
    inputs: object  # (N, T) input ids, or a SharedLayout
    targets: mx.array  # (N, T) int
    mask: mx.array  # (N, T) bool, the scored positions
    run_body: object  # (body, inputs) -> (N, T, D) final hidden states
    groups: list  # _chunk_plan's chunk groups


def statistics_plan(
    model,
    batch,
    *,
    reference_model=None,
    chunk_size=None,
    kl_grad="all",
    share_prompt=True,
    differentiable=True,
    numpy_head=False,
) -> StatisticsPlan | None:
    """The fast path's plan for ``batch`` (arguments as :func:`batch_statistics`), or None
    (with a one-time warning) for models without a verified head plan. ``numpy_head``: the
    chunks are for :mod:`tdpo_mlx.cpu_head` where it applies (its default chunk size).

    Raises:
        ValueError: for a bad ``kl_grad`` or ``chunk_size``.
    """
    pol = verified_plan(model)
    if reference_model is not None:
        ref = verified_plan(reference_model)
    else:
        with adapters_disabled(model):
            ref = find_head_plan(model)  # its head is the base layer when lm_head carries an adapter
    if pol is None or ref is None or (pol.scale, pol.cap, pol.vocab) != (ref.scale, ref.cap, ref.vocab):
        key = type(model).__module__
        if key not in _WARNED:
            _WARNED.add(key)
            warnings.warn(
                f"tdpo_mlx: no fast LM-head path for {key}; using the full-logits statistics",
                stacklevel=3,
            )
        return None
    if kl_grad not in ("all", "rejected"):
        raise ValueError(f"kl_grad must be 'all' or 'rejected', got {kl_grad!r}")
    numpy_head = numpy_head and NUMPY_HEAD["on"] and cpu_head.head_weight(pol) is not None
    c = int(chunk_size or (cpu_head.default_chunk_size if numpy_head else default_chunk_size)(pol.vocab))
    if c < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    layout = shared_layout(batch) if share_prompt and _can_share(model, reference_model, pol, ref) else None
    if layout is not None:
        inputs, targets, mask, run_body = layout, layout.targets, layout.mask, shared_hidden
    else:
        inputs, targets, mask = batch.input_ids[:, :-1], batch.targets, batch.target_mask
        run_body = _call_body
    # rows [0, B) chosen, [B, 2B) rejected: chunk each group on its own, so a chunk's KL
    # map is either needed or not
    n = mask.shape[0]
    split = batch.n_pairs if kl_grad == "rejected" and differentiable else n
    return StatisticsPlan(pol, ref, inputs, targets, mask, run_body, _chunk_plan(mask, c, split))


def reference_hidden(plan: StatisticsPlan, model, reference_model=None) -> mx.array:
    """(N, T, D) final hidden states of the reference: ``reference_model``, or ``model`` with
    its adapters off; under stop_gradient."""
    if reference_model is not None:
        return mx.stop_gradient(plan.run_body(plan.ref.body, plan.inputs))
    with adapters_disabled(model):
        return mx.stop_gradient(plan.run_body(plan.ref.body, plan.inputs))


def _call_body(body, inputs):
    return body(inputs)


def _can_share(model, reference_model, pol: HeadPlan, ref: HeadPlan) -> bool:
    """Prompt sharing fits the policy's body and the reference's (:func:`prompt_sharing_ok`)."""
    if not prompt_sharing_ok(model, pol.body):
        return False
    return reference_model is None or prompt_sharing_ok(reference_model, ref.body)


def enable_grad_checkpoint(model) -> None:
    """Recompute each transformer block's activations in backward (``--grad-checkpoint``).

    Uses mlx-lm's ``tuner.trainer.grad_checkpoint``, which patches the block *class* (all its
    instances, for the rest of the process); calling this twice is harmless. Trades about one
    extra forward pass of the body for not keeping per-block activations.

    Raises:
        ValueError: if the model has no ``layers``.
    """

    layers = getattr(model, "layers", None)
    if layers is None and hasattr(model, "model"):
        layers = getattr(model.model, "layers", None)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no transformer layers to checkpoint")
    for cls_first in {type(layer): layer for layer in layers}.values():
        cls = type(cls_first)
        if not getattr(cls, "_tdpo_grad_checkpoint", False):
            grad_checkpoint(cls_first)
            cls._tdpo_grad_checkpoint = True
