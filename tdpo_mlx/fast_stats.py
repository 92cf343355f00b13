"""The trainer's statistics path: the same quantities as :func:`tdpo_mlx.stats.model_statistics`
without any (N, T, V) tensor (response-only LM head, chunked KL, custom VJP).
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten
from mlx_lm.tuner.trainer import grad_checkpoint

from .models import adapters_disabled
from .stats import SequenceStatistics, model_statistics

# ---------------------------------------------------------------------------------------------
# Fast, memory-frugal path (the trainer's entry point): response-only LM head, chunked KL.
# ---------------------------------------------------------------------------------------------
#
# Same quantities as :func:`model_statistics`, computed without any (N, T, V) tensor:
#   1. run the transformer *body* (``model.model``) of the policy and of the reference
#      -> final hidden states (N, L-1, D);
#   2. gather the hidden states of the P scored (response-target) positions -> (P, D);
#   3. per chunk of C positions: logits (C, V) of policy and reference from the LM head,
#      log-softmax, target log-prob and KL(pi_ref || pi_theta) (TDPO Eq. 8, one position);
#   4. add the per-position values back into per-row sums.
# Backward: the statistics are linear in the upstream gradient w.r.t. the policy logits,
#   d tok_t / d z = (onehot(y_t) - p_theta) * c'(z),   d kl_t / d z = (p_theta - p_ref) * c'(z)
# (c = the model's final logit transform, e.g. Gemma 2's softcap), so the forward pass maps both
# (C, V) gradients through the frozen head right away into two (C, D) arrays and the custom VJP
# only combines them: no logits are kept or recomputed for backward. A head with trainable
# parameters (LoRA on lm_head, trained embeddings) takes the mx.checkpoint route instead.
# Metal: mlx-lm's fused ``tuner.losses.kl_div_loss`` computes the same per-position KL, but its
# VJP needs both (C, V) logits again in backward; the precomputed-gradient design above keeps
# no logits at all, so the portable path is used on every backend (untested on Metal here).
# Float32 note: MLX's CPU reductions over V add sequentially; at V = 262,144 both this path and
# the plain one are only accurate to a few 1e-4 against float64 (they agree more closely with
# each other, since they sum the same way).

_CHUNK_BYTES = 32 * 2**20  # target size of one (C, V) float32 chunk of logits


class _HeadPlan(NamedTuple):
    """How to get logits from a model's final hidden states."""

    body: object  # callable inputs (N, L) -> hidden (N, L, D)
    head: object  # callable hidden (..., D) -> raw logits (..., V)
    module: object  # the nn.Module owning the head weights (for trainable_parameters)
    scale: float  # logits = cap * tanh(scale * z / cap), or scale * z when cap is None
    cap: float | None
    vocab: int


def _head_plan(model) -> _HeadPlan | None:
    """Body, LM head and final logit transform of an mlx-lm causal LM, or None if unknown.

    Handles untied ``lm_head``, tied embeddings (``model.model.embed_tokens.as_linear``),
    final logit softcapping (``final_logit_softcapping``: Gemma 2/3n/4), Cohere's ``logit_scale``
    and Granite's ``logits_scaling``. :func:`_verified_plan` checks the result numerically.
    """
    children = model.children() if hasattr(model, "children") else {}
    body = children.get("model")
    if body is None or not callable(body):
        return None
    tied = getattr(model, "tie_word_embeddings", None)
    if tied is None:
        tied = getattr(getattr(model, "args", None), "tie_word_embeddings", None)
    if "lm_head" in children and tied is not True:
        module = children["lm_head"]
        head = module
    else:
        module = body.children().get("embed_tokens") if hasattr(body, "children") else None
        if module is None or not hasattr(module, "as_linear"):
            return None
        head = module.as_linear
    scale = 1.0
    margs = getattr(body, "args", None)
    if (
        margs is not None
        and getattr(margs, "logit_scale", None)
        and getattr(model, "model_type", "").startswith("cohere")
    ):
        scale = float(margs.logit_scale)
    if getattr(model, "logits_scaling", None):
        scale = 1.0 / float(model.logits_scaling)
    cap = getattr(model, "final_logit_softcapping", None)
    weight = getattr(module, "weight", None)
    vocab = None
    if weight is not None:
        vocab = int(weight.shape[0])
    if vocab is None:
        args = getattr(model, "args", None)
        vocab = int(getattr(args, "vocab_size", 0)) or None
    if vocab is None:
        return None
    return _HeadPlan(body, head, module, scale, float(cap) if cap else None, vocab)


