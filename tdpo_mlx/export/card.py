"""Model cards (``README.md``) for exports: base model, method, hyper-parameters, data, steps
and final evaluation metrics, read from the adapter directory when the trainer recorded them.

One job: collect training facts from ``adapter_config.json`` (and the trainer's
``metrics.jsonl`` beside it, when present) and render a card with YAML front matter that the
Hugging Face Hub reads (``base_model``, ``library_name``, ``tags``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from ..checkpoint import METRICS_FILE, read_metrics

# Where the trainer may have stored each fact in adapter_config.json (first hit wins); values
# may also sit under one of NESTED.
_FIELDS = {
    "method": ("loss", "loss_type", "method"),
    "beta": ("beta",),
    "alpha": ("alpha",),
    "base_model": ("base_model_name_or_path", "base_model_name", "base_model", "hf_base_model"),
    "model": ("model",),
    "data": ("data", "dataset", "train_data"),
    "steps": ("steps", "step", "iters", "num_steps"),
    "learning_rate": ("learning_rate", "lr"),
    "seed": ("seed",),
}
NESTED = ("tdpo", "training", "train_config", "trainer")
_METRIC_KEYS = ("final_metrics", "eval_metrics", "final_eval_metrics", "metrics")

METHOD_NAMES = {"tdpo1": "TDPO1", "tdpo2": "TDPO2", "dpo": "DPO", "sft": "SFT"}


def _lookup(cfg: dict, keys: tuple[str, ...]):
    for source in [cfg] + [cfg[n] for n in NESTED if isinstance(cfg.get(n), dict)]:
        for k in keys:
            if source.get(k) is not None:
                return source[k]
    return None


def training_info(adapter_dir: str | Path | None) -> dict:
    """Facts about the training run behind an adapter directory (missing ones are omitted).

    Returns a dict with any of: ``fine_tune_type``, ``rank``, ``scale``, ``num_layers``, ``keys``,
    ``method``, ``beta``, ``alpha``, ``base_model``, ``model``, ``data``, ``steps``,
    ``learning_rate``, ``seed``, ``metrics`` (final ``eval_*`` metrics: from the config, else the
    last line of ``metrics.jsonl`` that has any).
    """
    if adapter_dir is None:
        return {}
    adapter_dir = Path(adapter_dir)
    path = adapter_dir / "adapter_config.json"
    if not path.is_file():
        return {}
    with open(path) as f:
        cfg = json.load(f)
    info: dict = {"fine_tune_type": cfg.get("fine_tune_type", "lora")}
    lp = cfg.get("lora_parameters") or {}
    for k in ("rank", "scale", "dropout", "keys"):
        if lp.get(k) is not None:
            info[k] = lp[k]
    if cfg.get("num_layers") is not None:
        info["num_layers"] = cfg["num_layers"]
    for field, keys in _FIELDS.items():
        value = _lookup(cfg, keys)
        if value is not None:
            info[field] = value
    if "method" in info:
        info["method"] = METHOD_NAMES.get(str(info["method"]).lower(), str(info["method"]))
    metrics = _lookup(cfg, _METRIC_KEYS)
    if not isinstance(metrics, dict):
        metrics = _last_eval_metrics(read_metrics(adapter_dir / METRICS_FILE))
    if metrics:
        info["metrics"] = metrics
    return info


def _last_eval_metrics(records: list[dict]) -> dict | None:
    """The ``eval_*`` entries (and ``step``) of the last record that has any."""
    last = None
    for rec in records:
        ev = {k: v for k, v in rec.items() if k.startswith("eval_")}
        if ev:
            if "step" in rec:
                ev["step"] = rec["step"]
            last = ev
    return last


def is_hub_id(name: str | None) -> bool:
    """Whether ``name`` looks like a Hugging Face repository id (``org/name``)."""
    return bool(name) and re.fullmatch(r"[\w.-]+/[\w.-]+", str(name)) is not None and not Path(str(name)).exists()


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def model_card(kind: str, info: dict, base_model: str | None, notes: list[str] | None = None) -> str:
    """``README.md`` text for an export.

    Args:
        kind: ``peft``, ``hf``, ``mlx`` or ``gguf``.
        info: :func:`training_info` of the adapter.
        base_model: the Hugging Face id/path of the unquantized base, when known.
        notes: extra lines (e.g. precision warnings) listed under "Export notes".
    """
    what = {
        "peft": "A PEFT LoRA adapter",
        "hf": "A merged (adapter fused in float32, dequantized) transformers model",
        "mlx": "A merged MLX model for mlx-lm",
        "gguf": "A merged GGUF model for llama.cpp / Ollama / LM Studio",
    }[kind]
    lines = [f"---\n{_front_matter(kind, info, base_model)}\n---", "", f"# {what} trained with tdpo-mlx", ""]
    lines.append(
        "Preference-tuned with tdpo-mlx (Token-level Direct Preference "
        "Optimization, Zeng et al., ICML 2024, arXiv:2404.11999) on Apple MLX."
    )
    lines += ["", "## Training", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in _training_rows(info, base_model) if v is not None]
    metrics = info.get("metrics")
    if metrics:
        lines += ["", "## Final evaluation", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in metrics.items()]
    lines += ["", "## Use", "", *_usage(kind, base_model or "BASE_MODEL")]
    if notes:
        lines += ["", "## Export notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def _front_matter(kind: str, info: dict, base_model: str | None) -> str:
    """The card's YAML header: library, pipeline, base model (hub ids only), tags."""
    meta: dict = {"library_name": {"peft": "peft", "hf": "transformers", "mlx": "mlx", "gguf": "gguf"}[kind]}
    meta["pipeline_tag"] = "text-generation"
    if is_hub_id(base_model):  # the Hub only accepts repository ids here
        meta["base_model"] = base_model
    tags = ["tdpo-mlx", "mlx"]
    if info.get("method"):
        tags.append(str(info["method"]).lower())
    tags.append({"peft": "lora", "hf": "merged", "mlx": "merged", "gguf": "merged"}[kind])
    meta["tags"] = tags
    return yaml.safe_dump(meta, sort_keys=False).strip()


