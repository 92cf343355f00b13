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

import functools
import pathlib

import numpy as np

from ..atomic import write_json, write_jsonl
from ..checkpoint import load_adapter_weights
from ..data import pad_id, split_holdout
from ..evaluation import sample_statistics, summarize
from ..generation import Sample, generate_samples
from ..models import adapter_modules, adapters_disabled, resolve_model
from ..rewards import load_reward
from .common import (
    load_eval_model,
    progress_bar,
    read_json,
    reference_if,
    run_dir,
    say,
    start_run,
    train_runs,
)
from .config import DemoConfig
from .pairs import build_pairs, encoded, load_openers, split_prompts
from .report import read_jsonl, read_metrics, write_report

N_STAGES = 6


def stage_samples(out: pathlib.Path, cfg: DemoConfig, get_model, train_prompts, reward_fn, progress: bool):
    """K reference completions per train prompt, scored; chunk files make it resumable."""
    final = out / "samples.jsonl"
    if final.exists():
        return [Sample.from_json(r["sample"]) for r in read_jsonl(final)], [r["reward"] for r in read_jsonl(final)]
    model, tok = get_model()
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
        say(f"  sampled {c0 + len(ps)}/{len(train_prompts)} prompts")
    write_jsonl(final, rows)
    return [Sample.from_json(r["sample"]) for r in rows], [r["reward"] for r in rows]


def adapters_at(out: pathlib.Path, name: str, seed: int, step: int, final_step: int) -> pathlib.Path:
    """The adapters file of a run after ``step`` steps (a checkpoint, or the final adapters)."""
    d = run_dir(out, name, seed)
    if step == final_step:
        return d / "adapters.safetensors"
    return d / "checkpoints" / f"step-{step:07d}" / "adapters.safetensors"


def score_samples(model, tok, samples, reward_fn, cfg, *, compute_kl: bool, progress: bool, desc: str) -> dict:
    """Per-sample reward, sequence KL(pi_theta || pi_ref) (0 without ``compute_kl``), entropy sum
    and token count of ``samples`` (plain lists, JSON-ready) plus the table row."""
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
    policy = reference is not None
    with reference_if(model, not policy):
        samples = generate_samples(
            model, tok, prompts, desc=f"sample {name}", progress=progress, **cfg.eval_sampling(seed)
        )
        d = score_samples(model, tok, samples, reward_fn, cfg, compute_kl=policy, progress=progress, desc="score")
    stats = d.pop("stats")
    row = summarize(name, samples, d["rewards"], stats, reference["rewards"] if policy else d["rewards"])
    return {"row": row, **d, "samples": [s.to_json() for s in samples]}


def stage_eval(out: pathlib.Path, cfg: DemoConfig, get_model, eval_prompts, reward_fn, progress: bool) -> dict:
    """Evaluate the reference once, then every (variant, seed, step) point on the held-out
    prompts; one JSON file per point (``eval/<variant>/seed-<s>/step-<n>.json``), so a rerun
    evaluates only what is missing. Returns ``{"reference": record, (name, seed, step): record}``."""
    ref_file = out / "eval" / "reference.json"
    todo = [(v[0], s, k) for v in cfg.variants() for s in cfg.seeds for k in cfg.eval_steps()]
    bar = progress_bar(len(todo) + 1, "eval points", progress)
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
    ref = read_json(ref_file)
    bar.update(1)
    points = {"reference": ref}
    for name, seed, step in todo:
        f = out / "eval" / name / f"seed-{seed}" / f"step-{step}.json"
        if not f.exists():
            write_json(f, _checkpoint_point(out, cfg, get_model, eval_prompts, reward_fn, ref, name, seed, step))
        points[(name, seed, step)] = read_json(f)
        bar.update(1)
    bar.close()
    return points


def _checkpoint_point(out, cfg: DemoConfig, get_model, eval_prompts, reward_fn, ref: dict, name, seed, step) -> dict:
    """The evaluation record of one run's adapters after ``step`` steps (see :func:`eval_point`)."""
    model, tok = get_model()
    if not adapter_modules(model):
        raise RuntimeError("the evaluation model has no adapters to load weights into")
    load_adapter_weights(model, adapters_at(out, name, seed, step, cfg.iters))
    rec = eval_point(
        model, tok, eval_prompts, reward_fn, cfg, name=f"{name}@{step}", seed=seed, reference=ref, progress=False
    )
    rec["row"].update(method=name, seed=seed, step=step)
    return rec


