"""Per-sequence statistics of TDPO: log-ratio margins, sequential KL and log-probabilities.

Notation (Zeng et al., 2024, "Token-level Direct Preference Optimization", Sec. 4):
for a response y = (y_1..y_T) after prompt x, with policy pi_theta and reference pi_ref,

- log-ratio margin   m = sum_t [log pi_theta(y_t | x, y_<t) - log pi_ref(y_t | x, y_<t)]
- sequential KL      D_SeqKL = sum_t KL(pi_ref(. | x, y_<t) || pi_theta(. | x, y_<t))  (Eq. 8/9)
  the forward KL at every response position over the full vocabulary,
- policy log-prob    logps = sum_t log pi_theta(y_t | x, y_<t).

This module holds the *plain* definition (:func:`sequence_statistics`), computed from full
(N, T, V) logits: it is the reference the fast, memory-frugal path must match.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import mlx.core as mx

from .models import adapters_disabled


class SequenceStatistics(NamedTuple):
    """Per-sequence statistics, each an (N,) float32 array.

    Fields:
        logps: sum over scored tokens of log pi_theta(y_t) (nats).
        ref_logps: same under the reference (stop-gradient), nats.
        logratio: logps - ref_logps, the paper's log-ratio margin ``m`` (nats).
        kl: sequential KL, sum over scored positions of KL(pi_ref || pi_theta) (nats).
        n_tokens: number of scored tokens (float32).
    With ``average_log_prob`` the first four are divided by max(n_tokens, 1).
    """

    logps: mx.array
    ref_logps: mx.array
    logratio: mx.array
    kl: mx.array
    n_tokens: mx.array


def token_statistics(policy_logits: mx.array, reference_logits: mx.array, targets: mx.array):
    """Per-position log-probs of the targets and per-position KL(pi_ref || pi_theta).

    Args:
        policy_logits: (N, T, V) any float dtype; ``policy_logits[:, t]`` predicts ``targets[:, t]``.
        reference_logits: (N, T, V) any float dtype; treated as constant (stop_gradient).
        targets: (N, T) integer token ids.

    Returns:
        (policy_token_logps, ref_token_logps, token_kl), each (N, T) float32, in nats.
        token_kl[n, t] = sum_v p_ref(v) (log p_ref(v) - log p_theta(v))  (TDPO Eq. 8, one position),
        computed by :func:`position_kl` (accurate near zero, never negative, 0 log 0 = 0).

    Computed in float32 with log_softmax on both sides (never softmax().log()); sums over the
    vocabulary by :func:`vocab_sum` (float32-accurate at V = 262k).
    """
    yp = policy_logits.astype(mx.float32)
    yr = mx.stop_gradient(reference_logits.astype(mx.float32))
    lse_p = logsumexp(yp)
    lse_r = logsumexp(yr)
    idx = targets.astype(mx.int32)[..., None]
    policy_tok = (mx.take_along_axis(yp, idx, axis=-1) - lse_p)[..., 0]
    ref_tok = (mx.take_along_axis(yr, idx, axis=-1) - lse_r)[..., 0]
    ref_logp = yr - lse_r
    policy_logp = yp - lse_p
    pr = mx.exp(ref_logp)
    # value: the accurate form; gradient: the textbook sum's (p_theta - p_r), whose autodiff keeps
    # two (N, T, V) arrays instead of the accurate form's many
    direct = vocab_sum(pr * mx.where(pr > 0, ref_logp - policy_logp, 0.0))[..., 0]  # 0 log 0 = 0
    accurate = position_kl(*map(mx.stop_gradient, (yp, yr, mx.exp(policy_logp), pr, lse_p, lse_r)))
    token_kl = mx.where(accurate < mx.inf, direct + mx.stop_gradient(accurate - direct), accurate)
    return policy_tok, ref_tok, token_kl


def vocab_sum(x: mx.array) -> mx.array:
    """Sum over the last axis (kept, size 1) in blocks of 64, level by level (a 64-ary tree).

    MLX's CPU reduction over 262,144 float32 values measured 4e-4 relative error; in blocks of
    64 it is ~1e-9, which is what keeps a KL near zero and the log-probs float32-accurate.
    """
    while x.shape[-1] > 64 and x.shape[-1] % 64 == 0:
        x = mx.sum(x.reshape(*x.shape[:-1], x.shape[-1] // 64, 64), axis=-1)
    return mx.sum(x, axis=-1, keepdims=True)


def logsumexp(x: mx.array) -> mx.array:
    """log sum exp over the last axis (kept), with :func:`vocab_sum`; -inf for an all -inf row."""
    m = mx.stop_gradient(mx.max(x, axis=-1, keepdims=True))
    m = mx.where(m > -mx.inf, m, 0.0)
    return m + mx.log(vocab_sum(mx.exp(x - m)))


def _phi_taylor(u: mx.array) -> mx.array:
    """e^u - 1 - u for |u| <= 1 without cancellation: its Taylor series to u^11/11!
    (truncation below 3e-8 of the value)."""
    t = u * (1.0 / 39916800.0) + 1.0 / 3628800.0
    for k in (9, 8, 7, 6, 5, 4, 3, 2):
        t = t * u + 1.0 / _FACT[k]
    return t * u * u


_FACT = {k: float(math.factorial(k)) for k in range(2, 12)}


def position_kl(yp, yr, pp, pr, lse_p, lse_r) -> mx.array:
    """KL(pi_ref || pi_theta) over the last axis, accurate near zero and never negative.

    With d = y_r - y_theta, c = E_r[d] and u = c - d (so E_r[u] = 0):
    KL = E_r[d] - (lse_r - lse_theta) = log E_r[e^u] = log1p(sum_v p_r(v) phi(u_v)),
    phi(u) = e^u - 1 - u >= 0, where p_r(v) e^(u_v) = p_theta(v) K, K = e^(c + lse_theta - lse_r).
    Each term is non-negative and, for |u| <= 1, computed without cancellation
    (:func:`_phi_taylor`); the direct form subtracts two log-sum-exps and is off by ~1e-5 nats
    at V = 262k in float32. Terms with p_r(v) = 0 (also -inf logits: a masked vocabulary) are
    p_theta(v) K, i.e. 0 log 0 = 0; KL is +inf where pi_theta is 0 and pi_ref is not.

    Args:
        yp, yr: (..., V) float32 final logits of policy and reference.
        pp, pr: (..., V) float32 softmax probabilities of each.
        lse_p, lse_r: (..., 1) float32 log-sum-exp of each.

    Returns:
        (...,) float32 KL in nats.
    """
    live = pr > 0
    d = mx.where(live, yr - yp, 0.0)
    c = vocab_sum(pr * d)
    k = mx.exp(c + lse_p - lse_r)
    u = c - d
    small = live & (mx.abs(u) <= 1.0)
    near = pr * _phi_taylor(mx.where(small, u, 0.0))
    far = mx.maximum(pp * k - pr * (1.0 + u), 0.0)
    kl = mx.log1p(vocab_sum(mx.where(small, near, far))[..., 0])
    return mx.where(c[..., 0] == mx.inf, mx.inf, kl)


def reduce_statistics(
    policy_tok: mx.array,
    ref_tok: mx.array,
    token_kl: mx.array,
    mask: mx.array,
    average_log_prob: bool = False,
) -> SequenceStatistics:
    """Sum (or average) per-position quantities over the response mask.

    Args:
        policy_tok, ref_tok, token_kl: (N, T) float32 per-position values.
        mask: (N, T) bool or 0/1 of scored target positions (response tokens only).
        average_log_prob: divide each sum by max(n_tokens, 1) (TDPO code's ``average_log_prob``).

    Returns:
        :class:`SequenceStatistics` of (N,) float32 arrays.
    """
    m = mask.astype(mx.float32)
    n = mx.sum(m, axis=-1)
    logps = mx.sum(policy_tok * m, axis=-1)
    ref_logps = mx.sum(ref_tok * m, axis=-1)
    kl = mx.sum(token_kl * m, axis=-1)
    if average_log_prob:
        d = mx.maximum(n, 1.0)
        logps, ref_logps, kl = logps / d, ref_logps / d, kl / d
    return SequenceStatistics(logps, ref_logps, logps - ref_logps, kl, n)


def sequence_statistics(
    policy_logits: mx.array,
    reference_logits: mx.array,
    targets: mx.array,
    mask: mx.array,
    average_log_prob: bool = False,
) -> SequenceStatistics:
    """The plain definition of the TDPO statistics from full logits.

    Args:
        policy_logits: (N, T, V) logits of pi_theta, aligned so ``[:, t]`` predicts ``targets[:, t]``.
        reference_logits: (N, T, V) logits of pi_ref, same alignment; no gradient flows into them.
        targets: (N, T) int token ids.
        mask: (N, T) 0/1 response-target mask (prompt and padding positions are 0).
        average_log_prob: average instead of sum over the response.

    Returns:
        :class:`SequenceStatistics` with (N,) float32 fields: ``logratio`` is the paper's margin
        m (Sec. 4.2), ``kl`` the sequential KL D_SeqKL(x, y; pi_ref || pi_theta) (Eq. 8),
        ``logps`` the policy log-likelihood.

    Raises:
        ValueError: if shapes disagree.
    """
    if policy_logits.shape != reference_logits.shape:
        raise ValueError(f"policy logits {policy_logits.shape} and reference logits {reference_logits.shape} differ")
    if targets.shape != policy_logits.shape[:2] or mask.shape != targets.shape:
        raise ValueError(
            f"targets {targets.shape} and mask {mask.shape} must equal logits' (N, T) = {policy_logits.shape[:2]}"
        )
    tok, ref_tok, kl = token_statistics(policy_logits, reference_logits, targets)
    return reduce_statistics(tok, ref_tok, kl, mask, average_log_prob)


def split_pairs(stats: SequenceStatistics) -> tuple[SequenceStatistics, SequenceStatistics]:
    """Split statistics of 2B rows (chosen rows first, then rejected) into (chosen, rejected)."""
    n = stats.logps.shape[0]
    if n % 2:
        raise ValueError(f"expected an even number of rows (chosen then rejected), got {n}")
    b = n // 2
    chosen = SequenceStatistics(*(f[:b] for f in stats))
    rejected = SequenceStatistics(*(f[b:] for f in stats))
    return chosen, rejected


def model_statistics(model, batch, reference_model=None, average_log_prob: bool = False) -> SequenceStatistics:
    """Plain (full-logits) statistics of a :class:`tdpo_mlx.data.Batch` under ``model``.

    The reference is ``reference_model`` when given, else ``model`` with its adapters switched
    off (:func:`tdpo_mlx.models.adapters_disabled`); no gradient flows through it.
    Materializes (2B, L-1, V) logits twice: use for tests and small vocabularies; the trainer's
    fast path must match it.

    Returns:
        :class:`SequenceStatistics`, fields (2B,) float32, chosen rows first.
    """

    inputs = batch.input_ids[:, :-1]
    policy_logits = model(inputs)
    if reference_model is not None:
        ref_logits = reference_model(inputs)
    else:
        with adapters_disabled(model):
            ref_logits = model(inputs)
    return sequence_statistics(
        policy_logits, mx.stop_gradient(ref_logits), batch.targets, batch.target_mask, average_log_prob
    )
