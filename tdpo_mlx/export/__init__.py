"""Export trained adapters: PEFT adapters, a fused Hugging Face model, or an MLX model directory.

- :mod:`.pipeline`: :func:`export` (the entry point), loading and fusing for export;
- :mod:`.fuse`: fusing LoRA/DoRA into the base in float32 and precision warnings (case A2);
- :mod:`.peft`, :mod:`.hf`: the PEFT and transformers writers; :mod:`.names`: MLX -> HF names;
- :mod:`.card`: model cards; :mod:`.files`: tokenizer files and shard sizes.
"""

from .fuse import ExportPrecisionWarning
from .names import UnsupportedExportError
from .pipeline import ExportResult, export, load_for_export, resolve_model_dir, upload_to_hub

__all__ = [
    "ExportPrecisionWarning",
    "ExportResult",
    "UnsupportedExportError",
    "export",
    "load_for_export",
    "resolve_model_dir",
    "upload_to_hub",
]
