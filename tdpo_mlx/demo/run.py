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
   a fraction held out (scored during training: held-out preference accuracy);
4. ``train``    LoRA adapters with DPO, TDPO1 and TDPO2 at each alpha, one run per seed, under the
   same budget (:func:`tdpo_mlx.trainer.train`, resumable from its checkpoints);
5. ``eval``     the reference and every run at evenly spaced checkpoints on the same held-out
   prompts: per-sample reward and sequence KL(pi_theta || pi_ref), the points of each frontier;
6. ``report``   ``report.md`` with the verdict sentence, ``reward_vs_kl.png``, ``kl_curves.png``.

Every stage writes its outputs atomically into the output folder and is skipped when they exist,
so an interrupted run continues where it stopped.
"""

from __future__ import annotations

import gc
import json
import math
import pathlib
import time
from collections.abc import Sequence

import numpy as np

from ..atomic import write_json, write_jsonl
from ..data import pad_id
from ..errors import UserError
from ..evaluation import summarize
from ..generation import Sample, generate_samples
from ..models import resolve_model
from .config import OPENERS, DemoConfig
from .report import read_jsonl, read_metrics, write_report

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


def _read_json(path):
    return json.loads(pathlib.Path(path).read_text(encoding="utf-8"))


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
        write_json(self.path, self.t)


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


def stage_samples(out: pathlib.Path, cfg: DemoConfig, model, tok, train_prompts, reward_fn, progress: bool):
    """K reference completions per train prompt, scored; chunk files make it resumable."""
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
                seed=cfg.seeds[0] * 7919 + c0,
                batch_size=cfg.gen_batch_size,
                progress=progress,
                desc=f"sample reference {c0 + len(ps)}/{len(train_prompts)} prompts",
            )
        rewards = reward_fn([s.prompt for s in samples], [s.completion for s in samples])
        part = []
        for s, r in zip(samples, rewards):
            s.prompt_index += c0
            part.append({"sample": s.to_json(), "reward": r})
        write_jsonl(path, part)
        rows.extend(part)
        _say(f"  sampled {c0 + len(ps)}/{len(train_prompts)} prompts")
    write_jsonl(final, rows)
    return [Sample.from_json(r["sample"]) for r in rows], [r["reward"] for r in rows]


def stage_train(
    out: pathlib.Path,
    cfg,
    model_dir: str,
    variant: tuple,
    seed: int,
    train_pairs: list,
    heldout_pairs: list,
    *,
    save_every: int = 0,
    progress: bool = True,
) -> dict:
    """Train one variant with one seed (resuming from its latest checkpoint); held-out pairs are
    scored every ``save_every`` steps (``eval_rewards/accuracies`` in its metrics.jsonl).

    Args:
        variant: (name, loss, TDPO2 alpha or None) from ``cfg.variants()``.
        train_pairs, heldout_pairs: :class:`tdpo_mlx.data.EncodedPair` lists.

    Returns:
        train()'s result (plain values), also written to ``done.json``.
    """
    from ..trainer import TrainConfig, train

    name, loss, alpha = variant
    adir = run_dir(out, name, seed)
    done = adir / "done.json"
    if done.exists():
        return _read_json(done)
    resume = "latest" if (adir / "checkpoints" / "latest.json").exists() else None
    tc = TrainConfig(
        model=model_dir,
        data=str(out / "pairs.jsonl"),
        loss=loss,
        beta=cfg.beta,
        alpha=alpha if alpha is not None else 0.5,
        lora_rank=cfg.lora_rank,
        lora_alpha=cfg.lora_alpha,
        lr=cfg.lr,
        warmup_steps=cfg.warmup_steps,
        iters=cfg.iters,
        batch_size=cfg.batch_size,
        eval_every=save_every,
        max_eval_pairs=0,
        save_every=save_every,
        keep_checkpoints=0,
        steps_per_report=cfg.steps_per_report,
        adapter_path=str(adir),
        resume=resume,
        seed=seed,
        max_length=cfg.max_length,
        max_prompt_length=cfg.max_prompt_length,
        progress=progress,
    )
    result = train(tc, train_pairs=train_pairs, eval_pairs=heldout_pairs)
    if result.get("interrupted"):
        raise KeyboardInterrupt
    result = {k: v for k, v in result.items() if isinstance(v, (int, float, str, bool, type(None)))}
    write_json(done, result)
    return result


def run_dir(out: pathlib.Path, name: str, seed: int) -> pathlib.Path:
    """Folder of one training run: ``adapters/<variant>/seed-<seed>``."""
    return pathlib.Path(out) / "adapters" / name / f"seed-{seed}"


def adapters_at(out: pathlib.Path, name: str, seed: int, step: int, final_step: int) -> pathlib.Path:
    """The adapters file of a run after ``step`` steps (a checkpoint, or the final adapters)."""
    d = run_dir(out, name, seed)
    if step == final_step:
        return d / "adapters.safetensors"
    return d / "checkpoints" / f"step-{step:07d}" / "adapters.safetensors"


def encoded(pairs: list[dict]) -> list:
    """Pair dicts (with prompt_ids/chosen_ids/rejected_ids) as trainer pairs."""
    from ..data import EncodedPair

    return [EncodedPair(p["prompt_ids"], p["chosen_ids"], p["rejected_ids"], index=i) for i, p in enumerate(pairs)]


def score_samples(model, tok, samples, reward_fn, cfg, *, compute_kl: bool, progress: bool, desc: str) -> dict:
    """Per-sample reward, sequence KL(pi_theta || pi_ref) (0 without ``compute_kl``), entropy sum
    and token count of ``samples`` (plain lists, JSON-ready) plus the table row."""
    from ..evaluation import sample_statistics

    stats = sample_statistics(
        model,
        samples,
        compute_kl=compute_kl,
        batch_size=cfg.score_batch_size,
        pad_id=pad_id(tok),
        progress=progress,
        desc=desc,
    )
    rewards = [float(x) for x in reward_fn([s.prompt for s in samples], [s.completion for s in samples])]
    return {
        "stats": stats,
        "rewards": rewards,
        "kl": [float(x) for x in np.asarray(stats["kl"])],
        "entropy_sum": [float(x) for x in np.asarray(stats["entropy_sum"])],
        "n_tokens": [int(x) for x in np.asarray(stats["n_tokens"])],
        "prompt_index": [s.prompt_index for s in samples],
    }


def eval_point(model, tok, prompts, reward_fn, cfg, *, name: str, seed: int, reference, progress: bool) -> dict:
    """Sample ``cfg.eval_samples_per_prompt`` completions per prompt from ``model`` (adapters on,
    or off for ``reference=None``) and score them; returns the point's JSON record: ``row``
    (table row), per-sample ``rewards``, ``kl``, ``entropy_sum``, ``n_tokens``,
    ``prompt_index`` and the ``samples``."""
    from ..models import adapters_disabled

    kw = dict(
        samples_per_prompt=cfg.eval_samples_per_prompt,
        max_tokens=cfg.eval_max_tokens,
        temp=cfg.temp,
        top_p=cfg.top_p,
        seed=seed + 12345,
        batch_size=cfg.gen_batch_size,
        progress=progress,
    )
    if reference is None:
        with adapters_disabled(model):
            samples = generate_samples(model, tok, prompts, desc=f"sample {name}", **kw)
            d = score_samples(model, tok, samples, reward_fn, cfg, compute_kl=False, progress=progress, desc="score")
        ref_rewards = d["rewards"]
    else:
        samples = generate_samples(model, tok, prompts, desc=f"sample {name}", **kw)
        d = score_samples(model, tok, samples, reward_fn, cfg, compute_kl=True, progress=progress, desc="score")
        ref_rewards = reference["rewards"]
    stats = d.pop("stats")
    row = summarize(name, samples, d["rewards"], stats, ref_rewards)
    return {"row": row, **d, "samples": [s.to_json() for s in samples]}


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, dynamic_ncols=True)


def stage_eval(out: pathlib.Path, cfg: DemoConfig, get_model, eval_prompts, reward_fn, progress: bool) -> dict:
    """Evaluate the reference once, then every (variant, seed, step) point on the held-out
    prompts; one JSON file per point (``eval/<variant>/seed-<s>/step-<n>.json``), so a rerun
    evaluates only what is missing. Returns ``{"reference": record, (name, seed, step): record}``."""
    from ..checkpoint import load_adapter_weights
    from ..models import adapter_modules

    ref_file = out / "eval" / "reference.json"
    todo = [(v[0], s, k) for v in cfg.variants() for s in cfg.seeds for k in cfg.eval_steps()]
    bar = _progress(len(todo) + 1, "eval points", progress)
    if not ref_file.exists():
        model, tok = get_model()
        rec = eval_point(
            model,
            tok,
            eval_prompts,
            reward_fn,
            cfg,
            name="reference",
            seed=cfg.seeds[0],
            reference=None,
            progress=False,
        )
        write_json(ref_file, rec)
    ref = _read_json(ref_file)
    bar.update(1)
    points = {"reference": ref}
    for name, seed, step in todo:
        f = out / "eval" / name / f"seed-{seed}" / f"step-{step}.json"
        if not f.exists():
            model, tok = get_model()
            if not adapter_modules(model):
                raise RuntimeError("the evaluation model has no adapters to load weights into")
            load_adapter_weights(model, adapters_at(out, name, seed, step, cfg.iters))
            rec = eval_point(
                model,
                tok,
                eval_prompts,
                reward_fn,
                cfg,
                name=f"{name}@{step}",
                seed=seed,
                reference=ref,
                progress=False,
            )
            rec["row"].update(method=name, seed=seed, step=step)
            write_json(f, rec)
        points[(name, seed, step)] = _read_json(f)
        bar.update(1)
    bar.close()
    return points


# ----------------------------------------------------------------------------------------------
# The whole job


def check_settings(out: pathlib.Path, cfg) -> None:
    """Refuse to continue a run folder made with other settings (methods, alphas and seeds may
    be added). Raises ValueError naming the differing settings."""
    cfg_file = out / "demo_config.json"
    growable = ("methods", "tdpo2_alphas", "seeds")
    if cfg_file.exists():
        old = _read_json(cfg_file)
        new = cfg.to_dict()
        diff = [k for k in new if k not in growable and k in old and old[k] != new[k]]
        if diff:
            raise UserError(
                f"{out} holds a demo run with other settings ({', '.join(diff)}); use a new --out folder "
                "or delete this one"
            )
    write_json(cfg_file, cfg.to_dict())


def announce(cfg, experiment: str) -> None:
    """Print the preset's stages with their estimated idle-machine time, before any work."""
    from .config import estimate

    est = estimate(cfg)
    _say(
        f"{experiment}: {len(cfg.variants())} variants ({', '.join(v[0] for v in cfg.variants())}) x "
        f"{len(cfg.seeds)} seed(s) on {cfg.model}; estimated {sum(s for _, s in est) / 60:.0f} min on an idle "
        "2-core machine (more when the cores are shared):"
    )
    for stage, s in est:
        _say(f"  {stage}: ~{s / 60:.1f} min")


