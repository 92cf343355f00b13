"""Write a fused model as one llama.cpp GGUF file (``tdpo-mlx export --to gguf``), torch-free.

Architectures: gemma3 (mlx-lm ``gemma3_text``), llama and qwen2, the ones the importer reads.
Tensor names and llama.cpp's conversion transforms come from :mod:`tdpo_mlx.gguf.arch`, the
inverse of the import: Gemma's norm weights are stored as ``w + 1``, llama's Q/K rows permuted
(``convert_hf_to_gguf.py``). The file is written with the ``gguf`` package (``GGUFWriter``) in
one of three types:

* ``f32``: every tensor float32;
* ``f16``: 2-D weights float16; norms and biases stay float32 (as ``convert_hf_to_gguf.py`` does);
* ``q8_0``: 2-D weights whose rows are a multiple of 32 in llama.cpp's Q8_0 blocks
  (``gguf.quants.quantize``; 32 values and one float16 scale each), others as for ``f16``.

Tokenizer: the ``tokenizer.*`` keys of the GGUF the base model was imported from (named in
``tdpo_mlx_import.json``; they are what llama.cpp tokenizes with), the chat template from the
model directory's tokenizer (the same one, or the one a user put there).
"""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import mlx.core as mx
import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, GGUFWriter, LlamaFileType
from gguf.quants import quantize

from ..errors import UserError
from ..gguf.arch import gguf_tensor_name, llama3_inv_freq_factors, to_gguf_tensor
from ..gguf.importer import MARKER_FILE
from .names import UnsupportedExportError

#: --gguf-type -> (type of 2-D weights, general.file_type)
GGUF_TYPES = {
    "f32": (GGMLQuantizationType.F32, LlamaFileType.ALL_F32),
    "f16": (GGMLQuantizationType.F16, LlamaFileType.MOSTLY_F16),
    "q8_0": (GGMLQuantizationType.Q8_0, LlamaFileType.MOSTLY_Q8_0),
}
#: mlx-lm model_type -> GGUF general.architecture
ARCHITECTURES = {"gemma3_text": "gemma3", "llama": "llama", "qwen2": "qwen2"}
GGUF_FILE = "model.gguf"


def gguf_architecture(model_type: str) -> str:
    """GGUF architecture name of an mlx-lm ``model_type``.

    Raises UnsupportedExportError for other model types."""
    if model_type not in ARCHITECTURES:
        raise UnsupportedExportError(
            f"--to gguf supports model types {', '.join(ARCHITECTURES)}; this model is {model_type!r}"
        )
    return ARCHITECTURES[model_type]


def source_gguf(model_dir: Path) -> Path:
    """The GGUF file ``model_dir`` was imported from (``tdpo_mlx_import.json``).

    Raises UnsupportedExportError when the model was not imported from GGUF or the file is gone
    (its tokenizer metadata is what llama.cpp needs)."""
    marker = Path(model_dir) / MARKER_FILE
    src = Path(json.loads(marker.read_text())["gguf_file"]) if marker.is_file() else None
    if src is None or not src.is_file():
        raise UnsupportedExportError(
            f"{model_dir}: --to gguf copies the tokenizer from the GGUF the base was imported from, and "
            f"{'no import marker was found' if src is None else f'{src} is missing'}; train on a model "
            "imported with tdpo-mlx import-gguf (or a named source such as smollm2-135m-instruct)"
        )
    return src


def tensor_type(name: str, w: np.ndarray, want: GGMLQuantizationType) -> GGMLQuantizationType:
    """Storage type of one tensor: 1-D tensors (norms, biases) and ``rope_freqs`` stay F32; Q8_0
    needs rows that split into 32-value blocks (else F16)."""
    if w.ndim < 2 or name == "rope_freqs.weight":
        return GGMLQuantizationType.F32
    if want == GGMLQuantizationType.Q8_0 and w.shape[-1] % 32:
        return GGMLQuantizationType.F16
    return want


def encode_tensor(w: np.ndarray, qtype: GGMLQuantizationType) -> np.ndarray:
    """``w`` (float32, HF orientation) as the array GGUFWriter stores for ``qtype``."""
    if qtype == GGMLQuantizationType.F32:
        return w.astype(np.float32)
    if qtype == GGMLQuantizationType.F16:
        return w.astype(np.float16)
    return quantize(w.astype(np.float32), qtype)