_PLAN_ATTR = "_tdpo_fast_plan_ok"


def _verified_plan(model) -> _HeadPlan | None:
    """:func:`_head_plan` checked once per model: ``model(x)`` must equal head(body(x)).

    The check runs a 6-token forward; its verdict is stored on the model object. Inside
    ``mx.compile`` the check cannot evaluate and is skipped (the structural plan is used).
    """
    plan = _head_plan(model)
    if plan is None:
        return None
    verdict = getattr(model, _PLAN_ATTR, None)
    if verdict is None:
        try:
            x = (mx.arange(1, 7, dtype=mx.int32) % plan.vocab)[None]
            full = model(x).astype(mx.float32)
            mine = _post_logits(plan.head(plan.body(x)).astype(mx.float32), plan.scale, plan.cap)
            diff = mx.max(mx.abs(full - mine)).item()
            verdict = bool(full.shape == mine.shape and diff <= 1e-3 * max(1.0, mx.max(mx.abs(full)).item()))
        except (RuntimeError, ValueError) as e:
            if "eval" not in str(e) and "transform" not in str(e):
                raise
            return plan  # under mx.compile nothing can be evaluated: trust the plan, check next time
        object.__setattr__(model, _PLAN_ATTR, verdict)
    return plan if verdict else None


def _post_logits(z: mx.array, scale: float, cap: float | None) -> mx.array:
    """The model's final logit transform: ``cap * tanh(scale * z / cap)`` or ``scale * z``."""
    if cap:
        return cap * mx.tanh(z * (scale / cap))
    return z * scale if scale != 1.0 else z


def _token_terms(zp, zr, tgt, scale, cap, want_grad):
    """Per-position statistics from raw (C, V) logits; optionally the logit gradients.

    With y = c(z) the model's final logits, lse = logsumexp(y), p = softmax(y):
    tok = y_p[t] - lse_p, ref_tok = y_r[t] - lse_r,
    kl = sum_v p_r(v) * ((y_r(v) - lse_r) - (y_p(v) - lse_p))   (TDPO Eq. 8, one position).
    One exp pass per side (the softmax and the logsumexp share it).

    Returns (tok, ref_tok, kl) each (C,) float32 and, with ``want_grad``, also
    g_tok = d tok / d zp = (onehot(t) - p_p) c'(zp) and g_kl = d kl / d zp = (p_p - p_r) c'(zp),
    each (C, V) float32 (w.r.t. the *raw* head output, i.e. through a softcap).
    """
    zp = zp.astype(mx.float32)
    zr = zr.astype(mx.float32)
    yp = _post_logits(zp, scale, cap)
    yr = _post_logits(zr, scale, cap)
    mp = mx.stop_gradient(mx.max(yp, axis=-1, keepdims=True))
    mr = mx.stop_gradient(mx.max(yr, axis=-1, keepdims=True))
    ep = mx.exp(yp - mp)
    er = mx.exp(yr - mr)
    sum_p = mx.sum(ep, axis=-1, keepdims=True)
    sum_r = mx.sum(er, axis=-1, keepdims=True)
    lse_p = mp + mx.log(sum_p)
    lse_r = mr + mx.log(sum_r)
    idx = tgt[:, None]
    tok = (mx.take_along_axis(yp, idx, axis=-1) - lse_p)[:, 0]
    ref_tok = (mx.take_along_axis(yr, idx, axis=-1) - lse_r)[:, 0]
    pr = er * (1.0 / sum_r)
    kl = mx.sum(pr * ((yr - lse_r) - (yp - lse_p)), axis=-1)
    if not want_grad:
        return tok, ref_tok, kl
    sp = ep * (1.0 / sum_p)
    onehot = (mx.arange(zp.shape[-1])[None, :] == idx).astype(mx.float32)
    g_tok = onehot - sp
    # d kl / d y_p = p_p * sum(p_r) - p_r; sum(p_r) is 1 in exact arithmetic, but keeping it
    # reproduces the plain path's float32 rounding (its reductions over V are not exact).
    g_kl = sp * mx.sum(pr, axis=-1, keepdims=True) - pr
    if cap:
        t = mx.tanh(zp * (scale / cap))
        d = scale * (1.0 - t * t)
        g_tok, g_kl = g_tok * d, g_kl * d
    elif scale != 1.0:
        g_tok, g_kl = g_tok * scale, g_kl * scale
    return tok, ref_tok, kl, g_tok, g_kl


