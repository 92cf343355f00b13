"""Every training knob with its default, in one place (:class:`TrainConfig`).

Field names are the ``tdpo-mlx train`` long option names with ``_`` for ``-``; the help text
of each option is the field's ``help`` metadata. A YAML/JSON config file holds the same keys
(``-`` or ``_``). This module imports no MLX so the CLI can build ``--help`` cheaply.

Defaults follow the TDPO paper and its code (Zeng et al., 2024; github.com/Vance0124/
Token-level-Direct-Preference-Optimization): beta 0.1, alpha 0.5, RMSprop, 150 warmup steps (here at most 10% of a run's steps),
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
import math
import os
import typing
from dataclasses import dataclass, field

import yaml

from .errors import UserError, did_you_mean, read_text

OPTIMIZERS = ("rmsprop", "adamw", "adam", "sgd")
LR_SCHEDULES = ("constant", "cosine")
TRUNCATION_MODES = ("keep_end", "keep_start")
DATA_FORMATS = ("auto", "standard", "implicit", "conversational")
DEFAULT_WARMUP = 150  # the paper's warm-up steps
REPORT_TO = ("wandb", "tensorboard")


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
    share_prompt: bool = _f(
        True,
        "compute each pair's prompt once for chosen and rejected (exact; off: every row in full; "
        "off anyway under --grad-checkpoint)",
    )

    # data
    data: str | None = _f(None, "training preference data: JSON/JSONL(.gz)/Parquet file, directory or hub dataset")
    split: str = _f("train", "split of --data to use for a hub dataset or directory")
    eval_data: str | None = _f(None, "held-out preference data; without it --eval-fraction of --data is held out")
    eval_fraction: float = _f(0.05, "fraction of --data held out for evaluation when --eval-data is not given")
    max_eval_pairs: int = _f(
        64,
        "evaluate on at most this many held-out pairs (0 = all); an evaluation costs ~0.65x a training step per pair",
    )
    max_length: int = _f(512, "maximum tokens of prompt + response")
    max_prompt_length: int = _f(256, "maximum prompt tokens")
    truncation_mode: str = _f("keep_end", "which end of a long prompt to keep", choices=TRUNCATION_MODES)
    data_format: str = _f(
        "auto",
        "record format: auto (message lists -> conversational, a prompt key -> standard, exactly "
        "chosen+rejected texts -> implicit HH), standard, implicit or conversational",
        choices=DATA_FORMATS,
    )
    prompt_key: str = _f("prompt", "record key of the prompt")
    chosen_key: str = _f("chosen", "record key of the chosen response")
    rejected_key: str = _f("rejected", "record key of the rejected response")
    system_key: str = _f("system", "record key of an optional system text")
    chat_template: str | None = _f(None, "Jinja chat template file for conversational data (overrides the tokenizer's)")

    # objective
    loss: str = _f("tdpo2", "objective", choices=("tdpo1", "tdpo2", "dpo", "sft"))
    beta: float = _f(0.1, "beta, the inverse temperature of the preference model")
    alpha: float = _f(0.5, "TDPO2 weight of the sequential-KL difference")
    average_log_prob: bool = _f(False, "average the per-token statistics over the response instead of summing")

    # optimization
    optimizer: str = _f("rmsprop", "optimizer", choices=OPTIMIZERS)
    lr: float = _f(5e-5, "peak learning rate (paper: 5e-6 for full fine-tuning; LoRA default 5e-5)")
    weight_decay: float = _f(0.0, "decoupled weight decay (adamw only)")
    warmup_steps: int | None = _f(
        None,
        "linear warm-up steps: lr * min(1, (step + 1) / (warmup + 1)) as in the paper's code; "
        "without it: min(150, 10%% of the run's steps), so a short run still reaches its lr",
    )
    lr_schedule: str = _f(
        "constant", "after warm-up: constant, or cosine decay to 0 at the last step", choices=LR_SCHEDULES
    )
    batch_size: int = _f(4, "preference pairs per micro-batch")
    grad_accum: int = _f(1, "micro-batches per optimizer step (effective batch = batch-size x grad-accum pairs)")
    max_grad_norm: float = _f(10.0, "clip the global gradient norm to this value (0 = no clipping)")
    iters: int | None = _f(None, "optimizer steps; without it: --epochs, or one epoch")
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
    report_to: list | None = _f(
        None,
        "also send metrics to: wandb (WANDB_MODE=offline keeps it local), tensorboard (ADAPTER_PATH/tensorboard)",
        nargs="+",
        metavar="TARGET",
    )

    def validate(self) -> TrainConfig:
        """Convert every field to its type (:func:`convert_value`) and check ranges and choices; returns self.

        Raises:
            UserError: naming the option (``--lora-rank``), the value and what is allowed.
        """

        def bad(name, why):
            raise UserError(f"{option_name(name)}: {why}")

        for f in dataclasses.fields(self):
            setattr(self, f.name, convert_value(f.name, getattr(self, f.name), option_name(f.name)))
        for name in ("lora_rank", "batch_size", "grad_accum"):
            if getattr(self, name) < 1:
                bad(name, "must be >= 1")
        for name in ("eval_every", "save_every", "max_eval_pairs", "keep_checkpoints"):
            if getattr(self, name) < 0:
                bad(name, "must be >= 0")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            bad("warmup_steps", "must be >= 0")
        for target in self.report_to or ():
            if target not in REPORT_TO:
                bad("report_to", f"{target!r} is not one of {', '.join(REPORT_TO)}")
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
        if self.max_prompt_length < 1:
            bad("max_prompt_length", "must be >= 1")
        if self.max_prompt_length >= self.max_length:
            bad("max_prompt_length", f"must be smaller than --max-length ({self.max_length})")
        if self.beta <= 0:
            bad("beta", "must be > 0")
        if self.lora_scale is not None and self.lora_scale <= 0:
            bad("lora_scale", "must be > 0")
        if self.lora_alpha <= 0:
            bad("lora_alpha", "must be > 0")
        return self

    def changed_fields(self) -> set[str]:
        """Names of the fields whose value differs from the default (what a Python caller set)."""
        return {f.name for f in dataclasses.fields(self) if getattr(self, f.name) != f.default}

    def warmup_for(self, total_steps: int) -> int:
        """Warm-up steps of a run of ``total_steps``: ``warmup_steps`` when set, else
        ``min(150, 10% of total_steps)`` (150 is the paper's value; a short run still reaches its lr)."""
        if self.warmup_steps is not None:
            return self.warmup_steps
        return min(DEFAULT_WARMUP, int(0.1 * total_steps))

    def lora(self) -> dict:
        """The LoRA settings (``lora_*`` fields and ``dora``) as keyword arguments of
        :func:`tdpo_mlx.models.attach_adapters` / :func:`tdpo_mlx.models.load_policy`."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name.startswith(("lora_", "dora"))}

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict, source: str = "config") -> TrainConfig:
        """Build from a dict whose keys are option names (``-`` or ``_``), values converted and checked.

        Raises:
            UserError: an unknown key (with the closest names) or a value of the wrong type.
        """
        return cls(**convert_config(d, source)).validate()


def option_name(name: str) -> str:
    """``lora_rank`` -> ``--lora-rank``."""
    return "--" + name.replace("_", "-")


def field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(TrainConfig)]


_TRUE = ("true", "yes", "on", "1", "y")
_FALSE = ("false", "no", "off", "0", "n", "none")
_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
_HINTS = typing.get_type_hints(TrainConfig)


def field_type(name: str) -> tuple[type, bool]:
    """(base type, optional) of a TrainConfig field: ``int | None`` -> (int, True)."""
    tp = _HINTS[name]
    args = typing.get_args(tp)
    if type(None) in args:
        return next(a for a in args if a is not type(None)), True
    return tp, False


def _describe(value) -> str:
    return "null" if value is None else f"{value!r} ({type(value).__name__})"


def _to_bool(value, wrong) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    raise wrong("true or false (yes/no, on/off)")


def _to_int(value, wrong) -> int:
    if isinstance(value, bool):
        raise wrong("an integer")
    number = value
    if isinstance(value, str):
        try:
            number = float(value.strip()) if any(c in value for c in ".eE") else int(value.strip())
        except ValueError:
            raise wrong("an integer") from None
    if isinstance(number, float) and number.is_integer():
        number = int(number)
    if not isinstance(number, int):
        raise wrong("an integer")
    return number


def _to_float(value, wrong) -> float:
    if isinstance(value, bool):
        raise wrong("a number")
    try:
        number = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise wrong("a number") from None
    if not math.isfinite(number):
        raise wrong("a finite number")
    return number


def _to_list(value, wrong) -> list:
    if isinstance(value, str):
        value = value.replace(",", " ").split()
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v.strip() for v in value):
        raise wrong("a list of names")
    return list(value)


def _to_str(value, wrong) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise wrong("a string")
    return str(value)


# field type -> converter(value, wrong) (``wrong(what)`` builds the error naming the option)
_CONVERTERS = {int: _to_int, float: _to_float, list: _to_list, str: _to_str}


def convert_value(name: str, value, where: str | None = None):
    """``value`` converted to the type of TrainConfig field ``name`` and checked against its choices.

    int: ints, integral floats, and strings of them (``"8"``, ``"1e3"``); never a bool.
    float: numbers and numeric strings (YAML 1.1 reads ``1e-4`` as a string); finite only.
    bool: true/false, and the strings yes/no, on/off, true/false, 1/0 (any case); nothing else.
    list: a list of strings, or one string split at spaces/commas. Optional fields take null.
    ``resume``: true -> ``"latest"``, false -> None.

    Raises:
        UserError: ``"<where>: expected <type>, got <value>"`` (``where`` defaults to the option name).
    """
    where = where or option_name(name)
    tp, optional = field_type(name)
    if name == "resume" and isinstance(value, bool):
        return "latest" if value else None
    if value is None:
        if optional:
            return None
        raise UserError(f"{where}: needs a value ({tp.__name__}), got null")

    def wrong(what):
        return UserError(f"{where}: expected {what}, got {_describe(value)}")

    if tp is bool:
        return _to_bool(value, wrong)
    if tp in _CONVERTERS:
        value = _CONVERTERS[tp](value, wrong)
    choices = _FIELDS[name].metadata.get("choices")
    if choices and value not in choices:
        raise UserError(
            f"{where}: {value!r} is not one of {', '.join(map(str, choices))}" + did_you_mean(str(value), choices)
        )
    return value


def normalize_keys(d: dict, source: str = "config") -> dict:
    """Map ``lora-rank`` / ``lora_rank`` keys to field names.

    Raises:
        UserError: an unknown key (named with ``source`` and the closest valid names).
    """
    names = field_names()
    out = {}
    for k, v in (d or {}).items():
        key = str(k).strip().lstrip("-").replace("-", "_")
        if key not in names:
            raise UserError(f"{source}: unknown option {k!r}" + did_you_mean(key, names))
        if key in out:
            raise UserError(f"{source}: option {key!r} is given twice (as - and _ spellings)")
        out[key] = v
    return out


def convert_config(d: dict, source: str = "config") -> dict:
    """:func:`normalize_keys` then :func:`convert_value` on each value; errors name ``source`` and the key."""
    return {k: convert_value(k, v, f"{source}: {k}") for k, v in normalize_keys(d, source).items()}


def load_config_file(path: str | os.PathLike) -> dict:
    """Read a YAML (or JSON) config file into a dict of field names -> converted values.

    Raises:
        NotFoundError: no such file; UserError: unreadable or not UTF-8, not valid YAML/JSON, not
        a mapping, an unknown key or a value of the wrong type (the file and key named).
    """
    path = os.fspath(path)
    text = read_text(path, "config file", "--config")
    if path.endswith(".json"):
        try:
            data = json.loads(text)
        except RecursionError:
            raise UserError(f"{path}: not valid JSON (nested too deeply)") from None
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{e.lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
    else:
        try:
            data = yaml.safe_load(text)
        except RecursionError:
            raise UserError(f"{path}: not valid YAML (nested too deeply)") from None
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            at = f":{mark.line + 1}" if mark is not None else ""
            problem = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise UserError(f"{path}{at}: not valid YAML ({problem})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: the config file must be a mapping of option: value, got {type(data).__name__}")
    return convert_config(data, source=path)
