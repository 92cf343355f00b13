"""The objective of one batch and its gradient: TDPO/DPO/SFT loss over a :class:`tdpo_mlx.data.Batch`
(statistics -> per-pair losses -> TRL-named metric sums), gradient accumulation over micro-batches, and
the no-gradient held-out evaluation. The loop around them is :mod:`tdpo_mlx.trainer`."""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_map

from . import cpu_step
from .fast_stats import batch_statistics
from .losses import pair_metrics, preference_loss
from .stats import split_pairs

METRIC_KEYS = (
    "loss",
    "rewards/chosen",
    "rewards/rejected",
    "rewards/accuracies",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
    "kl/chosen",
    "kl/rejected",
    "kl/margin",
)


# --------------------------------------------------------------------------------------------
# Loss over one batch and gradient accumulation
# --------------------------------------------------------------------------------------------


def batch_loss(
    model,
    batch,
    *,
    loss_type="tdpo2",
    beta=0.1,
    alpha=0.5,
    reference_model=None,
    average_log_prob=False,
    total_pairs=None,
    differentiable=True,
    share_prompt=True,
    statistics=None,
):
    """Training objective of one (micro-)batch.

    Args:
        model: the policy (with adapters); reference = ``reference_model`` or the adapters off.
        batch: :class:`tdpo_mlx.data.Batch` of B pairs (2B rows).
        loss_type, beta, alpha: see :func:`tdpo_mlx.losses.preference_loss`.
        total_pairs: divisor of the summed per-pair losses (default B). With gradient
            accumulation pass the number of pairs of the whole step, so that summing the
            micro-batch gradients gives the gradient of the mean over all pairs.
        differentiable: False for evaluation (no gradient will be taken).
        share_prompt: compute each pair's prompt once (:mod:`tdpo_mlx.shared_prompt`).
        statistics: the batch's :class:`~tdpo_mlx.stats.SequenceStatistics` when already
            computed (:mod:`tdpo_mlx.cpu_step`); by default computed here.

    Returns:
        ``(loss, sums)``: loss a scalar float32 = sum_i loss_i / total_pairs; ``sums`` a dict of
        scalar sums over the B pairs for each key of :data:`METRIC_KEYS` (stop-gradient).
    """
    if statistics is None:
        statistics = batch_statistics(
            model,
            batch,
            reference_model=reference_model,
            average_log_prob=average_log_prob,
            differentiable=differentiable,
            kl_grad=kl_grad_of(loss_type),
            share_prompt=share_prompt,
        )
    chosen, rejected = split_pairs(statistics)
    out = preference_loss(chosen, rejected, loss_type, beta, alpha)
    per_pair = pair_metrics(chosen, rejected, out)
    sums = {k: mx.stop_gradient(mx.sum(v)) for k, v in per_pair.items()}
    n = float(total_pairs if total_pairs is not None else batch.n_pairs)
    return mx.sum(out.losses) / n, sums


def kl_grad_of(loss_type: str) -> str:
    """Which rows' KL gets a gradient: TDPO2 stops it on the chosen rows (sg(KL_w), Zeng et al.
    Eq. 18), so their map through the head is not computed."""
    return "rejected" if loss_type == "tdpo2" else "all"


@dataclass
class StepResult:
    """Output of :func:`accumulate_gradients`: ``loss`` (mean over pairs, float), ``grads``
    (tree like ``model.trainable_parameters()``), ``sums`` (metric sums over pairs, floats),
    ``n_pairs`` and ``n_tokens`` (real tokens in the micro-batches); :func:`train_step` adds
    ``grad_norm`` (before clipping), ``seconds`` (wall time of the step) and ``comm_seconds``
    (of it, the gradient all-reduce), and makes every field global over the processes."""

    loss: float
    grads: dict
    sums: dict
    n_pairs: int
    n_tokens: int
    grad_norm: float = float("nan")
    seconds: float = 0.0
    comm_seconds: float = 0.0

    def progress(self) -> dict:
        """What the progress bar shows: loss, accuracy, tokens per second of this step."""
        return {
            "loss": self.loss,
            "accuracy": self.sums["rewards/accuracies"] / self.n_pairs,
            "tokens_per_second": self.n_tokens / max(self.seconds, 1e-9),
        }


