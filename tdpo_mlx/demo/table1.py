"""The numbers of the Anthropic-HH experiment beside the paper's Table 1: per variant, preference
accuracy and generation entropy with their spread over seeds, and the sentence on what matches."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .curves import mean_se

PAPER_TABLE1 = {  # Zeng et al. 2024, Table 1 (Anthropic HH, Pythia-2.8B): accuracy %, entropy
    "dpo": (59.43, 3.196),
    "tdpo1": (60.08, 4.727),
    "tdpo2": (67.33, 4.915),
}


def hh_table(results: dict) -> list[dict]:
    """The HH table: per variant, mean and spread over seeds of preference accuracy (%) and
    generation entropy (nats/token), plus the KLs.

    Args:
        results: ``{variant: [per-seed dict, ...]}``; a per-seed dict has ``accuracy`` (list of
            0/1/0.5 per held-out pair), ``entropy_sum`` and ``n_tokens`` (per generated sample),
            ``kl_samples`` (per sample, KL(pi_theta||pi_ref)), ``kl_chosen``, ``kl_rejected``
            (means over held-out pairs, KL(pi_ref||pi_theta)).

    Returns:
        rows with variant, n_seeds, accuracy, accuracy_spread, entropy, entropy_spread,
        kl_samples, kl_chosen, kl_rejected, spread_kind. With two or more seeds the spread is
        the standard deviation over seeds; with one it is the standard error over pairs (accuracy)
        and over samples (entropy).
    """
    rows = []
    for v, per_seed in results.items():
        acc = [100.0 * float(np.mean(s["accuracy"])) for s in per_seed]
        ent = [float(np.sum(s["entropy_sum"]) / max(np.sum(s["n_tokens"]), 1)) for s in per_seed]
        if len(per_seed) > 1:
            acc_sp, ent_sp, kind = float(np.std(acc, ddof=1)), float(np.std(ent, ddof=1)), "sd over seeds"
        else:
            s = per_seed[0]
            acc_sp = 100.0 * mean_se(s["accuracy"])[1]
            e = np.asarray(s["entropy_sum"], dtype=np.float64) / np.maximum(np.asarray(s["n_tokens"]), 1)
            ent_sp, kind = mean_se(e)[1], "se over pairs / samples"
        rows.append(
            {
                "variant": v,
                "n_seeds": len(per_seed),
                "accuracy": float(np.mean(acc)),
                "accuracy_spread": acc_sp,
                "entropy": float(np.mean(ent)),
                "entropy_spread": ent_sp,
                "kl_samples": float(np.mean([np.mean(s["kl_samples"]) for s in per_seed])),
                "kl_chosen": float(np.mean([s["kl_chosen"] for s in per_seed])),
                "kl_rejected": float(np.mean([s["kl_rejected"] for s in per_seed])),
                "spread_kind": kind,
            }
        )
    return rows


def _base(v: str) -> str:
    return v.split("-a")[0]


def hh_sentence(rows: Sequence[dict]) -> str:
    """What matches the paper's Table 1 and what does not, computed from the rows: the order of
    the methods by accuracy and by entropy (paper: TDPO2 > TDPO1 > DPO on both), whether TDPO2's
    lead over DPO exceeds the spreads, and the levels."""
    by = {_base(r["variant"]): r for r in rows}
    if not {"dpo", "tdpo2"} <= set(by):
        return "The run lacks DPO or TDPO2, so nothing can be compared with Table 1."
    out = []
    for key, name, unit in (("accuracy", "accuracy", "{:+.1f} points"), ("entropy", "entropy", "{:+.3f} nats")):
        order = sorted(by, key=lambda m: -by[m][key])
        paper = sorted(by, key=lambda m: -PAPER_TABLE1[m][0 if key == "accuracy" else 1])
        lead = by["tdpo2"][key] - by["dpo"][key]
        noise = math.hypot(by["tdpo2"][f"{key}_spread"], by["dpo"][f"{key}_spread"])
        if lead > 2 * noise:
            how = "above DPO beyond the spread, as in the paper"
        elif lead < -2 * noise:
            how = "below DPO beyond the spread, unlike the paper"
        else:
            how = "within the spread of DPO (the paper's gap is not resolved here)"
        same = "matches" if order == paper else "differs from"
        out.append(
            f"by {name} the order {' > '.join(order)} {same} the paper's {' > '.join(paper)}, and TDPO2 is "
            f"{unit.format(lead)} {how}"
        )
    lv = ", ".join(f"{m} {by[m]['accuracy']:.1f}%/{by[m]['entropy']:.2f}" for m in by)
    return (
        "Against Table 1: "
        + "; ".join(out)
        + f". Levels (accuracy/entropy): {lv} here, vs the paper's "
        + ", ".join(f"{m} {a:.1f}%/{e:.2f}" for m, (a, e) in PAPER_TABLE1.items() if m in by)
        + " (a 135M-270M model, LoRA and a short budget against full fine-tuning of Pythia-2.8B)."
    )
