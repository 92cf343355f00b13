"""The numbers of the controlled-sentiment experiment: the reward-KL frontier of every variant,
where each curve lies against DPO's, the verdict sentence, and held-out accuracy along training.

KL on samples: sequence KL(pi_theta || pi_ref), summed over the tokens of completions sampled from
the policy on held-out prompts (:data:`tdpo_mlx.evaluation.KL_DIRECTION`), the frontier's x-axis
(TDPO Fig. 2a / 3a). KL on pairs: the sequential KL(pi_ref || pi_theta) of TDPO Eq. 8 on the
chosen and rejected responses of training (or held-out) pairs, logged by the trainer as
``kl/chosen``, ``kl/rejected`` (TDPO Fig. 2b-d).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

KL_SAMPLES = "KL(π_θ‖π_ref) on policy samples"


KL_PAIRS = "KL(π_ref‖π_θ) on pairs"


CLAIM = "every TDPO curve lies at or above DPO's (more reward at equal KL)"


def per_prompt(values: Sequence[float], prompt_index: Sequence[int]) -> np.ndarray:
    """Mean of ``values`` per prompt (prompts in index order), shape (P,) float64."""
    v = np.asarray(values, dtype=np.float64)
    idx = np.asarray(prompt_index)
    return np.array([v[idx == p].mean() for p in np.unique(idx)])


def mean_se(x: np.ndarray) -> tuple[float, float]:
    """Mean and standard error of the mean (0 for a single value)."""
    x = np.asarray(x, dtype=np.float64)
    se = float(x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else 0.0
    return float(x.mean()), se


def frontier(points: dict, variants: Sequence[str], seeds: Sequence[int], steps: Sequence[int]) -> dict:
    """Reward-vs-KL curve of every variant, from the evaluation points.

    Args:
        points: ``{"reference": rec, (variant, seed, step): rec}``; a record holds per-sample
            ``rewards``, ``kl`` and ``prompt_index`` (as written by the demo's eval stage).
        variants, seeds, steps: what to collect; missing points are skipped.

    Returns:
        ``{variant: [row, ...]}``, rows by step starting with the reference at step 0 (KL 0).
        A row has step, n_seeds, reward_mean, reward_se, kl_mean, kl_se: per prompt, the mean
        over its samples, averaged over seeds; then mean and standard error over the P
        held-out prompts (the spread drawn as error bars). KL is KL(pi_theta || pi_ref) in nats.
    """
    ref = points["reference"]
    r0 = per_prompt(ref["rewards"], ref["prompt_index"])
    start = {"step": 0, "n_seeds": 1, "kl_mean": 0.0, "kl_se": 0.0}
    start["reward_mean"], start["reward_se"] = mean_se(r0)
    out = {}
    for v in variants:
        rows = [dict(start)]
        for k in steps:
            recs = [points[(v, s, k)] for s in seeds if (v, s, k) in points]
            if not recs:
                continue
            r = np.mean([per_prompt(x["rewards"], x["prompt_index"]) for x in recs], axis=0)
            kl = np.mean([per_prompt(x["kl"], x["prompt_index"]) for x in recs], axis=0)
            row = {"step": k, "n_seeds": len(recs)}
            row["reward_mean"], row["reward_se"] = mean_se(r)
            row["kl_mean"], row["kl_se"] = mean_se(kl)
            rows.append(row)
        out[v] = rows
    return out


def compare_to_dpo(curve: list[dict], dpo: list[dict], z: float = 2.0) -> dict:
    """Where a curve's points lie against DPO's curve (linear in KL between DPO's points).

    Only points (step > 0) with KL inside DPO's KL range are compared; a point is ``above``
    (``below``) when its reward exceeds (falls short of) DPO's interpolated reward by more than
    ``z`` combined standard errors, else ``level``.

    Returns:
        dict with above, below, level (counts), outside (points beyond DPO's KL range),
        mean_diff (mean reward difference over compared points, nan if none).
    """
    d = sorted(dpo, key=lambda r: r["kl_mean"])
    xs = [r["kl_mean"] for r in d]
    res = {"above": 0, "below": 0, "level": 0, "outside": 0, "diffs": []}
    for p in curve:
        if p["step"] == 0:
            continue
        if not xs[0] <= p["kl_mean"] <= xs[-1]:
            res["outside"] += 1
            continue
        r = float(np.interp(p["kl_mean"], xs, [q["reward_mean"] for q in d]))
        se = float(np.interp(p["kl_mean"], xs, [q["reward_se"] for q in d]))
        diff = p["reward_mean"] - r
        res["diffs"].append(diff)
        tol = z * math.hypot(se, p["reward_se"])
        res["above" if diff > tol else "below" if diff < -tol else "level"] += 1
    res["mean_diff"] = float(np.mean(res.pop("diffs"))) if res["above"] + res["below"] + res["level"] else math.nan
    return res


def verdict(front: dict, baseline: str = "dpo") -> str:
    """One sentence, computed from the frontier, on the paper's claim (:data:`CLAIM`).

    supported: some TDPO variant lies significantly above DPO's curve and none below;
    contradicted: some lies below and none above; mixed: both; not decided: every compared point
    is level with DPO within noise, or no TDPO point falls inside DPO's KL range.
    """
    if baseline not in front or len(front) < 2:
        return f"Verdict: not decided (the run has no {baseline} curve and TDPO curve to compare)."
    parts, above, below = [], 0, 0
    for v, curve in front.items():
        if v == baseline:
            continue
        c = compare_to_dpo(curve, front[baseline])
        n = c["above"] + c["below"] + c["level"]
        above += c["above"]
        below += c["below"]
        if n == 0:
            parts.append(f"{v} has no point inside DPO's KL range")
            continue
        where = [f"{c[k]} {k}" for k in ("above", "level", "below") if c[k]]
        parts.append(f"{v}: {', '.join(where)} of {n} points (mean reward {c['mean_diff']:+.3f})")
    if above and not below:
        state = "supported"
    elif below and not above:
        state = "contradicted"
    elif above and below:
        state = "mixed"
    else:
        state = "not decided (within noise)"
    return (
        f"Verdict: the paper's claim that {CLAIM} is {state} by this run; against DPO's curve at the "
        f"same {KL_SAMPLES} (2 standard errors): " + "; ".join(parts) + "."
    )


def heldout_accuracy(metrics: dict) -> dict:
    """Held-out preference accuracy along training, per variant.

    Args:
        metrics: ``{(variant, seed): records}`` from :func:`read_metrics`.

    Returns:
        ``{variant: [(step, mean over seeds, std over seeds), ...]}`` from the
        ``eval_rewards/accuracies`` records (the implicit reward of the chosen response above
        the rejected one on held-out pairs).
    """
    by = {}
    for (v, _), recs in metrics.items():
        for r in recs:
            if "eval_rewards/accuracies" in r:
                by.setdefault(v, {}).setdefault(r["step"], []).append(r["eval_rewards/accuracies"])
    return {v: [(k, float(np.mean(a)), float(np.std(a))) for k, a in sorted(steps.items())] for v, steps in by.items()}