def _training_rows(info: dict, base_model: str | None) -> list[tuple[str, object]]:
    keys = info.get("keys")
    return [
        ("Base model", base_model or info.get("base_model") or info.get("model")),
        ("Method", info.get("method")),
        ("beta", info.get("beta")),
        ("alpha (TDPO)", info.get("alpha")),
        ("Data", info.get("data")),
        ("Steps", info.get("steps")),
        ("Learning rate", info.get("learning_rate")),
        ("Adapter", info.get("fine_tune_type")),
        ("Rank", info.get("rank")),
        ("Scale (lora_alpha / r)", info.get("scale")),
        ("Adapted layers", info.get("num_layers")),
        ("Adapted modules", ", ".join(keys) if isinstance(keys, list) else keys),
        ("Seed", info.get("seed")),
    ]


def _usage(kind: str, name: str) -> list[str]:
    """How to load the export, as a code block."""
    if kind == "peft":
        return [
            "```python",
            "from transformers import AutoModelForCausalLM",
            "from peft import PeftModel",
            f'base = AutoModelForCausalLM.from_pretrained("{name}")',
            'model = PeftModel.from_pretrained(base, "THIS_REPO")',
            "```",
        ]
    if kind == "hf":
        return [
            "```python",
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            'model = AutoModelForCausalLM.from_pretrained("THIS_REPO")',
            "```",
        ]
    if kind == "gguf":
        return ["```bash", 'llama-cli -m model.gguf -p "Hello"', "```"]
    return ["```bash", 'mlx_lm.generate --model THIS_REPO --prompt "Hello"', "```"]
