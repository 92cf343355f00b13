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
        token_kl[n, t] = sum_v p_ref(v) (log p_ref(v) - log p_theta(v))  (TDPO Eq. 8, one position).

    Computed in float32 with log_softmax on both sides (never softmax().log()).
    """
    policy_logp = _log_softmax(policy_logits.astype(mx.float32))
    ref_logp = mx.stop_gradient(_log_softmax(reference_logits.astype(mx.float32)))
    idx = targets.astype(mx.int32)[..., None]
    policy_tok = mx.take_along_axis(policy_logp, idx, axis=-1)[..., 0]
    ref_tok = mx.take_along_axis(ref_logp, idx, axis=-1)[..., 0]
    token_kl = mx.sum(mx.exp(ref_logp) * (ref_logp - policy_logp), axis=-1)
    return policy_tok, ref_tok, token_kl


def _log_softmax(x: mx.array) -> mx.array:
    return x - mx.logsumexp(x, axis=-1, keepdims=True)


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
