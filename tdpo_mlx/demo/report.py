"""The demo's report: markdown tables, ``report.md``, ``results.json`` and the plots
(reward vs KL, TDPO Fig. 2a; sequential KL curves, Fig. 2b-d)."""

from __future__ import annotations

import json
import math
import os
import pathlib
import platform
from collections.abc import Sequence

import numpy as np

from ..atomic import write_json, write_text
from ..evaluate import KL_DIRECTION, markdown_table
from .config import METHODS, DemoConfig


def read_jsonl(path) -> list[dict]:
    """The records of a JSON-lines file."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(x) for x in f if x.strip()]


def read_metrics(path) -> list[dict]:
    """Training records (those with ``kl/chosen``) of a metrics.jsonl, ordered by step."""
    p = pathlib.Path(path)
    if not p.exists():
        return []
    recs = [r for r in read_jsonl(p) if "kl/chosen" in r and "step" in r]
    return sorted(recs, key=lambda r: r["step"])


COLORS = {"reference": "black", "dpo": "tab:blue", "tdpo1": "tab:orange", "tdpo2": "tab:green"}
LABELS = {"dpo": "DPO", "tdpo1": "TDPO$_1$", "tdpo2": "TDPO$_2$", "reference": "reference"}


def plot_reward_vs_kl(rows: dict, path, methods: Sequence[str] = METHODS) -> None:
    """Reward (y) against sequence KL(pi_theta || pi_ref) (x): one curve per method through its
    evaluated checkpoints, starting at the reference (KL 0). TDPO Fig. 2a."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ref = rows.get("reference")
    fig, ax = plt.subplots(figsize=(5.6, 4.2), dpi=120)
    for m in methods:
        pts = sorted([r for r in rows.values() if r.get("method") == m], key=lambda r: r["step"])
        if not pts:
            continue
        xs = [r["seq_kl_mean"] for r in pts]
        ys = [r["reward_mean"] for r in pts]
        if ref is not None:
            xs, ys = [0.0] + xs, [ref["reward_mean"]] + ys
        ax.plot(xs, ys, "-", color=COLORS.get(m), alpha=0.5)
        ax.scatter(xs[-len(pts) :], ys[-len(pts) :], color=COLORS.get(m), label=LABELS.get(m, m), zorder=3)
        for r in pts:
            if r["step"]:
                ax.annotate(
                    str(r["step"]),
                    (r["seq_kl_mean"], r["reward_mean"]),
                    fontsize=7,
                    textcoords="offset points",
                    xytext=(3, 3),
                    color=COLORS.get(m),
                )
    if ref is not None:
        ax.scatter([0.0], [ref["reward_mean"]], marker="*", s=120, color="black", label="reference", zorder=4)
    ax.set_xlabel("sequence KL(π_θ ‖ π_ref) on policy samples (nats)")
    ax.set_ylabel("mean sentiment reward (VADER compound)")
    ax.set_title("Controlled sentiment: reward vs KL (labels: step)")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    _save_fig(fig, path)
    plt.close(fig)


def _moving_average(y: Sequence[float], window: int) -> np.ndarray:
    """Trailing moving average (the first points average what exists so far)."""
    y = np.asarray(y, dtype=np.float64)
    c = np.cumsum(np.insert(y, 0, 0.0))
    n = np.minimum(np.arange(1, len(y) + 1), window)
    return (c[1:] - c[np.arange(1, len(y) + 1) - n]) / n


def plot_kl_curves(metrics: dict, path, methods: Sequence[str] = METHODS, smooth: int = 3) -> None:
    """Sequential KL(pi_ref || pi_theta) on chosen and rejected training responses and
    ``kl/margin`` (= KL on chosen - KL on rejected, as the authors log it) over training steps, one
    line per method (TDPO Fig. 2b-d). Dots: logged values (each a few pairs, noisy); lines:
    trailing mean over ``smooth`` records."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [
        ("kl/chosen", "chosen (preferred)"),
        ("kl/rejected", "rejected (dispreferred)"),
        ("kl/margin", "margin = chosen - rejected"),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), dpi=110)
    for ax, (k, title) in zip(axes, keys):
        for m in methods:
            recs = metrics.get(m) or []
            if not recs:
                continue
            x = [r["step"] for r in recs]
            y = [r[k] for r in recs]
            ax.plot(x, y, "o", ms=2.5, alpha=0.35, color=COLORS.get(m))
            ax.plot(x, _moving_average(y, smooth), "-", lw=1.8, color=COLORS.get(m), label=LABELS.get(m, m))
        ax.set_title(f"{k}: {title}", fontsize=10)
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
    axes[2].axhline(0.0, color="gray", lw=0.8)
    axes[0].set_ylabel("sequential KL (nats)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    _save_fig(fig, path)
    plt.close(fig)


def _save_fig(fig, path) -> None:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    os.replace(tmp, path)


def machine_line() -> str:
    """The machine in words: OS, CPU, cores, backend."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import mlx.core as mx

        dev = str(mx.default_device())
    except Exception:  # pragma: no cover
        dev = "?"
    return f"{platform.system()} {platform.machine()}, {cpu}, {os.cpu_count()} CPU cores visible, MLX device {dev}"


