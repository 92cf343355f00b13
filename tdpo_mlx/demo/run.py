"""The controlled-sentiment experiment of the TDPO paper (Zeng et al., 2024, Sec. 5.1), offline.

The paper's IMDb task: prompts are beginnings of movie reviews, the policy must continue them
with *positive* sentiment; preference pairs come from samples of the reference model ranked by
a sentiment classifier; DPO, TDPO1 and TDPO2 are compared by the reward they reach against the
KL divergence they spend (Fig. 2a), and by the sequential KL on chosen/rejected responses
during training (Fig. 2b-d).

Here, on the embedded default model (Gemma 3 270M, imported from a GGUF, no hub access):

1. ``prompts``  the shipped openers (``resources/imdb_openers.txt``), split into train / held-out;
2. ``samples``  K completions per train prompt from the reference (batched, resumable by chunk),
   scored by VADER compound sentiment (:func:`tdpo_mlx.rewards.sentiment_reward`);
3. ``pairs``    best vs worst completion per prompt, near-ties (gap < ``min_reward_gap``) skipped;
4. ``train``    LoRA adapters with DPO, TDPO1, TDPO2 under the same budget (:func:`tdpo_mlx.trainer.train`,
   resumable from its checkpoints);
5. ``eval``     reference and every adapter (and intermediate checkpoints) on held-out prompts
   (:func:`tdpo_mlx.evaluate.evaluate_policy`);
6. ``report``   ``report.md``, ``reward_vs_kl.png``, ``kl_curves.png``.

Every stage writes its outputs atomically into the output folder and is skipped when they exist,
so an interrupted run continues where it stopped.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import math
import os
import pathlib
import platform
import time
from collections.abc import Sequence

import numpy as np

from ..evaluate import (
    KL_DIRECTION,
    Sample,
    markdown_table,
    summarize,
    write_jsonl_atomic,
    write_text_atomic,
)

METHODS = ("dpo", "tdpo1", "tdpo2")
OPENERS = pathlib.Path(__file__).parents[1] / "resources" / "imdb_openers.txt"


@dataclasses.dataclass
class DemoConfig:
    """Every knob of the demo (the ``--quick`` and default presets are below)."""

    model: str = "gemma3-270m"
    seed: int = 0
    # prompts and preference data
    n_train_prompts: int = 160
    n_eval_prompts: int = 48
    samples_per_prompt: int = 4
    gen_max_tokens: int = 32
    temp: float = 1.0
    top_p: float = 1.0
    min_reward_gap: float = 0.2
    gen_batch_size: int = 128  # decoding is per-op bound on CPU: big batches are ~3x cheaper per token
    # training (same budget for every method)
    methods: tuple = METHODS
    iters: int = 60
    batch_size: int = 4
    lr: float = 1e-4  # RMSprop on LoRA: 5e-4 blew the KL up to >100 nats within 8 steps
    warmup_steps: int = 5
    lora_rank: int = 8
    lora_alpha: float = 16.0
    beta: float = 0.1
    alpha: float = 0.5
    max_length: int = 96
    max_prompt_length: int = 48
    save_every: int = 20
    steps_per_report: int = 2
    # evaluation
    eval_samples_per_prompt: int = 2
    eval_max_tokens: int = 32
    score_batch_size: int = 16
    eval_checkpoints: bool = True

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["methods"] = list(self.methods)
        return d


QUICK = DemoConfig(
    n_train_prompts=40,
    n_eval_prompts=16,
    samples_per_prompt=4,
    gen_max_tokens=20,
    gen_batch_size=160,
    iters=14,
    batch_size=4,
    lr=1.5e-4,
    warmup_steps=2,
    save_every=0,
    steps_per_report=1,
    eval_samples_per_prompt=3,
    eval_max_tokens=20,
    eval_checkpoints=False,
)
FULL = DemoConfig()

# ----------------------------------------------------------------------------------------------
# Small helpers


def load_openers(path=OPENERS) -> list[str]:
    """The shipped review openers, one per line (blank lines skipped)."""
    lines = [x.strip() for x in pathlib.Path(path).read_text(encoding="utf-8").splitlines()]
    return [x for x in lines if x]


def split_prompts(prompts: Sequence[str], n_train: int, n_eval: int, seed: int) -> tuple[list[str], list[str]]:
    """Shuffle with ``seed`` and cut disjoint train / held-out prompt lists.

    Raises:
        ValueError: when fewer than ``n_train + n_eval`` prompts are available.
    """
    if n_train + n_eval > len(prompts):
        raise ValueError(f"need {n_train} + {n_eval} prompts, only {len(prompts)} available")
    order = np.random.default_rng(seed).permutation(len(prompts))
    shuffled = [prompts[i] for i in order]
    return shuffled[:n_train], shuffled[n_train : n_train + n_eval]


def build_pairs(samples: Sequence[Sample], rewards: Sequence[float], min_gap: float) -> tuple[list[dict], dict]:
    """Preference pairs from scored samples: per prompt, best vs worst completion.

    Args:
        samples: completions, several per ``prompt_index``.
        rewards: one reward per sample (higher is preferred).
        min_gap: a prompt gives a pair only when max - min reward >= ``min_gap`` (near-ties are
            noise for a preference model) and the two completions differ.

    Returns:
        (pairs, summary): pairs are dicts with prompt, chosen, rejected (texts), chosen_reward,
        rejected_reward, prompt_ids, chosen_ids, rejected_ids, in prompt order; the first
        sample wins ties for best and for worst. summary counts prompts, pairs and skips.
    """
    if len(samples) != len(rewards):
        raise ValueError(f"{len(samples)} samples but {len(rewards)} rewards")
    groups: dict[int, list[int]] = {}
    for i, s in enumerate(samples):
        groups.setdefault(s.prompt_index, []).append(i)
    pairs, skipped_gap, skipped_same = [], 0, 0
    for p in sorted(groups):
        idx = groups[p]
        r = [rewards[i] for i in idx]
        best = idx[int(np.argmax(r))]
        worst = idx[int(np.argmin(r))]
        if rewards[best] - rewards[worst] < min_gap or len(idx) < 2:
            skipped_gap += 1
            continue
        c, j = samples[best], samples[worst]
        if c.completion_ids == j.completion_ids:
            skipped_same += 1
            continue
        pairs.append(
            dict(
                prompt=c.prompt,
                chosen=c.completion,
                rejected=j.completion,
                chosen_reward=float(rewards[best]),
                rejected_reward=float(rewards[worst]),
                prompt_ids=list(c.prompt_ids),
                chosen_ids=list(c.completion_ids),
                rejected_ids=list(j.completion_ids),
            )
        )
    summary = {
        "prompts": len(groups),
        "pairs": len(pairs),
        "skipped_near_tie": skipped_gap,
        "skipped_identical": skipped_same,
        "chosen_reward_mean": float(np.mean([x["chosen_reward"] for x in pairs])) if pairs else math.nan,
        "rejected_reward_mean": float(np.mean([x["rejected_reward"] for x in pairs])) if pairs else math.nan,
        "sample_reward_mean": float(np.mean(rewards)) if len(rewards) else math.nan,
    }
    return pairs, summary


def read_jsonl(path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(x) for x in f if x.strip()]


def _read_json(path):
    return json.loads(pathlib.Path(path).read_text(encoding="utf-8"))


def _write_json(path, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2) + "\n")


class _Clock:
    """Stage timings (wall seconds and this process's CPU seconds), persisted in
    ``timings.json`` so a resumed run reports all of them. CPU seconds show the work done even
    when other jobs share the cores (wall time then overstates a stage)."""

    def __init__(self, path: pathlib.Path):
        self.path = path
        t = _read_json(path) if path.exists() else {}
        self.t = {k: v if isinstance(v, dict) else {"wall_s": float(v), "cpu_s": 0.0} for k, v in t.items()}
        self._start = None

    def start(self) -> None:
        self._start = (time.perf_counter(), time.process_time())

    def stop(self, stage: str) -> None:
        wall = time.perf_counter() - self._start[0]
        cpu = time.process_time() - self._start[1]
        old = self.t.get(stage, {"wall_s": 0.0, "cpu_s": 0.0})
        self.t[stage] = {"wall_s": round(old["wall_s"] + wall, 2), "cpu_s": round(old["cpu_s"] + cpu, 2)}
        _write_json(self.path, self.t)


def _say(msg: str) -> None:
    print(msg, flush=True)


# ----------------------------------------------------------------------------------------------
# Stages


def _load_eval_model(model_dir: str, cfg: DemoConfig):
    """Base model with (zero-initialized, to be overwritten) LoRA wrappers matching training."""
    from ..models import load_policy

    model, tok = load_policy(model_dir, lora_rank=cfg.lora_rank, lora_alpha=cfg.lora_alpha)
    model.eval()
    return model, tok


def _load_adapter_weights(model, adapter_file) -> None:
    from ..evaluate import load_adapter_weights

    load_adapter_weights(model, adapter_file)


def stage_samples(out: pathlib.Path, cfg: DemoConfig, model, tok, train_prompts, reward_fn, progress: bool):
    """K reference completions per train prompt, scored; chunk files make it resumable."""
    from ..evaluate import generate_samples
    from ..models import adapters_disabled

    final = out / "samples.jsonl"
    if final.exists():
        return [Sample.from_json(r["sample"]) for r in read_jsonl(final)], [r["reward"] for r in read_jsonl(final)]
    chunk_dir = out / "samples.chunks"
    chunk = max(1, cfg.gen_batch_size // cfg.samples_per_prompt) * 4
    rows = []
    for c0 in range(0, len(train_prompts), chunk):
        path = chunk_dir / f"chunk-{c0:05d}.jsonl"
        if path.exists():
            rows.extend(read_jsonl(path))
            continue
        ps = train_prompts[c0 : c0 + chunk]
        with adapters_disabled(model):
            samples = generate_samples(
                model,
                tok,
                ps,
                samples_per_prompt=cfg.samples_per_prompt,
                max_tokens=cfg.gen_max_tokens,
                temp=cfg.temp,
                top_p=cfg.top_p,
                seed=cfg.seed * 7919 + c0,
                batch_size=cfg.gen_batch_size,
                progress=progress,
                desc=f"sample reference {c0 + len(ps)}/{len(train_prompts)} prompts",
            )
        rewards = reward_fn([s.prompt for s in samples], [s.completion for s in samples])
        part = []
        for s, r in zip(samples, rewards):
            s.prompt_index += c0
            part.append({"sample": s.to_json(), "reward": r})
        write_jsonl_atomic(path, part)
        rows.extend(part)
        _say(f"  sampled {c0 + len(ps)}/{len(train_prompts)} prompts")
    write_jsonl_atomic(final, rows)
    return [Sample.from_json(r["sample"]) for r in rows], [r["reward"] for r in rows]


def stage_train(out: pathlib.Path, cfg: DemoConfig, model_dir: str, method: str, pairs: list[dict]) -> dict:
    """Train one method's adapters (resuming from its latest checkpoint); returns train()'s result."""
    from ..data import EncodedPair
    from ..trainer import TrainConfig, train

    adir = out / "adapters" / method
    done = adir / "done.json"
    if done.exists():
        return _read_json(done)
    encoded = [EncodedPair(p["prompt_ids"], p["chosen_ids"], p["rejected_ids"], index=i) for i, p in enumerate(pairs)]
    resume = "latest" if (adir / "checkpoints" / "latest.json").exists() else None
    tc = TrainConfig(
        model=model_dir,
        data=str(out / "pairs.jsonl"),
        loss=method,
        beta=cfg.beta,
        alpha=cfg.alpha,
        lora_rank=cfg.lora_rank,
        lora_alpha=cfg.lora_alpha,
        lr=cfg.lr,
        warmup_steps=cfg.warmup_steps,
        iters=cfg.iters,
        batch_size=cfg.batch_size,
        eval_every=0,
        save_every=cfg.save_every,
        keep_checkpoints=0,
        steps_per_report=cfg.steps_per_report,
        adapter_path=str(adir),
        resume=resume,
        seed=cfg.seed,
        max_length=cfg.max_length,
        max_prompt_length=cfg.max_prompt_length,
    )
    result = train(tc, train_pairs=encoded, eval_pairs=[])
    if result.get("interrupted"):
        raise KeyboardInterrupt
    result = {k: v for k, v in result.items() if isinstance(v, (int, float, str, bool, type(None)))}
    _write_json(done, result)
    return result


def eval_points(out: pathlib.Path, cfg: DemoConfig, method: str) -> list[tuple[str, int, pathlib.Path]]:
    """(name, step, adapters file) to evaluate for a method: intermediate checkpoints (when
    ``eval_checkpoints``) and the final adapters."""
    adir = out / "adapters" / method
    pts = []
    if cfg.eval_checkpoints:
        for ck in sorted((adir / "checkpoints").glob("step-*")):
            step = int(ck.name.split("-")[1])
            if step < cfg.iters and (ck / "adapters.safetensors").exists():
                pts.append((f"{method}@{step}", step, ck / "adapters.safetensors"))
    pts.append((method, cfg.iters, adir / "adapters.safetensors"))
    return pts


def stage_eval(out: pathlib.Path, cfg: DemoConfig, get_model, eval_prompts, reward_fn, progress: bool) -> dict:
    """Evaluate the reference once, then every adapter point; one JSON file per point.

    ``get_model()`` returns the (model, tokenizer) to evaluate with, loaded on first need."""
    from ..evaluate import _pad_id, evaluate_policy, generate_samples, sample_statistics
    from ..models import adapter_modules, adapters_disabled

    edir = out / "eval"
    kw = dict(
        samples_per_prompt=cfg.eval_samples_per_prompt,
        max_tokens=cfg.eval_max_tokens,
        temp=cfg.temp,
        top_p=cfg.top_p,
        seed=cfg.seed + 12345,
        batch_size=cfg.gen_batch_size,
    )
    ref_file = edir / "reference.json"
    if ref_file.exists():
        d = _read_json(ref_file)
        ref = ([Sample.from_json(s) for s in d["samples"]], d["rewards"], d["row"])
    else:
        _say("  reference")
        model, tok = get_model()
        with adapters_disabled(model):
            samples = generate_samples(model, tok, eval_prompts, progress=progress, desc="sample reference", **kw)
            stats = sample_statistics(
                model,
                samples,
                compute_kl=False,
                batch_size=cfg.score_batch_size,
                pad_id=_pad_id(tok),
                progress=progress,
                desc="score reference",
            )
        rewards = reward_fn([s.prompt for s in samples], [s.completion for s in samples])
        row = summarize("reference", samples, rewards, stats, rewards)
        row["step"] = 0
        _write_json(ref_file, {"row": row, "rewards": rewards, "samples": [s.to_json() for s in samples]})
        ref = (samples, rewards, row)
    rows = {"reference": ref[2]}
    for method in cfg.methods:
        for name, step, afile in eval_points(out, cfg, method):
            f = edir / f"{name.replace('@', '-step-')}.json"
            if f.exists():
                rows[name] = _read_json(f)["row"]
                continue
            _say(f"  {name}")
            model, tok = get_model()
            if not adapter_modules(model):
                raise RuntimeError("the evaluation model has no adapters to load weights into")
            _load_adapter_weights(model, afile)
            res = evaluate_policy(
                model,
                tok,
                eval_prompts,
                reward_fn,
                name=name,
                reference=ref,
                score_batch_size=cfg.score_batch_size,
                progress=progress,
                **kw,
            )
            row = dict(res.policy, method=method, step=step)
            _write_json(
                f, {"row": row, "rewards": res.policy_rewards, "samples": [s.to_json() for s in res.policy_samples]}
            )
            rows[name] = row
    return rows


# ----------------------------------------------------------------------------------------------
# Report and plots


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
    ``kl/margin`` (= KL on rejected - KL on chosen, the TDPO2 term) over training steps, one
    line per method (TDPO Fig. 2b-d). Dots: logged values (each a few pairs, noisy); lines:
    trailing mean over ``smooth`` records."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [
        ("kl/chosen", "chosen (preferred)"),
        ("kl/rejected", "rejected (dispreferred)"),
        ("kl/margin", "margin = rejected - chosen"),
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
        "(rejected - chosen) over steps, from each run's `metrics.jsonl` (TDPO Fig. 2b-d). In the paper "
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
    write_text_atomic(out / "report.md", "\n".join(lines))
    _write_json(
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


# ----------------------------------------------------------------------------------------------
# The whole job


def run_demo(out, cfg: DemoConfig, *, progress: bool = True, reward_fn=None) -> pathlib.Path:
    """Run (or resume) the experiment into folder ``out``; returns the path of ``report.md``.

    Args:
        reward_fn: override of the VADER sentiment reward (tests).

    Raises:
        ValueError: ``out`` holds a run whose data settings differ (use a new folder).
    """
    from ..rewards import load_reward

    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cfg_file = out / "demo_config.json"
    if cfg_file.exists():
        old = _read_json(cfg_file)
        # a run folder continues only under the same settings (methods may be added)
        diff = [k for k in cfg.to_dict() if k != "methods" and k in old and old[k] != cfg.to_dict()[k]]
        if diff:
            raise ValueError(
                f"{out} holds a demo run with other settings ({', '.join(diff)}); use a new --out folder "
                "or delete this one"
            )
    _write_json(cfg_file, cfg.to_dict())
    clock = _Clock(out / "timings.json")
    reward_fn = reward_fn or load_reward("sentiment")
    n_stages = 6

    # 1. model
    clock.start()
    _say(f"[1/{n_stages}] model: resolving {cfg.model}")
    from ..gguf import resolve_model_path

    model_dir = str(resolve_model_path(cfg.model))
    _say(f"  {model_dir}")
    if not (out / "prompts.json").exists():
        train_p, eval_p = split_prompts(load_openers(), cfg.n_train_prompts, cfg.n_eval_prompts, cfg.seed)
        _write_json(out / "prompts.json", {"train": train_p, "eval": eval_p})
    prompts = _read_json(out / "prompts.json")
    model = tok = None

    def eval_model():
        nonlocal model, tok
        if model is None:
            model, tok = _load_eval_model(model_dir, cfg)
        return model, tok

    clock.stop("model")

    # 2. samples from the reference
    clock.start()
    done = (out / "samples.jsonl").exists()
    _say(
        f"[2/{n_stages}] samples: {cfg.samples_per_prompt} x {len(prompts['train'])} prompts from the reference"
        + (" (done)" if done else "")
    )
    m_, t_ = (model, tok) if done else eval_model()
    samples, rewards = stage_samples(out, cfg, m_, t_, prompts["train"], reward_fn, progress)
    if not done:
        clock.stop("samples")

    # 3. pairs
    pairs, summary = build_pairs(samples, rewards, cfg.min_reward_gap)
    if not (out / "pairs.jsonl").exists():
        write_jsonl_atomic(out / "pairs.jsonl", pairs)
        _write_json(out / "pairs_summary.json", summary)
    _say(
        f"[3/{n_stages}] pairs: {summary['pairs']} from {summary['prompts']} prompts "
        f"(chosen {summary['chosen_reward_mean']:+.3f}, rejected {summary['rejected_reward_mean']:+.3f})"
    )
    if not pairs:
        raise RuntimeError("no preference pairs: every prompt's samples were near-ties; lower min_reward_gap")

    # 4. train (each method loads its own fresh policy; the evaluation model stays loaded)
    for i, m in enumerate(cfg.methods):
        clock.start()
        done = (out / "adapters" / m / "done.json").exists()
        _say(
            f"[4/{n_stages}] train {m} ({i + 1}/{len(cfg.methods)}): {cfg.iters} steps x {cfg.batch_size} pairs"
            + (" (done)" if done else "")
        )
        stage_train(out, cfg, model_dir, m, pairs)
        if not done:
            clock.stop(f"train {m}")
        gc.collect()

    # 5. eval
    clock.start()
    _say(f"[5/{n_stages}] eval: reference and {', '.join(cfg.methods)} on {len(prompts['eval'])} held-out prompts")
    rows = stage_eval(out, cfg, eval_model, prompts["eval"], reward_fn, progress)
    clock.stop("eval")

    # 6. report
    _say(f"[6/{n_stages}] report")
    metrics = {m: read_metrics(out / "adapters" / m / "metrics.jsonl") for m in cfg.methods}
    examples = _examples(out, cfg)
    path = write_report(out, cfg, rows, metrics, summary, clock.t, examples)
    _say(markdown_table([rows["reference"]] + [rows[m] for m in cfg.methods if m in rows]))
    _say(f"wrote {path}, {out / 'reward_vs_kl.png'}, {out / 'kl_curves.png'}")
    return path


def _examples(out: pathlib.Path, cfg: DemoConfig) -> dict:
    ex = {}
    for name in ("reference",) + tuple(cfg.methods):
        f = out / "eval" / f"{name}.json"
        if f.exists():
            d = _read_json(f)
            s = d["samples"][0]
            ex[name] = (s["prompt"], s["completion"], d["rewards"][0])
    return ex