def run_demo(out, cfg: DemoConfig, *, progress: bool = True, reward_fn=None) -> pathlib.Path:
    """Run (or resume) the controlled-sentiment experiment into folder ``out``; returns the path of
    ``report.md``.

    Args:
        reward_fn: override of the VADER sentiment reward (tests).

    Raises:
        ValueError: ``out`` holds a run whose data settings differ (use a new folder).
    """
    from ..data.load import split_holdout
    from ..rewards import load_reward

    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    check_settings(out, cfg)
    announce(cfg, "controlled-sentiment experiment")
    clock = _Clock(out / "timings.json")
    reward_fn = reward_fn or load_reward("sentiment")
    n_stages = 6

    # 1. model
    clock.start()
    _say(f"[1/{n_stages}] model: resolving {cfg.model}")
    model_dir = resolve_model(cfg.model)
    _say(f"  {model_dir}")
    if not (out / "prompts.json").exists():
        train_p, eval_p = split_prompts(load_openers(), cfg.n_train_prompts, cfg.n_eval_prompts, cfg.seeds[0])
        write_json(out / "prompts.json", {"train": train_p, "eval": eval_p})
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

    # 3. pairs, split into training and held-out pairs
    pairs, summary = build_pairs(samples, rewards, cfg.min_reward_gap)
    if not pairs:
        raise RuntimeError("no preference pairs: every prompt's samples were near-ties; lower min_reward_gap")
    train_pairs, heldout = split_holdout(pairs, cfg.heldout_fraction, cfg.seeds[0]) if len(pairs) > 1 else (pairs, [])
    summary.update(train_pairs=len(train_pairs), heldout_pairs=len(heldout))
    if not (out / "pairs.jsonl").exists():
        write_jsonl(out / "heldout_pairs.jsonl", heldout)
        write_json(out / "pairs_summary.json", summary)
        write_jsonl(out / "pairs.jsonl", train_pairs)
    _say(
        f"[3/{n_stages}] pairs: {len(train_pairs)} for training + {len(heldout)} held out, from "
        f"{summary['prompts']} prompts (chosen {summary['chosen_reward_mean']:+.3f}, rejected "
        f"{summary['rejected_reward_mean']:+.3f})"
    )

    # 4. train (each run loads its own fresh policy; the evaluation model stays loaded)
    runs = [(v, s) for v in cfg.variants() for s in cfg.seeds]
    for i, (v, s) in enumerate(runs):
        clock.start()
        done = (run_dir(out, v[0], s) / "done.json").exists()
        _say(
            f"[4/{n_stages}] train {v[0]} seed {s} ({i + 1}/{len(runs)}): {cfg.iters} steps x {cfg.batch_size} "
            f"pairs, held-out pairs scored every {cfg.save_every()} steps" + (" (done)" if done else "")
        )
        stage_train(
            out,
            cfg,
            model_dir,
            v,
            s,
            encoded(train_pairs),
            encoded(heldout),
            save_every=cfg.save_every(),
            progress=progress,
        )
        if not done:
            clock.stop(f"train {v[0]} seed {s}")
        gc.collect()

    # 5. eval
    clock.start()
    n_points = len(runs) * len(cfg.eval_steps()) + 1
    _say(
        f"[5/{n_stages}] eval: reference + {n_points - 1} checkpoints (steps {cfg.eval_steps()}) on "
        f"{len(prompts['eval'])} held-out prompts x {cfg.eval_samples_per_prompt} samples"
    )
    points = stage_eval(out, cfg, eval_model, prompts["eval"], reward_fn, progress)
    clock.stop("eval")

    # 6. report
    _say(f"[6/{n_stages}] report")
    metrics = {(v[0], s): read_metrics(run_dir(out, v[0], s) / "metrics.jsonl") for v, s in runs}
    path = write_report(out, cfg, points, metrics, summary, clock.t)
    _say(_read_json(out / "results.json")["verdict"])
    _say(f"wrote {path}, {out / 'reward_vs_kl.png'}, {out / 'kl_curves.png'}")
    return path