def write_report(
    out, cfg: DemoConfig, rows: dict, metrics: dict, pair_summary: dict, timings: dict, examples: dict | None = None
) -> pathlib.Path:
    """Write ``report.md``, ``reward_vs_kl.png``, ``kl_curves.png`` and ``results.json`` into ``out``."""
    out = pathlib.Path(out)
    plot_reward_vs_kl(rows, out / "reward_vs_kl.png", cfg.methods)
    plot_kl_curves(metrics, out / "kl_curves.png", cfg.methods)
    final = [rows["reference"]] + [rows[m] for m in cfg.methods if m in rows]
    ref_r = rows["reference"]["reward_mean"]
    lines = [
        "# TDPO controlled-sentiment demo",
        "",
        "The first experiment of *Token-level Direct Preference Optimization* (Zeng et al., ICML 2024): "
        f"continue movie-review openers positively. Model `{cfg.model}`; preference pairs from the model's "
        "own samples ranked by VADER sentiment; LoRA adapters trained with DPO, TDPO1 and TDPO2 under the "
        "same budget; evaluated on held-out openers.",
        "",
        f"Machine: {machine_line()}.",
        "",
        "## Results (held-out prompts, final adapters)",
        "",
        markdown_table(final),
        "",
        f"Sequence KL: {KL_DIRECTION} (nats). Entropy: the policy's mean per-token predictive entropy. "
        "Win rate: a policy sample against the reference sample for the same prompt and slot under the "
        "reward, ties count 1/2.",
        "",
    ]
    verdict = []
    for m in cfg.methods:
        if m in rows:
            d = rows[m]["reward_mean"] - ref_r
            verdict.append(
                f"{m}: reward {rows[m]['reward_mean']:+.3f} vs reference {ref_r:+.3f} "
                f"({'higher' if d > 0 else 'not higher'}, {d:+.3f}) at KL {rows[m]['seq_kl_mean']:.2f}"
            )
    lines += ["Trained adapters against the reference's reward: " + "; ".join(verdict) + ".", ""]
    ck = sorted(
        [r for r in rows.values() if r.get("method") and r["name"] != r["method"]],
        key=lambda r: (cfg.methods.index(r["method"]) if r["method"] in cfg.methods else 9, r["step"]),
    )
    if ck:
        lines += ["### Intermediate checkpoints", "", markdown_table(ck), ""]
    lines += [
        "## Plots",
        "",
        "![reward vs KL](reward_vs_kl.png)",
        "",
        "Reward against sequence KL from the reference (TDPO Fig. 2a): up and to the left is better; "
        "a method whose points lie above another's reaches the same reward at less divergence. "
        "Points are final adapters (and evaluated checkpoints, labelled by step), each joined to the "
        "reference at KL 0.",
        "",
        "![KL curves](kl_curves.png)",
        "",
        "Sequential KL(π_ref ‖ π_θ) of chosen and rejected training responses and `kl/margin` "
        "(chosen - rejected) over steps, from each run's `metrics.jsonl` (TDPO Fig. 2b-d). In the paper "
        "DPO's KL grows fastest, on dispreferred responses most, while TDPO2 keeps both low; the curves "
        "above show what this run did.",
        "",
        "## Preference data",
        "",
        f"{pair_summary.get('prompts')} train prompts x {cfg.samples_per_prompt} samples of up to "
        f"{cfg.gen_max_tokens} tokens (temperature {cfg.temp}); {pair_summary.get('pairs')} pairs (best vs "
        f"worst per prompt; {pair_summary.get('skipped_near_tie')} near-ties with a gap < {cfg.min_reward_gap} "
        f"skipped). Mean reward: all samples {pair_summary.get('sample_reward_mean', math.nan):+.3f}, chosen "
        f"{pair_summary.get('chosen_reward_mean', math.nan):+.3f}, rejected "
        f"{pair_summary.get('rejected_reward_mean', math.nan):+.3f}.",
        "",
        "## Settings",
        "",
        f"Training: {cfg.iters} steps x {cfg.batch_size} pairs, lr {cfg.lr} (RMSprop, {cfg.warmup_steps} "
        f"warm-up steps), LoRA rank {cfg.lora_rank} alpha {cfg.lora_alpha}, beta {cfg.beta}, TDPO2 alpha "
        f"{cfg.alpha}. Evaluation: {rows['reference']['n_samples']} samples "
        f"({cfg.eval_samples_per_prompt} per held-out prompt) of up to {cfg.eval_max_tokens} tokens.",
        "",
        "```json",
        json.dumps(cfg.to_dict(), indent=1),
        "```",
        "",
        "## Timings",
        "",
        "Wall-clock seconds, and this process's CPU seconds (user + system over all threads; on a "
        "machine shared with other jobs the wall time overstates the stage).",
        "",
        "| stage | wall s | CPU s |",
        "|---|---:|---:|",
        *[f"| {k} | {v['wall_s']:.1f} | {v['cpu_s']:.1f} |" for k, v in timings.items()],
        f"| **total** | **{sum(v['wall_s'] for v in timings.values()):.1f}** | "
        f"**{sum(v['cpu_s'] for v in timings.values()):.1f}** |",
        "",
    ]
    if examples:
        lines += ["## Example completions (first held-out prompt)", ""]
        for name, (prompt, text, r) in examples.items():
            lines.append(f"- **{name}** ({r:+.2f}): {prompt}**{_md_escape(text)}**")
        lines.append("")
    write_text(out / "report.md", "\n".join(lines))
    write_json(
        out / "results.json",
        {
            "config": cfg.to_dict(),
            "rows": rows,
            "pairs": pair_summary,
            "timings": timings,
            "kl_direction": KL_DIRECTION,
        },
    )
    return out / "report.md"


def _md_escape(s: str) -> str:
    return s.replace("\n", " ").replace("*", "\\*").replace("|", "\\|").strip()