def accumulate_gradients(model, batches, total_pairs=None, **loss_kw) -> StepResult:
    """Gradient of the mean per-pair loss over all pairs of ``batches`` (any sizes).

    Each micro-batch contributes grad(sum of its pair losses / total pairs); the sum equals the
    gradient of one big batch exactly (up to float rounding). Arrays are evaluated after each
    micro-batch so only one micro-batch's graph is alive at a time.

    Args:
        model: policy; gradients are taken w.r.t. ``model.trainable_parameters()``.
        batches: list of :class:`tdpo_mlx.data.Batch`.
        total_pairs: divisor of the summed pair losses (default: the pairs of ``batches``); data
            parallelism passes ``G / N``, G pairs over N processes, whose gradients are averaged.
        **loss_kw: loss_type, beta, alpha, reference_model, average_log_prob (see :func:`batch_loss`).
    """
    batches = list(batches)
    total = total_pairs or sum(b.n_pairs for b in batches)
    if total == 0:
        raise ValueError("accumulate_gradients needs at least one pair")

    def fn(b, statistics=None):
        return batch_loss(model, b, total_pairs=total, statistics=statistics, **loss_kw)

    traced = nn.value_and_grad(model, fn)
    grads, loss, sums, tokens = None, 0.0, {}, 0
    for b in batches:
        (part_loss, s), g = _cpu_value_and_grad(model, b, fn, loss_kw) or traced(b)
        grads = g if grads is None else tree_map(mx.add, grads, g)
        mx.eval(grads, part_loss, s)
        loss += part_loss.item()
        for k, v in s.items():
            sums[k] = sums.get(k, 0.0) + v.item()
        tokens += b.n_tokens
    return StepResult(loss, grads, sums, sum(b.n_pairs for b in batches), tokens)


def _cpu_value_and_grad(model, batch, fn, loss_kw):
    """:func:`tdpo_mlx.cpu_step.value_and_grad` of ``fn`` on ``batch`` (None where it does not
    apply)."""
    return cpu_step.value_and_grad(
        model,
        batch,
        lambda stats: fn(batch, stats),
        reference_model=loss_kw.get("reference_model"),
        average_log_prob=loss_kw.get("average_log_prob", False),
        kl_grad=kl_grad_of(loss_kw.get("loss_type", "tdpo2")),
        share_prompt=loss_kw.get("share_prompt", True),
    )


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------


def evaluate(model, batches, *, prefix="eval_", **loss_kw) -> dict:
    """Metrics averaged over all pairs of ``batches`` (no gradient, eval mode: no dropout).

    Returns:
        ``{prefix + key: float}`` for every key of :data:`METRIC_KEYS`.
    """
    sums, n = evaluation_sums(model, batches, **loss_kw)
    return {prefix + k: sums[k] / max(n, 1) for k in METRIC_KEYS}


def evaluation_sums(model, batches, **loss_kw) -> tuple[dict, int]:
    """``({key: sum over the pairs of batches}, pairs)`` for every key of :data:`METRIC_KEYS`
    (zeros without batches), in eval mode (no dropout), without gradients."""
    was_training = model.training
    model.eval()
    sums, n = dict.fromkeys(METRIC_KEYS, 0.0), 0
    try:
        for b in batches:
            _, s = batch_loss(model, b, differentiable=False, **loss_kw)
            mx.eval(s)
            for k, v in s.items():
                sums[k] += v.item()
            n += b.n_pairs
    finally:
        model.train(was_training)
    return sums, n
