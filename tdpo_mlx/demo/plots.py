"""The demo's plots (matplotlib, an optional dependency, imported when a plot is drawn): the
reward-KL frontier (TDPO Fig. 2a / 3a) and the KL curves along training (Fig. 2b-d)."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

import numpy as np

from ..atomic import atomic_path
from .curves import KL_PAIRS, KL_SAMPLES, heldout_accuracy

COLORS = {
    "reference": "black",
    "dpo": "tab:blue",
    "tdpo1": "tab:orange",
    "tdpo2": "tab:green",
    "tdpo2-a0.1": "tab:olive",
    "tdpo2-a0.3": "tab:cyan",
    "tdpo2-a0.5": "tab:green",
    "tdpo2-a0.7": "tab:red",
}


def _label(v: str) -> str:
    m, _, a = v.partition("-a")
    name = {"dpo": "DPO", "tdpo1": "TDPO$_1$", "tdpo2": "TDPO$_2$"}.get(m, m)
    return f"{name} (α={a})" if a else name


def _plt():
    import matplotlib  # optional dependency: only the plots need it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_frontier(front: dict, path, caption: str = "") -> None:
    """Reward (y) against sequence KL(pi_theta || pi_ref) on samples (x): one curve per variant
    through its evaluated checkpoints from the reference (KL 0), error bars one standard error
    over held-out prompts (TDPO Fig. 2a / 3a); ``caption`` (the verdict) under the axes."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.0, 5.6), dpi=120)
    for v, rows in front.items():
        xs = [r["kl_mean"] for r in rows]
        ys = [r["reward_mean"] for r in rows]
        ax.errorbar(
            xs,
            ys,
            xerr=[r["kl_se"] for r in rows],
            yerr=[r["reward_se"] for r in rows],
            fmt="-o",
            ms=4,
            capsize=2,
            lw=1.4,
            color=COLORS.get(v),
            label=_label(v),
        )
        for r in rows[1:]:
            ax.annotate(
                str(r["step"]),
                (r["kl_mean"], r["reward_mean"]),
                fontsize=6,
                xytext=(3, 3),
                textcoords="offset points",
                color=COLORS.get(v),
            )
    if front:
        r0 = next(iter(front.values()))[0]
        ax.scatter([0.0], [r0["reward_mean"]], marker="*", s=140, color="black", label="reference", zorder=4)
    ax.set_xlabel(f"sequence {KL_SAMPLES}, held-out prompts (nats)")
    ax.set_ylabel("mean sentiment reward (VADER compound)")
    ax.set_title("Reward vs KL along training (labels: step; bars: ±1 s.e. over prompts)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    if caption:
        fig.text(0.01, 0.01, "\n".join(textwrap.wrap(caption, 120)), fontsize=6.5, va="bottom")
        fig.tight_layout(rect=(0, 0.12, 1, 1))
    else:
        fig.tight_layout()
    _save_fig(fig, path)
    plt.close(fig)


def _moving_average(y: Sequence[float], window: int) -> np.ndarray:
    """Trailing moving average (the first points average what exists so far)."""
    y = np.asarray(y, dtype=np.float64)
    c = np.cumsum(np.insert(y, 0, 0.0))
    n = np.minimum(np.arange(1, len(y) + 1), window)
    return (c[1:] - c[np.arange(1, len(y) + 1) - n]) / n


def plot_kl_curves(metrics: dict, path, smooth: int = 3) -> None:
    """Sequential KL(pi_ref || pi_theta) on chosen and rejected training responses, ``kl/margin``
    (chosen - rejected, as the authors log it) over steps (TDPO Fig. 2b-d), and the held-out preference
    accuracy; one line per variant (mean over seeds; dots: logged values, noisy)."""
    plt = _plt()
    keys = [
        ("kl/chosen", f"{KL_PAIRS}: chosen"),
        ("kl/rejected", f"{KL_PAIRS}: rejected"),
        ("kl/margin", "kl/margin = chosen - rejected"),
    ]
    by = {}
    for (v, _), recs in metrics.items():
        by.setdefault(v, []).append([r for r in recs if "kl/chosen" in r])
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.9), dpi=110)
    for ax, (k, title) in zip(axes, keys):
        for v, runs in by.items():
            steps = sorted({r["step"] for run in runs for r in run})
            y = [np.mean([r[k] for run in runs for r in run if r["step"] == s]) for s in steps]
            if not steps:
                continue
            ax.plot(steps, y, "o", ms=2.5, alpha=0.35, color=COLORS.get(v))
            ax.plot(steps, _moving_average(y, smooth), "-", lw=1.6, color=COLORS.get(v), label=_label(v))
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
    axes[2].axhline(0.0, color="gray", lw=0.8)
    axes[0].set_ylabel("sequential KL (nats), training pairs")
    axes[0].legend(fontsize=7)
    for v, pts in heldout_accuracy(metrics).items():
        axes[3].errorbar(
            [p[0] for p in pts],
            [p[1] for p in pts],
            yerr=[p[2] for p in pts],
            fmt="-o",
            ms=3,
            color=COLORS.get(v),
            label=_label(v),
        )
    axes[3].set_title("held-out preference accuracy", fontsize=9)
    axes[3].set_xlabel("training step")
    axes[3].set_ylim(-0.05, 1.05)
    axes[3].grid(alpha=0.3)
    fig.tight_layout()
    _save_fig(fig, path)
    plt.close(fig)


def _save_fig(fig, path) -> None:
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp)