def _hparams(w: GGUFWriter, arch: str, cfg: dict) -> None:
    n_heads = cfg["num_attention_heads"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // n_heads
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_context_length(cfg.get("max_position_embeddings", 4096))
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(n_heads)
    w.add_head_count_kv(cfg.get("num_key_value_heads", n_heads))
    w.add_layer_norm_rms_eps(cfg.get("rms_norm_eps", 1e-6))
    w.add_rope_freq_base(cfg.get("rope_theta", 10000.0))
    if arch == "gemma3":
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
        w.add_sliding_window(cfg.get("sliding_window", 512))
        w.add_rope_freq_base_swa(cfg.get("rope_local_base_freq", 10000.0))
        pattern = cfg.get("sliding_window_pattern", 6)
        if pattern != 6:  # llama.cpp's default for gemma3; else one flag per layer, True = sliding
            w.add_sliding_window_pattern([(i + 1) % pattern != 0 for i in range(cfg["num_hidden_layers"])])
    elif arch == "llama":
        w.add_rope_dimension_count(head_dim)


def _rope_scaling(w: GGUFWriter, cfg: dict) -> dict[str, np.ndarray]:
    """Write the rope-scaling keys; returns extra tensors (Llama 3's ``rope_freqs.weight``)."""
    rs = cfg.get("rope_scaling")
    if not rs:
        return {}
    kind = rs.get("rope_type", rs.get("type"))
    if kind == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(rs["factor"])
        return {}
    if kind == "yarn":
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(rs["factor"])
        if "original_max_position_embeddings" in rs:
            w.add_rope_scaling_orig_ctx_len(rs["original_max_position_embeddings"])
        return {}
    if kind == "llama3":  # convert_hf_to_gguf.py LlamaModel.generate_extra_tensors
        head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
        factors = llama3_inv_freq_factors(
            head_dim,
            cfg.get("rope_theta", 10000.0),
            rs["factor"],
            rs.get("low_freq_factor", 1.0),
            rs.get("high_freq_factor", 4.0),
            rs["original_max_position_embeddings"],
        )
        return {"rope_freqs.weight": factors}
    raise UnsupportedExportError(f"rope scaling {kind!r} has no GGUF form here (linear, yarn, llama3)")


def _copy_tokenizer(w: GGUFWriter, src: Path, chat_template: str | None) -> None:
    reader = GGUFReader(str(src), "r")
    for key, field in reader.fields.items():
        if not key.startswith("tokenizer.") or key == "tokenizer.chat_template":
            continue
        sub = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(key, field.contents(), field.types[0], sub)
    template = chat_template or reader.fields.get("tokenizer.chat_template")
    if template is not None:
        w.add_chat_template(template if isinstance(template, str) else template.contents())


def chat_template_of(model_dir: Path) -> str | None:
    """The chat template saved with the model's tokenizer (``tokenizer_config.json`` or
    ``chat_template.jinja``), or None."""
    jinja = Path(model_dir) / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text()
    cfg = Path(model_dir) / "tokenizer_config.json"
    template = json.loads(cfg.read_text()).get("chat_template") if cfg.is_file() else None
    return template if isinstance(template, str) else None


def write_gguf(path: Path, weights: dict, raw_config: dict, model_dir: Path, gguf_type: str) -> None:
    """Write ``weights`` (HF name -> float ``mx.array`` of the fused, dequantized model) as the
    GGUF file ``path``.

    Args:
        raw_config: the base's ``config.json`` (hyper-parameters, rope scaling).
        model_dir: the base model directory (import marker -> source GGUF tokenizer; chat template).
        gguf_type: ``f32``, ``f16`` or ``q8_0``.

    Raises:
        UnsupportedExportError: architecture, rope scaling or tokenizer source not supported.
        ValueError: unknown ``gguf_type``.
    """
    if gguf_type not in GGUF_TYPES:
        raise UserError(f"--gguf-type {gguf_type!r}: choose one of {', '.join(GGUF_TYPES)}")
    want, file_type = GGUF_TYPES[gguf_type]
    arch = gguf_architecture(raw_config.get("model_type", ""))
    src = source_gguf(model_dir)
    writer = GGUFWriter(str(path), arch)
    writer.add_name(Path(model_dir).name)
    _hparams(writer, arch, raw_config)
    extra = _rope_scaling(writer, raw_config)
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _copy_tokenizer(writer, src, chat_template_of(model_dir))
    tensors = {gguf_tensor_name(k, arch): v for k, v in weights.items()}
    for name, arr in {**tensors, **extra}.items():
        w = np.asarray(arr.astype(mx.float32)) if isinstance(arr, mx.array) else np.asarray(arr, np.float32)
        w = to_gguf_tensor(name, w, arch, raw_config)
        qtype = tensor_type(name, w, want)
        data = encode_tensor(w, qtype)
        writer.add_tensor(name, data, raw_dtype=qtype if qtype == GGMLQuantizationType.Q8_0 else None)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
