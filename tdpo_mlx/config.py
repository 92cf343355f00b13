"""Every training knob with its default, in one place (:class:`TrainConfig`).

Field names are the ``tdpo-mlx train`` long option names with ``_`` for ``-``; the help text
of each option is the field's ``help`` metadata. A YAML/JSON config file holds the same keys
(``-`` or ``_``). This module imports no MLX so the CLI can build ``--help`` cheaply.

Defaults follow the TDPO paper and its code (Zeng et al., 2024; github.com/Vance0124/
Token-level-Direct-Preference-Optimization): beta 0.1, alpha 0.5, RMSprop, 150 warmup steps,
max length 512, max prompt length 256, gradient-norm clip 10.0. The exception is the learning
rate: the paper's 5e-6 is for full fine-tuning. With LoRA only the low-rank factors move, the
update starts from B = 0, and the effective change of W is scale * B @ A, so the usual LoRA
practice is a 10-20x larger rate (mlx-lm's LoRA default is 1e-5 with scale 20, i.e. 2e-4 in
"scale 1" units; LoRA/QLoRA papers use 1e-4..2e-4 for SFT). For preference tuning, which must
stay close to the reference, we take 5e-5 with scale alpha/r = 2: 10x the paper's rate.
Raise it (1e-4) for short runs, lower it (1e-5) if the KL terms grow fast.

Keep a warm-up with RMSprop: it has no bias correction, so its first updates move every
parameter by about lr / sqrt(1 - 0.99^t), 10x lr at t = 1. Measured on Gemma 3 270M (LoRA r 8 on
every linear, one HH pair, lr 1e-4, no warm-up): after a single step the rejected response's
sequential KL was 10 nats; with the default warm-up the first step uses lr / 151.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field

OPTIMIZERS = ("rmsprop", "adamw", "adam", "sgd")
LR_SCHEDULES = ("constant", "cosine")
TRUNCATION_MODES = ("keep_end", "keep_start")


def _f(default, help, **kw):
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class TrainConfig:
    """Configuration of one TDPO training run (see the module docstring for the defaults' sources)."""

    # model and adapters
    model: str = _f("gemma3-270m", "mlx-lm model directory, Hugging Face hub id, or named source (gemma3-270m)")
    ref_model: str | None = _f(None, "separate frozen reference model; default: the policy with adapters off")
    lora_rank: int = _f(8, "LoRA rank r")
    lora_alpha: float = _f(16.0, "LoRA alpha; scale = alpha / rank (mlx-lm's 'scale')")
    lora_scale: float | None = _f(None, "LoRA scale, overrides alpha / rank when given")
    lora_dropout: float = _f(0.0, "dropout on the adapter input during training")
    lora_layers: int = _f(-1, "adapt the last N transformer blocks (-1 = all)")
    lora_keys: list | None = _f(
        None,
        "block-relative module paths to adapt, e.g. self_attn.q_proj self_attn.v_proj "
        "(bare names like q_proj match any block path; None = every linear layer)",
        nargs="+",
    )
    dora: bool = _f(False, "train DoRA (weight-decomposed LoRA) instead of LoRA")
    quantize: int | None = _f(
        None,
        "quantize the frozen base (and --ref-model) to 4 or 8 bits at load (QLoRA); saved adapters still load on the float base",
        choices=(4, 8),
    )
    dtype: str | None = _f(None, "compute dtype (float32, bfloat16, float16); None = float32 on CPU, bfloat16 on GPU")
    grad_checkpoint: bool = _f(False, "recompute block activations in the backward pass (less memory, ~30%% slower)")

    # data
    data: str | None = _f(None, "training preference data: JSON/JSONL(.gz)/Parquet file, directory or hub dataset")
    split: str = _f("train", "split of --data to use for a hub dataset or directory")
    eval_data: str | None = _f(None, "held-out preference data; without it --eval-fraction of --data is held out")
    eval_fraction: float = _f(0.05, "fraction of --data held out for evaluation when --eval-data is not given")
    max_eval_pairs: int = _f(128, "evaluate on at most this many held-out pairs (0 = all)")
    max_length: int = _f(512, "maximum tokens of prompt + response")
    max_prompt_length: int = _f(256, "maximum prompt tokens")
    truncation_mode: str = _f("keep_end", "which end of a long prompt to keep", choices=TRUNCATION_MODES)

    # objective
    loss: str = _f("tdpo2", "objective", choices=("tdpo1", "tdpo2", "dpo", "sft"))
    beta: float = _f(0.1, "beta, the inverse temperature of the preference model")
    alpha: float = _f(0.5, "TDPO2 weight of the sequential-KL difference")
    average_log_prob: bool = _f(False, "average the per-token statistics over the response instead of summing")

    # optimization
    optimizer: str = _f("rmsprop", "optimizer", choices=OPTIMIZERS)
    lr: float = _f(5e-5, "peak learning rate (paper: 5e-6 for full fine-tuning; LoRA default 5e-5)")
    weight_decay: float = _f(0.0, "decoupled weight decay (adamw only)")
    warmup_steps: int = _f(150, "linear warm-up steps: lr * min(1, (step + 1) / (warmup + 1)) as in the paper's code")
    lr_schedule: str = _f(
        "constant", "after warm-up: constant, or cosine decay to 0 at the last step", choices=LR_SCHEDULES
    )
    batch_size: int = _f(4, "preference pairs per micro-batch")
    grad_accum: int = _f(1, "micro-batches per optimizer step (effective batch = batch-size x grad-accum pairs)")
    max_grad_norm: float = _f(10.0, "clip the global gradient norm to this value (0 = no clipping)")
    iters: int | None = _f(None, "optimizer steps (default: --epochs, or one epoch)")
    epochs: float | None = _f(None, "passes over the training pairs when --iters is not given")
    seed: int = _f(0, "seed of adapter initialization, data order and dropout")

    # evaluation, logging, saving
    eval_every: int = _f(100, "evaluate every N steps (also at step 0 and at the end; 0 = only those)")
    steps_per_report: int = _f(10, "print and log training metrics every N steps")
    save_every: int = _f(100, "save adapters and a full checkpoint every N steps (and at the end; 0 = end only)")
    keep_checkpoints: int = _f(2, "full checkpoints to keep in ADAPTER_PATH/checkpoints (0 = all)")
    adapter_path: str = _f("adapters", "output directory: adapters, adapter_config.json, metrics.jsonl, checkpoints")
    resume: str | None = _f(None, "resume from a checkpoint directory, or from ADAPTER_PATH's latest with 'latest'")
    progress: bool = _f(True, "show a progress bar")

    def validate(self) -> TrainConfig:
        """Check ranges and choices; returns self.

        Raises:
            ValueError: naming the option and the allowed values.
        """

        def bad(name, why):
            raise ValueError(f"--{name.replace('_', '-')}: {why}")

        for f in dataclasses.fields(self):
            ch = f.metadata.get("choices")
            v = getattr(self, f.name)
            if ch and v is not None and v not in ch:
                bad(f.name, f"{v!r} is not one of {', '.join(map(str, ch))}")
        for name in ("lora_rank", "batch_size", "grad_accum"):
            if getattr(self, name) < 1:
                bad(name, "must be >= 1")
        for name in ("warmup_steps", "eval_every", "save_every", "max_eval_pairs", "keep_checkpoints"):
            if getattr(self, name) < 0:
                bad(name, "must be >= 0")
        if self.steps_per_report < 1:
            bad("steps_per_report", "must be >= 1")
        if self.iters is not None and self.iters < 1:
            bad("iters", "must be >= 1")
        if self.epochs is not None and self.epochs <= 0:
            bad("epochs", "must be > 0")
        if not 0.0 <= self.eval_fraction < 1.0:
            bad("eval_fraction", "must be in [0, 1)")
        if not 0.0 <= self.lora_dropout < 1.0:
            bad("lora_dropout", "must be in [0, 1)")
        if self.lr <= 0:
            bad("lr", "must be > 0")
        if self.max_grad_norm < 0:
            bad("max_grad_norm", "must be >= 0")
        if self.max_prompt_length >= self.max_length:
            bad("max_prompt_length", f"must be smaller than --max-length ({self.max_length})")
        if self.beta <= 0:
            bad("beta", "must be > 0")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict, source: str = "config") -> TrainConfig:
        """Build from a dict whose keys are option names (``-`` or ``_``); unknown keys raise."""
        return cls(**normalize_keys(d, source))


def field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(TrainConfig)]


def normalize_keys(d: dict, source: str = "config") -> dict:
    """Map ``lora-rank`` / ``lora_rank`` keys to field names.

    Raises:
        ValueError: an unknown key (named with ``source`` and the closest valid names).
    """
    import difflib

    names = set(field_names())
    out = {}
    for k, v in (d or {}).items():
        key = str(k).strip().lstrip("-").replace("-", "_")
        if key not in names:
            close = difflib.get_close_matches(key, sorted(names), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ValueError(f"{source}: unknown option {k!r}{hint}")
        out[key] = v
    return out


def load_config_file(path: str | os.PathLike) -> dict:
    """Read a YAML (or JSON) config file into a dict of field names -> values.

    Raises:
        FileNotFoundError, ValueError: unreadable file, not a mapping, or an unknown key.
    """
    path = os.fspath(path)
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    if path.endswith(".json"):
        data = json.loads(text)
    else:
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ValueError(f"{path}: not valid YAML: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the config file must be a mapping of option: value, got {type(data).__name__}")
    return normalize_keys(data, source=path)
