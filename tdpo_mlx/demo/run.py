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

import gc
import json
import math
import pathlib
import time
from collections.abc import Sequence

import numpy as np

from ..atomic import write_json, write_jsonl
from ..evaluate import Sample, markdown_table, summarize
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
        write_jsonl(path, part)
        rows.extend(part)
        _say(f"  sampled {c0 + len(ps)}/{len(train_prompts)} prompts")
    write_jsonl(final, rows)
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
    write_json(done, result)
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
        write_json(ref_file, {"row": row, "rewards": rewards, "samples": [s.to_json() for s in samples]})
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
            write_json(
                f, {"row": row, "rewards": res.policy_rewards, "samples": [s.to_json() for s in res.policy_samples]}
            )
            rows[name] = row
    return rows


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
    write_json(cfg_file, cfg.to_dict())
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

    # 3. pairs
    pairs, summary = build_pairs(samples, rewards, cfg.min_reward_gap)
    if not (out / "pairs.jsonl").exists():
        write_jsonl(out / "pairs.jsonl", pairs)
        write_json(out / "pairs_summary.json", summary)
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