_COMPILED: dict = {}
_USE_COMPILE = {"on": True}


def _terms_fn(scale, cap, want_grad):
    """:func:`_token_terms` for fixed constants, mx.compile'd (fuses the elementwise passes)."""
    key = (scale, cap, want_grad, _USE_COMPILE["on"])
    fn = _COMPILED.get(key)
    if fn is None:

        def fn(zp, zr, tgt):
            return _token_terms(zp, zr, tgt, scale, cap, want_grad)

        if _USE_COMPILE["on"]:
            fn = mx.compile(fn)
        _COMPILED[key] = fn
    return fn


def _frozen_head_chunk(pol: _HeadPlan, ref_head, differentiable: bool):
    """Chunk function (hp, hr, tgt) -> (tok, ref_tok, kl) with the precomputed-gradient VJP."""
    if not differentiable:
        terms = _terms_fn(pol.scale, pol.cap, False)

        def plain(hp, hr, tgt):
            return terms(pol.head(hp), mx.stop_gradient(ref_head(hr)), tgt)

        return plain

    terms = _terms_fn(pol.scale, pol.cap, True)

    @mx.custom_function
    def chunk(hp, hr, tgt):
        tok, ref_tok, kl, g_tok, g_kl = terms(pol.head(hp), ref_head(hr), tgt)

        # Map both logit gradients through the (frozen, linear) head now: (C, V) -> (C, D).
        def head(h):
            return pol.head(h).astype(mx.float32)

        _, (d_tok,) = mx.vjp(head, [hp], [g_tok])
        _, (d_kl,) = mx.vjp(head, [hp], [g_kl])
        return tok, ref_tok, kl, d_tok.astype(hp.dtype), d_kl.astype(hp.dtype)

    @chunk.vjp
    def chunk_vjp(primals, cotangents, outputs):
        hp, hr, tgt = primals
        g_tok, _, g_kl = cotangents[:3]
        d_tok, d_kl = outputs[3], outputs[4]
        dh = g_tok[:, None].astype(d_tok.dtype) * d_tok + g_kl[:, None].astype(d_kl.dtype) * d_kl
        return dh, mx.zeros_like(hr), mx.zeros_like(tgt)

    def run(hp, hr, tgt):
        return chunk(hp, hr, tgt)[:3]

    return run


def _trainable_head_chunk(pol: _HeadPlan, ref_head):
    """Chunk function for a head with trainable parameters: mx.checkpoint recomputes the
    chunk's logits in backward (gradients reach the head's parameters and the hidden states)."""
    terms = _terms_fn(pol.scale, pol.cap, False)
    module = pol.module

    def run(hp, hr, tgt):
        def inner(params, hp, hr):  # targets are closed over: no VJP w.r.t. indices
            module.update(params)
            return terms(pol.head(hp), mx.stop_gradient(ref_head(hr)), tgt)

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


def _has_trainable(module) -> bool:

    return bool(tree_flatten(module.trainable_parameters()))


