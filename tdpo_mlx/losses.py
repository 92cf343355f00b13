"""TDPO1, TDPO2, DPO and SFT losses from per-sequence statistics.

Formulas (Zeng et al., 2024, Sec. 4.3, Eqs. 18 and 20; DPO: Rafailov et al., 2023, Eq. 7):

- TDPO1: u = (m_w - m_l) - (KL_l - KL_w)
- TDPO2: u = (m_w - m_l) - alpha * (KL_l - sg(KL_w))          (sg = stop-gradient)
- DPO:   u = m_w - m_l
- loss = -log sigmoid(beta * u)
- SFT:   loss = -logps_w  (negative log-likelihood of the chosen response)

where m is the log-ratio margin and KL the sequential KL of :mod:`tdpo_mlx.stats`
(w = chosen, l = rejected). Reported rewards are detached: beta * (m + KL) for TDPO
(the paper code's ``chosen_values``), beta * m for DPO and SFT.
"""

from __future__ import annotations

from typing import NamedTuple

import mlx.core as mx
import mlx.nn as nn

from .stats import SequenceStatistics

LOSS_TYPES = ("tdpo1", "tdpo2", "dpo", "sft")


class LossOutput(NamedTuple):
    """Per-pair outputs, each (B,) float32: ``losses`` (differentiable), ``chosen_rewards`` and
    ``rejected_rewards`` (stop-gradient, in units of beta * nats)."""

    losses: mx.array
    chosen_rewards: mx.array
    rejected_rewards: mx.array


def preference_loss(
    chosen: SequenceStatistics,
    rejected: SequenceStatistics,
    loss_type: str = "tdpo2",
    beta: float = 0.1,
    alpha: float = 0.5,
) -> LossOutput:
    """Per-pair preference loss and detached rewards.

    Args:
        chosen, rejected: statistics of the B chosen and B rejected responses, fields (B,).
        loss_type: one of ``tdpo1``, ``tdpo2``, ``dpo``, ``sft``.
        beta: inverse temperature of the Bradley-Terry model (paper default 0.1).
        alpha: TDPO2 weight of the KL difference (paper default 0.5; ignored otherwise).

    Returns:
        :class:`LossOutput` with (B,) float32 arrays.

    Raises:
        ValueError: unknown ``loss_type``.
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"unknown loss_type {loss_type!r}; choose one of {', '.join(LOSS_TYPES)}")
    margin = chosen.logratio - rejected.logratio
    if loss_type == "tdpo1":
        logits = margin - (rejected.kl - chosen.kl)
    elif loss_type == "tdpo2":
        logits = margin - alpha * (rejected.kl - mx.stop_gradient(chosen.kl))
    else:
        logits = margin
    if loss_type == "sft":
        losses = -chosen.logps
    else:
        losses = -nn.log_sigmoid(beta * logits)
    if loss_type in ("tdpo1", "tdpo2"):
        chosen_rewards = beta * (chosen.logratio + chosen.kl)
        rejected_rewards = beta * (rejected.logratio + rejected.kl)
    else:
        chosen_rewards = beta * chosen.logratio
        rejected_rewards = beta * rejected.logratio
    return LossOutput(
        losses.astype(mx.float32),
        mx.stop_gradient(chosen_rewards).astype(mx.float32),
        mx.stop_gradient(rejected_rewards).astype(mx.float32),
    )


def pair_metrics(chosen: SequenceStatistics, rejected: SequenceStatistics, out: LossOutput) -> dict:
    """Per-pair metric arrays (B,), named as in TRL plus TDPO's KL terms.

    Keys: ``loss``, ``rewards/chosen``, ``rewards/rejected``, ``rewards/accuracies`` (1.0 where
    the chosen reward exceeds the rejected one), ``rewards/margins``, ``logps/chosen``,
    ``logps/rejected``, ``kl/chosen``, ``kl/rejected``, ``kl/margin`` (KL_w - KL_l, chosen minus
    rejected as in the authors' trainers.py ``kl_*/margin`` and TRL's ``rewards/margins``; TDPO's
    logits add it, so it is usually negative as the rejected KL grows faster). Averaging these over pairs (not batches) gives the logged values.
    """
    sg = mx.stop_gradient
    return {
        "loss": sg(out.losses),
        "rewards/chosen": out.chosen_rewards,
        "rewards/rejected": out.rejected_rewards,
        "rewards/accuracies": (out.chosen_rewards > out.rejected_rewards).astype(mx.float32),
        "rewards/margins": out.chosen_rewards - out.rejected_rewards,
        "logps/chosen": sg(chosen.logps),
        "logps/rejected": sg(rejected.logps),
        "kl/chosen": sg(chosen.kl),
        "kl/rejected": sg(rejected.kl),
        "kl/margin": sg(chosen.kl - rejected.kl),
    }
