"""Write an mlx-lm LoRA/DoRA adapter as a PEFT adapter (``adapter_model.safetensors`` +
``adapter_config.json``) that ``peft.PeftModel.from_pretrained`` loads onto the transformers base.

One job: rename and transpose the adapter tensors and describe them in PEFT's config. Torch-free.

Tensor layout (mlx-lm -> PEFT, per adapted module at HF path ``P``):

* ``lora_a`` (in, r)  -> ``base_model.model.P.lora_A.weight`` = a^T, (r, in)
* ``lora_b`` (r, out) -> ``base_model.model.P.lora_B.weight`` = b^T, (out, r)
* DoRA ``m`` (out,)   -> ``base_model.model.P.lora_magnitude_vector`` (out,) (PEFT >= 0.9 name; the
  saved key has no ``.weight`` suffix, PEFT adds it on load)

Scaling: mlx-lm multiplies the low-rank product by ``scale``; PEFT by ``lora_alpha / r`` (no
rsLoRA), so ``lora_alpha = scale * r``. DoRA: both compute
``y = m / ||W + s B A||_row * (W x + s B A x) + bias`` with the norm detached, so ``m`` carries over
unchanged (checked by equal logits in tests/test_interop_export.py).
"""

from __future__ import annotations

import re
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn

from ..atomic import save_safetensors, write_json
from .fuse import is_adapter
from .names import UnsupportedExportError, hf_name, layer_index

PEFT_PREFIX = "base_model.model."
LAYERS_PATTERN = "layers"


def adapter_tensors(model: nn.Module, model_type: str, dtype: mx.Dtype | None = None) -> tuple[dict, dict]:
    """PEFT tensors and per-module facts for every adapter wrapper in ``model``.

    Returns:
        (tensors, modules): ``tensors`` maps PEFT key -> MLX array (``dtype`` or the adapter's
        own); ``modules`` maps HF module path -> ``{"rank", "scale", "dora"}``.

    Embedding LoRA (untied, unscaled embeddings only) maps to ``lora_embedding_A`` = a^T
    (r, num_embeddings) and ``lora_embedding_B`` = b^T (dims, r).

    Raises:
        UnsupportedExportError: an embedding adapter PEFT would not reproduce (DoRA; tied
            embeddings, where mlx-lm's LoRA also changes the output head; Gemma's scaled
            embeddings), a stacked mixture-of-experts adapter, or an architecture without a
            verified name mapping.
    """
    tensors: dict = {}
    modules: dict = {}
    tied = "lm_head" not in model or bool(getattr(model, "tie_word_embeddings", False))
    for name, m in model.named_modules():
        if not is_adapter(m):
            continue
        kind = type(m).__name__
        if kind == "LoRASwitchLinear":
            raise UnsupportedExportError(f"{name}: stacked mixture-of-experts LoRA has no PEFT mapping")
        path = hf_name(model_type, name)
        a, b = m.lora_a, m.lora_b
        dt = dtype or a.dtype
        dora = "m" in m
        if hasattr(m, "embedding"):
            _check_embedding_adapter(name, kind, dora, tied, model_type)
            # PEFT Embedding: E[x] + (lora_embedding_A^T[x] @ lora_embedding_B^T) * scaling
            tensors[f"{PEFT_PREFIX}{path}.lora_embedding_A"] = a.T.astype(dt)  # (r, num_embeddings)
            tensors[f"{PEFT_PREFIX}{path}.lora_embedding_B"] = b.T.astype(dt)  # (dims, r)
        else:
            tensors[f"{PEFT_PREFIX}{path}.lora_A.weight"] = a.T.astype(dt)
            tensors[f"{PEFT_PREFIX}{path}.lora_B.weight"] = b.T.astype(dt)
            if dora:
                tensors[f"{PEFT_PREFIX}{path}.lora_magnitude_vector"] = m.m.astype(dt)
        modules[path] = {"rank": int(a.shape[1]), "scale": float(m.scale), "dora": dora}
    if not modules:
        raise ValueError("the model carries no LoRA/DoRA adapter: nothing to export as PEFT")
    return tensors, modules


def _check_embedding_adapter(name: str, kind: str, dora: bool, tied: bool, model_type: str) -> None:
    """Raise where PEFT's embedding LoRA would not compute what mlx-lm's does."""
    fix = "Export the fused model with --to hf instead"
    if dora:
        raise UnsupportedExportError(f"{name}: {kind} adapters on embeddings have no PEFT form. {fix}")
    if tied:
        raise UnsupportedExportError(
            f"{name}: LoRA on a tied embedding also changes the output head in mlx-lm, not in PEFT. {fix}"
        )
    if model_type.startswith("gemma"):
        raise UnsupportedExportError(
            f"{name}: Gemma scales embeddings by sqrt(hidden_size) after the lookup; mlx-lm scales the "
            f"LoRA term too, PEFT does not. {fix}"
        )