def default_chunk_size(vocab: int) -> int:
    """Positions per chunk so that one (C, V) float32 logits block is about 32 MiB, in [8, 1024]."""
    c = max(8, min(1024, _CHUNK_BYTES // (4 * max(int(vocab), 1))))
    return 1 << (c.bit_length() - 1)  # a power of two


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
        chunk_size: positions per LM-head chunk; default :func:`default_chunk_size`.
        differentiable: False skips the work only backward needs (use for evaluation).

    Returns:
        :class:`SequenceStatistics`, fields (2B,) float32, chosen rows first.

    Models whose logits are not ``head(body(x))`` (checked once numerically on a 6-token
    input) fall back to :func:`model_statistics` with a warning.
    """
    if not fast:
        return model_statistics(model, batch, reference_model, average_log_prob)

    pol = _verified_plan(model)
    if reference_model is not None:
        ref = _verified_plan(reference_model)
    else:
        with adapters_disabled(model):
            ref = _head_plan(model)  # its head is the base layer when lm_head carries an adapter
    if pol is None or ref is None or (pol.scale, pol.cap, pol.vocab) != (ref.scale, ref.cap, ref.vocab):
        key = type(model).__module__
        if key not in _WARNED:
            _WARNED.add(key)

            warnings.warn(
                f"tdpo_mlx: no fast LM-head path for {key}; using the full-logits statistics",
                stacklevel=2,
            )
        return model_statistics(model, batch, reference_model, average_log_prob)

    inputs = batch.input_ids[:, :-1]
    mask = batch.target_mask
    n, t = mask.shape
    pos = np.flatnonzero(np.array(mask).reshape(-1))
    p = int(pos.size)
    c = int(chunk_size or default_chunk_size(pol.vocab))
    if c < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if p < c:
        c = max(8, -(-p // 8) * 8)
    n_chunks = max(1, -(-p // c))
    idx = np.zeros(n_chunks * c, dtype=np.int32)
    idx[:p] = pos
    rows = np.zeros((n, n_chunks * c), dtype=np.float32)
    rows[idx[:p] // t, np.arange(p)] = 1.0  # (N, P') row-membership of each scored position
    idx_mx = mx.array(idx)
    rows_mx = mx.array(rows)

    tgt = mx.take(batch.targets.reshape(-1), idx_mx).astype(mx.int32)
    hidden = pol.body(inputs)
    hp = mx.take(hidden.reshape(n * t, -1), idx_mx, axis=0)
    if reference_model is not None:
        ref_hidden = ref.body(inputs)
    else:
        with adapters_disabled(model):
            ref_hidden = ref.body(inputs)
    hr = mx.stop_gradient(mx.take(ref_hidden.reshape(n * t, -1), idx_mx, axis=0))

    if _has_trainable(pol.module) and differentiable:
        chunk = _trainable_head_chunk(pol, ref.head)
    else:
        chunk = _frozen_head_chunk(pol, ref.head, differentiable)
    outs = []
    # Without gradients, finish each chunk before queuing the next (MLX allocates an op's output
    # when the op is queued, so the queue otherwise runs a few chunks' (C, V) blocks ahead).
    # Never under value_and_grad: evaluated tracers keep their whole graph alive until backward,
    # which would hold every chunk's (C, V) blocks (measured: 5x the memory).
    sync = n_chunks > 1 and not differentiable
    for i in range(n_chunks):
        outs.append(chunk(hp[i * c : (i + 1) * c], hr[i * c : (i + 1) * c], tgt[i * c : (i + 1) * c]))
        if sync:
            sync = _eval_if_allowed(outs[-1])
    tok, ref_tok, kl = (mx.concatenate(list(v)) if n_chunks > 1 else v[0] for v in zip(*outs))

    n_tok = mx.sum(mask.astype(mx.float32), axis=-1)
    logps = rows_mx @ tok
    ref_logps = mx.stop_gradient(rows_mx @ ref_tok)
    seq_kl = rows_mx @ kl
    if average_log_prob:
        d = mx.maximum(n_tok, 1.0)
        logps, ref_logps, seq_kl = logps / d, ref_logps / d, seq_kl / d
    return SequenceStatistics(logps, ref_logps, logps - ref_logps, seq_kl, n_tok)


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
