"""Atomic files, mlx-lm adapter files and full training checkpoints.

Layout of an adapter directory (``--adapter-path``)::

    adapters.safetensors        LoRA/DoRA tensors, mlx-lm names (…lora_a, …lora_b, …m)
    adapter_config.json         mlx-lm keys (fine_tune_type, num_layers, lora_parameters) + ours
    metrics.jsonl               one JSON record per logged step (train and eval_ records)
    checkpoints/step-0000004/   a full checkpoint: adapters.safetensors, adapter_config.json,
                                optimizer.safetensors, trainer_state.json
    checkpoints/latest.json     {"step": 4, "dir": "step-0000004"}

Every file is written to a temporary name in the same directory and moved into place with
``os.replace``; a checkpoint directory is assembled under a temporary name and renamed, and
``latest.json`` is replaced only after that, so a crash leaves the previous checkpoint intact.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten, tree_unflatten

from .atomic import atomic_directory, save_safetensors, write_json, write_jsonl
from .errors import NotFoundError, UserError

ADAPTER_FILE = "adapters.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "trainer_state.json"
LATEST = "latest.json"
CHECKPOINTS = "checkpoints"
METRICS_FILE = "metrics.jsonl"


def read_metrics(path, upto_step: int | None = None) -> list[dict]:
    """The records of a ``metrics.jsonl`` file in file order; ``[]`` when it does not exist.

    Args:
        path: the file (``<adapter_path>/metrics.jsonl``).
        upto_step: keep only records with ``step <= upto_step`` (what a resumed run keeps).

    Raises:
        ValueError: a line that is not JSON (the file and line are named).
    """
    path = Path(path)
    if not path.exists():
        return []
    records = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not a JSON record ({e.msg}); delete the line or the file") from None
            if upto_step is None or record.get("step", 0) <= upto_step:
                records.append(record)
    return records


def write_metrics(path, records) -> None:
    """Write ``records`` (dicts) as the whole ``metrics.jsonl`` at ``path``, atomically."""
    write_jsonl(path, records)


def adapter_weights(model) -> dict:
    """Flat ``{name: array}`` of the trainable adapter tensors (mlx-lm names)."""
    return dict(tree_flatten(model.trainable_parameters()))


def save_adapters(directory, model, adapter_config: dict) -> None:
    """Write ``adapters.safetensors`` and ``adapter_config.json`` (loadable by
    ``mlx_lm.load(base, adapter_path=directory)``) atomically into ``directory``."""
    directory = Path(directory)
    save_safetensors(directory / ADAPTER_FILE, adapter_weights(model))
    write_json(directory / ADAPTER_CONFIG, adapter_config)


def save_checkpoint(
    adapter_path, step: int, model, optimizer, adapter_config: dict, state: dict, keep: int = 2
) -> Path:
    """Write a full checkpoint for ``step`` and point ``checkpoints/latest.json`` at it.

    Args:
        adapter_path: the run's output directory.
        step: optimizer steps completed.
        model: the policy (its trainable parameters are saved).
        optimizer: an ``mlx.optimizers.Optimizer``; its whole state tree (moments, step,
            learning rate) goes to ``optimizer.safetensors``.
        adapter_config: written beside the adapters (so each checkpoint loads in mlx-lm).
        state: JSON-able trainer state (step, data position, config, ...).
        keep: how many checkpoints to keep (0 = all).

    Returns:
        The checkpoint directory.
    """
    root = Path(adapter_path) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:07d}"
    final = root / name
    with atomic_directory(final, overwrite=True) as tmp:
        save_adapters(tmp, model, adapter_config)
        save_safetensors(tmp / OPTIMIZER_FILE, dict(tree_flatten(optimizer.state)))
        write_json(tmp / STATE_FILE, {**state, "step": step})
    write_json(root / LATEST, {"step": step, "dir": name})
    if keep:
        old = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-") and p != final)
        for p in old[: max(0, len(old) - (keep - 1))]:
            shutil.rmtree(p, ignore_errors=True)
    return final


def find_checkpoint(resume: str, adapter_path) -> Path:
    """Resolve ``--resume``: ``latest`` (or ``true``) -> ADAPTER_PATH's latest checkpoint; a
    checkpoint directory; or an adapter directory (its latest checkpoint).

    Raises:
        NotFoundError (a FileNotFoundError): with what was looked for.
    """
    cand = Path(adapter_path) if str(resume).lower() in ("latest", "true", "1", "yes") else Path(resume)
    if (cand / STATE_FILE).exists():
        return cand
    latest = cand / CHECKPOINTS / LATEST
    if latest.exists():
        with open(latest, encoding="utf-8") as fh:
            d = json.load(fh)
        ck = cand / CHECKPOINTS / d["dir"]
        if (ck / STATE_FILE).exists():
            return ck
        raise NotFoundError(f"--resume: {latest} points at {ck}, which has no {STATE_FILE}")
    raise NotFoundError(
        f"--resume {resume}: no checkpoint found ({cand / STATE_FILE} or {latest} does not exist); "
        "--resume takes 'latest' (the --adapter-path's last checkpoint) or a checkpoint folder"
    )


def load_adapter_weights(model, path) -> None:
    """Replace the adapter tensors of ``model`` (which already carries the matching LoRA/DoRA
    wrappers) by those of an ``adapters.safetensors`` file: resuming, or evaluating another
    checkpoint of the same run. The base stays as it is.

    Raises:
        UserError: a tensor missing on either side or of another shape (the first 20 named).
    """
    weights = mx.load(str(path))
    have = adapter_weights(model)
    errors = [f"  {k}: not an adapter of this model" for k in weights if k not in have]
    errors += [
        f"  {k}: shape {tuple(v.shape)} != model {tuple(have[k].shape)}"
        for k, v in weights.items()
        if k in have and v.shape != have[k].shape
    ]
    errors += [f"  {k}: missing in the file" for k in have if k not in weights]
    if errors:
        raise UserError(
            f"{path} does not match the model's adapters (same model and --lora-* options needed):\n"
            + "\n".join(errors[:20])
        )
    model.load_weights(list(weights.items()), strict=False)


def load_checkpoint(directory, model, optimizer) -> dict:
    """Load adapters and optimizer state from a checkpoint directory into ``model`` / ``optimizer``.

    The model must already carry the same adapters (same keys and shapes); the base stays
    frozen (only trainable tensors are replaced).

    Returns:
        The trainer state dict from ``trainer_state.json``.

    Raises:
        UserError: the checkpoint's tensors do not match the model's adapters.
    """
    directory = Path(directory)
    load_adapter_weights(model, directory / ADAPTER_FILE)
    opt_state = mx.load(str(directory / OPTIMIZER_FILE))
    optimizer.state = tree_unflatten(list(opt_state.items()))
    with open(directory / STATE_FILE, encoding="utf-8") as fh:
        return json.load(fh)


#: TrainConfig fields a checkpoint fixes: the adapters' shape and scale, and what they adapt.
RESUME_FIELDS = (
    "model",
    "lora_rank",
    "lora_alpha",
    "lora_scale",
    "lora_dropout",
    "lora_keys",
    "lora_layers",
    "dora",
    "quantize",
)


def _same(name: str, a, b) -> bool:
    if name == "model" and a != b:
        pa, pb = Path(str(a)).expanduser(), Path(str(b)).expanduser()
        return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()
    if isinstance(a, float) or isinstance(b, float):
        return a is not None and b is not None and abs(float(a) - float(b)) <= 1e-9 * max(1.0, abs(float(b)))
    return a == b


def _shown(v) -> str:
    return " ".join(v) if isinstance(v, list) else "not set" if v is None else str(v)


def resume_settings(config, given=()):
    """``config`` with the resumed checkpoint's adapter settings and model (:data:`RESUME_FIELDS`).

    The checkpoint is the truth: a field the user did not give (``given``: names set on the
    command line or in the config file) is taken from the checkpoint's ``train_config``; one
    they gave with another value is an error, since the saved adapters were trained with it.

    Returns:
        A new :class:`tdpo_mlx.config.TrainConfig` (``config`` itself when it does not resume).

    Raises:
        NotFoundError: no checkpoint; UserError: a given value that conflicts, naming both.
    """
    if not config.resume:
        return config
    ck = find_checkpoint(config.resume, config.adapter_path)
    try:
        with open(ck / ADAPTER_CONFIG, encoding="utf-8") as fh:
            saved = json.load(fh).get("train_config") or {}
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"--resume: cannot read {ck / ADAPTER_CONFIG}: {e}") from None
    changes = {}
    for name in RESUME_FIELDS:
        if name not in saved:
            continue
        want, have = saved[name], getattr(config, name)
        if name in given and not _same(name, have, want):
            flag = "--" + name.replace("_", "-")
            raise UserError(
                f"{flag} {_shown(have)} conflicts with the checkpoint {ck}, trained with {flag} {_shown(want)}; "
                f"leave {flag} out to resume (the checkpoint's value is used), or start a new run in another "
                "--adapter-path"
            )
        changes[name] = want
    return dataclasses.replace(config, **changes)