def stage_prompts(out: pathlib.Path, cfg: DemoConfig) -> dict:
    """``{"train": [...], "eval": [...]}`` prompt texts, split once and kept in ``prompts.json``."""
    if not (out / "prompts.json").exists():
        train_p, eval_p = split_prompts(load_openers(), cfg.n_train_prompts, cfg.n_eval_prompts, cfg.seeds[0])
        write_json(out / "prompts.json", {"train": train_p, "eval": eval_p})
    return read_json(out / "prompts.json")


def stage_pairs(out: pathlib.Path, cfg: DemoConfig, samples, rewards) -> tuple[list, list, dict]:
    """(training pairs, held-out pairs, summary) from the scored samples; written once
    (``pairs.jsonl``, ``heldout_pairs.jsonl``, ``pairs_summary.json``).

    Raises:
        RuntimeError: every prompt's samples were near-ties (no pair).
    """
    pairs, summary = build_pairs(samples, rewards, cfg.min_reward_gap)
    if not pairs:
        raise RuntimeError("no preference pairs: every prompt's samples were near-ties; lower min_reward_gap")
    train_pairs, heldout = split_holdout(pairs, cfg.heldout_fraction, cfg.seeds[0]) if len(pairs) > 1 else (pairs, [])
    summary.update(train_pairs=len(train_pairs), heldout_pairs=len(heldout))
    if not (out / "pairs.jsonl").exists():
        write_jsonl(out / "heldout_pairs.jsonl", heldout)
        write_json(out / "pairs_summary.json", summary)
        write_jsonl(out / "pairs.jsonl", train_pairs)
    say(
        f"[3/{N_STAGES}] pairs: {len(train_pairs)} for training + {len(heldout)} held out, from "
        f"{summary['prompts']} prompts (chosen {summary['chosen_reward_mean']:+.3f}, rejected "
        f"{summary['rejected_reward_mean']:+.3f})"
    )
    return train_pairs, heldout, summary


def run_demo(out, cfg: DemoConfig, *, progress: bool = True, reward_fn=None) -> pathlib.Path:
    """Run (or resume) the controlled-sentiment experiment into folder ``out``; returns the path of
    ``report.md``.

    Args:
        reward_fn: override of the VADER sentiment reward (tests).

    Raises:
        ValueError: ``out`` holds a run whose data settings differ (use a new folder).
    """
    out, clock = start_run(out, cfg, "controlled-sentiment experiment")
    reward_fn = reward_fn or load_reward("sentiment")

    clock.start()
    say(f"[1/{N_STAGES}] model: resolving {cfg.model}")
    model_dir = resolve_model(cfg.model)
    say(f"  {model_dir}")
    prompts = stage_prompts(out, cfg)
    eval_model = functools.cache(lambda: load_eval_model(model_dir, cfg))  # loaded once, when first needed
    clock.stop("model")

    clock.start()
    done = (out / "samples.jsonl").exists()
    say(
        f"[2/{N_STAGES}] samples: {cfg.samples_per_prompt} x {len(prompts['train'])} prompts from the reference"
        + (" (done)" if done else "")
    )
    samples, rewards = stage_samples(out, cfg, eval_model, prompts["train"], reward_fn, progress)
    if not done:
        clock.stop("samples")

    train_pairs, heldout, summary = stage_pairs(out, cfg, samples, rewards)
    # each run loads its own fresh policy; the evaluation model stays loaded
    train_args = (out, cfg, model_dir, encoded(train_pairs), encoded(heldout), clock)
    runs = train_runs(*train_args, stage=f"[4/{N_STAGES}]", save_every=cfg.save_every(), progress=progress)

    clock.start()
    say(
        f"[5/{N_STAGES}] eval: reference + {len(runs) * len(cfg.eval_steps())} checkpoints (steps "
        f"{cfg.eval_steps()}) on {len(prompts['eval'])} held-out prompts x {cfg.eval_samples_per_prompt} samples"
    )
    points = stage_eval(out, cfg, eval_model, prompts["eval"], reward_fn, progress)
    clock.stop("eval")

    say(f"[6/{N_STAGES}] report")
    metrics = {(v[0], s): read_metrics(run_dir(out, v[0], s) / "metrics.jsonl") for v, s in runs}
    path = write_report(out, cfg, points, metrics, summary, clock.t)
    say(read_json(out / "results.json")["verdict"])
    say(f"wrote {path}, {out / 'reward_vs_kl.png'}, {out / 'kl_curves.png'}")
    return path