def linear_module_names(model: nn.Module, model_type: str) -> list[str]:
    """HF paths of every module PEFT could target: linears and embeddings (adapter wrappers
    count as the layer they wrap; their inner ``.linear`` is skipped)."""
    names = []
    wrappers = set()
    for name, m in model.named_modules():
        if is_adapter(m):
            wrappers.add(name)
    for name, m in model.named_modules():
        parent = name.rsplit(".", 1)[0] if "." in name else ""
        if parent in wrappers:
            continue
        if name in wrappers or isinstance(m, (nn.Linear, nn.QuantizedLinear, nn.Embedding, nn.QuantizedEmbedding)):
            try:
                names.append(hf_name(model_type, name))
            except UnsupportedExportError:
                continue
    return names


def peft_targets(key: str, target_modules, layers_to_transform) -> bool:
    """Whether PEFT (>= 0.12, ``check_target_module_exists``) would adapt module ``key``."""
    if isinstance(target_modules, str):
        return re.fullmatch(target_modules, key) is not None
    if key in target_modules:
        return True
    if not any(key.endswith(f".{t}") for t in target_modules):
        return False
    if layers_to_transform is None:
        return True
    match = re.match(rf"(?:^|.*?\.){LAYERS_PATTERN}\.(?P<idx>\d+)\.", key)
    return match is not None and int(match.group("idx")) in layers_to_transform


def choose_targets(adapted: list[str], candidates: list[str]) -> tuple[object, list[int] | None]:
    """The PEFT ``target_modules`` / ``layers_to_transform`` that select exactly ``adapted``
    among ``candidates``: leaf names (``q_proj``) when they suffice, plus the layer indices when
    only some layers carry adapters, else an exact regular expression.
    """
    want = set(adapted)
    leaves = sorted({a.rsplit(".", 1)[-1] for a in adapted})
    layers = sorted({i for i in (layer_index(a) for a in adapted) if i is not None})
    tries = [(leaves, None)]
    if all(layer_index(a) is not None for a in adapted):
        tries.append((leaves, layers))
    for targets, lay in tries:
        if {c for c in candidates if peft_targets(c, targets, lay)} == want:
            return targets, lay
    regex = "^(?:" + "|".join(re.escape(a) for a in sorted(adapted)) + ")$"
    return regex, None


def peft_config(modules: dict, candidates: list[str], dropout: float, base_model_name: str | None) -> dict:
    """PEFT ``LoraConfig`` fields (``adapter_config.json``) for the adapted ``modules``.

    Raises:
        UnsupportedExportError: adapters of different ranks or scales (one config cannot say it
            here without rank/alpha patterns; mlx-lm never writes such adapters).
    """
    ranks = {v["rank"] for v in modules.values()}
    scales = {v["scale"] for v in modules.values()}
    doras = {v["dora"] for v in modules.values()}
    if len(ranks) != 1 or len(scales) != 1 or len(doras) != 1:
        raise UnsupportedExportError(f"adapters mix ranks {ranks}, scales {scales} or DoRA {doras}")
    r, scale, dora = ranks.pop(), scales.pop(), doras.pop()
    targets, layers = choose_targets(list(modules), candidates)
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_name,
        "r": r,
        "lora_alpha": scale * r,
        "lora_dropout": float(dropout),
        "target_modules": targets,
        "layers_to_transform": layers,
        "layers_pattern": LAYERS_PATTERN if layers is not None else None,
        "use_dora": bool(dora),
        "use_rslora": False,
        "bias": "none",
        "fan_in_fan_out": False,
        "init_lora_weights": True,
        "modules_to_save": None,
        "rank_pattern": {},
        "alpha_pattern": {},
        "inference_mode": True,
        "revision": None,
    }


def write_peft(
    out: Path,
    model: nn.Module,
    model_type: str,
    adapter_config: dict,
    base_model_name: str | None,
    dtype: mx.Dtype | None = None,
) -> list[str]:
    """Write ``adapter_model.safetensors`` (metadata ``format: pt``) and ``adapter_config.json``
    into the directory ``out`` (which must exist). Returns the file names written."""
    tensors, modules = adapter_tensors(model, model_type, dtype)
    dropout = float((adapter_config.get("lora_parameters") or {}).get("dropout", 0.0))
    cfg = peft_config(modules, linear_module_names(model, model_type), dropout, base_model_name)
    save_safetensors(out / "adapter_model.safetensors", tensors, {"format": "pt"})
    write_json(out / "adapter_config.json", cfg)
    return ["adapter_model.safetensors", "adapter_config.json"]
