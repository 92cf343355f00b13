"""What both demo experiments share: printing, stage timings, progress bars, the run folder's
settings check, the evaluation model, and the training runs (one per variant and seed)."""

from __future__ import annotations

import contextlib
import gc
import json
import pathlib
import time

from tqdm.auto import tqdm

from ..atomic import write_json
from ..config import TrainConfig
from ..errors import UserError
from ..models import adapters_disabled, load_policy
from ..trainer import train
from .config import estimate


def say(msg: str) -> None:
    """Print a progress line at once."""
    print(msg, flush=True)


def read_json(path):
    """The JSON value in a file."""
    return json.loads(pathlib.Path(path).read_text(encoding="utf-8"))


class Clock:
    """Stage timings (wall seconds and this process's CPU seconds), persisted in
    ``timings.json`` so a resumed run reports all of them. CPU seconds show the work done even
    when other jobs share the cores (wall time then overstates a stage)."""

    def __init__(self, path: pathlib.Path):
        self.path = path
        t = read_json(path) if path.exists() else {}
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


def progress_bar(total: int, desc: str, enabled: bool):
    """A tqdm bar over ``total`` items (hidden unless ``enabled``)."""
    return tqdm(total=total, desc=desc, disable=not enabled, dynamic_ncols=True)


def reference_if(model, reference: bool):
    """``adapters_disabled(model)`` (the reference) when ``reference``, else a context that changes nothing."""
    return adapters_disabled(model) if reference else contextlib.nullcontext()


def load_eval_model(model_dir: str, cfg):
    """Base model with (zero-initialized, to be overwritten) LoRA wrappers matching training."""
    model, tok = load_policy(model_dir, lora_rank=cfg.lora_rank, lora_alpha=cfg.lora_alpha)
    model.eval()
    return model, tok


def check_settings(out: pathlib.Path, cfg) -> None:
    """Refuse to continue a run folder made with other settings (methods, alphas and seeds may
    be added). Raises ValueError naming the differing settings."""
    cfg_file = out / "demo_config.json"
    growable = ("methods", "tdpo2_alphas", "seeds")
    if cfg_file.exists():
        old = read_json(cfg_file)
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
    est = estimate(cfg)
    say(
        f"{experiment}: {len(cfg.variants())} variants ({', '.join(v[0] for v in cfg.variants())}) x "
        f"{len(cfg.seeds)} seed(s) on {cfg.model}; estimated {sum(s for _, s in est) / 60:.0f} min on an idle "
        "2-core machine (more when the cores are shared):"
    )
    for stage, s in est:
        say(f"  {stage}: ~{s / 60:.1f} min")


def run_dir(out: pathlib.Path, name: str, seed: int) -> pathlib.Path:
    """Folder of one training run: ``adapters/<variant>/seed-<seed>``."""
    return pathlib.Path(out) / "adapters" / name / f"seed-{seed}"


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
    name, loss, alpha = variant
    adir = run_dir(out, name, seed)
    done = adir / "done.json"
    if done.exists():
        return read_json(done)
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


def start_run(out, cfg, experiment: str) -> tuple[pathlib.Path, Clock]:
    """Open (or reopen) the run folder ``out``: refuse other settings (:func:`check_settings`),
    print the plan (:func:`announce`); returns the folder and its stage clock.

    Raises:
        UserError: ``out`` holds a run with other settings.
    """
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    check_settings(out, cfg)
    announce(cfg, experiment)
    return out, Clock(out / "timings.json")


def train_runs(
    out: pathlib.Path,
    cfg,
    model_dir: str,
    train_pairs,
    heldout_pairs,
    clock: Clock,
    *,
    stage: str,
    save_every: int = 0,
    progress: bool,
) -> list[tuple]:
    """Train every (variant, seed) of ``cfg`` with :func:`stage_train`, timing each new run on
    ``clock``; ``stage`` prefixes the progress lines. Returns the (variant, seed) list."""
    runs = [(v, s) for v in cfg.variants() for s in cfg.seeds]
    scored = f", held-out pairs scored every {save_every} steps" if save_every else ""
    for i, (v, s) in enumerate(runs):
        clock.start()
        done = (run_dir(out, v[0], s) / "done.json").exists()
        say(
            f"{stage} train {v[0]} seed {s} ({i + 1}/{len(runs)}): {cfg.iters} steps x {cfg.batch_size} "
            f"pairs{scored}" + (" (done)" if done else "")
        )
        stage_train(out, cfg, model_dir, v, s, train_pairs, heldout_pairs, save_every=save_every, progress=progress)
        if not done:
            clock.stop(f"train {v[0]} seed {s}")
        gc.collect()
    return runs
