"""Parameter and module names: mlx-lm layout -> Hugging Face transformers layout, per architecture.

One job: given an mlx-lm ``model_type`` and an mlx-lm parameter or module path, say the path
transformers uses for the same tensor, or raise :class:`UnsupportedExportError` where no mapping
is known to be safe. Used by the PEFT writer (module paths under ``base_model.model.``) and by
the fused Hugging Face writer (parameter names in ``model.safetensors``).

Only text-only causal LMs whose mapping has been checked by equal logits in transformers/PEFT
(``tests/test_interop_export.py``) are listed. For these, mlx-lm keeps the transformers names
unchanged (``model.layers.N.self_attn.q_proj.weight`` ...), and mlx-lm's ``sanitize`` only
drops tensors (rotary ``inv_freq``; a tied ``lm_head.weight``), so the reverse map is the
identity plus the tie flag. Gemma's RMSNorm weights are stored as ``w`` in both (each model
computes ``x * (1 + w)``), so no shift is undone here.
"""

from __future__ import annotations

from ..errors import UserError

# mlx-lm model_type -> transformers architecture class name (config.json "architectures").
ARCHITECTURES: dict[str, str] = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "gemma3_text": "Gemma3ForCausalLM",
}

# model types that have an mlx-lm module but no safe HF mapping here, with the reason/fix.
_KNOWN_UNSUPPORTED: dict[str, str] = {
    "gemma3": (
        "the multimodal Gemma 3 layout (language_model.*) maps to Gemma3ForConditionalGeneration; "
        "only text models are exported: convert the text model (model_type gemma3_text) instead"
    ),
}


class UnsupportedExportError(UserError):
    """An adapter or model that has no safe mapping to the requested Hugging Face layout."""


def check_supported(model_type: str) -> str:
    """Return the transformers architecture name for ``model_type``.

    Raises:
        UnsupportedExportError: the architecture is not one whose names are verified.
    """
    if model_type in ARCHITECTURES:
        return ARCHITECTURES[model_type]
    reason = _KNOWN_UNSUPPORTED.get(model_type)
    supported = ", ".join(sorted(ARCHITECTURES))
    raise UnsupportedExportError(
        f"model_type {model_type!r} has no verified mlx-lm -> Hugging Face name mapping"
        + (f" ({reason})" if reason else "")
        + f". Supported: {supported}. Use --to mlx for an MLX export of any model."
    )


def hf_name(model_type: str, mlx_name: str) -> str:
    """The transformers name of one mlx-lm parameter or module path.

    Args:
        model_type: ``config.json`` ``model_type`` of the mlx-lm model.
        mlx_name: dotted path in the mlx-lm model, e.g. ``model.layers.3.mlp.down_proj.weight``.

    Raises:
        UnsupportedExportError: unknown architecture, or a stacked mixture-of-experts tensor
            (mlx-lm stacks per-expert weights into one ``switch_mlp`` tensor that transformers
            keeps as separate experts).
    """
    check_supported(model_type)
    if ".switch_mlp." in mlx_name or mlx_name.startswith("switch_mlp."):
        raise UnsupportedExportError(
            f"{mlx_name}: stacked mixture-of-experts weights have no one-to-one Hugging Face name"
        )
    return mlx_name


def layer_index(name: str) -> int | None:
    """Decoder layer number in a path like ``model.layers.12.self_attn.q_proj`` (else None)."""
    parts = name.split(".")
    for i, p in enumerate(parts[:-1]):
        if p == "layers" and parts[i + 1].isdigit():
            return int(parts[i + 1])
    return None


def within_layer_path(name: str) -> str:
    """The path after ``layers.N.`` (``self_attn.q_proj``), or the whole name outside layers."""
    parts = name.split(".")
    for i, p in enumerate(parts[:-1]):
        if p == "layers" and parts[i + 1].isdigit():
            return ".".join(parts[i + 2 :])
    return name
