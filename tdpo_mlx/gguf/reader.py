"""Read a llama.cpp GGUF file: metadata values and a lazy (memory-mapped) tensor table.

Dequantization uses the ``gguf`` package's NumPy dequantizer (``gguf.quants.dequantize``), so
every type that package supports works. Torch is never imported.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType
from gguf.quants import dequantize

from ..errors import NotFoundError, UserError


class GGUFImportError(UserError):
    """A GGUF file this importer cannot turn into an mlx-lm model (message says why and the fix)."""


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


@dataclass
class GGUFContents:
    """What :func:`read_gguf` gives: metadata values and a lazy tensor table.

    ``metadata``: key -> Python value (int/float/bool/str, or list for arrays).
    ``tensors``: GGUF tensor name -> ``gguf.ReaderTensor`` (data memory-mapped, not copied).
    """

    path: Path
    metadata: dict[str, Any]
    tensors: dict[str, Any] = field(default_factory=dict)

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", ""))

    def arch_value(self, key: str, default: Any = None) -> Any:
        """``metadata[f"{architecture}.{key}"]`` or ``default``."""
        return self.metadata.get(f"{self.architecture}.{key}", default)

    def require(self, key: str) -> Any:
        full = f"{self.architecture}.{key}"
        if full not in self.metadata:
            raise GGUFImportError(
                f"{self.path}: metadata key {full!r} is missing; the file is incomplete or not a model"
            )
        return self.metadata[full]

    def tensor(self, name: str) -> np.ndarray:
        """Dequantized tensor as float32 in Hugging Face (row-major, out x in) orientation."""
        t = self.tensors[name]
        try:
            w = dequantize(t.data, t.tensor_type)
        except NotImplementedError as e:
            raise GGUFImportError(
                f"{self.path}: tensor {name!r} has type {t.tensor_type.name}, which the installed gguf package "
                f"cannot dequantize ({e}); upgrade gguf (pip install -U gguf)"
            ) from e
        shape = tuple(int(s) for s in reversed(t.shape.tolist()))
        return np.asarray(w, dtype=np.float32).reshape(shape)

    def quantized(self, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, int] | None:
        """A Q4_0 / Q4_1 / Q8_0 tensor as MLX affine-quantized arrays, without dequantizing:
        ``(weight, scales, biases, bits)`` with group size 32 (one GGUF block per group), or None
        for other types.

        ``weight``: uint32 (rows, in * bits / 32), element j of a word in bits ``[j*bits, (j+1)*bits)``
        (``mx.quantize``'s packing); ``scales``/``biases``: float16 (rows, in / 32), so that
        ``w = scales * q + biases`` per group reproduces ggml's value exactly: Q8_0 ``d * q`` with
        q = code - 128; Q4_0 ``d * (nibble - 8)``; Q4_1 ``d * nibble + m`` (ggml-quants.c block layouts).
        """
        t = self.tensors[name]
        kind = t.tensor_type
        if kind not in _NATIVE_BLOCKS or len(t.shape) != 2:
            return None
        rows, cols = int(t.shape[1]), int(t.shape[0])
        blocks = np.asarray(t.data, dtype=np.uint8).reshape(rows, cols // 32, _NATIVE_BLOCKS[kind])
        d = blocks[..., 0:2].copy().view(np.float16)[..., 0]
        if kind == GGMLQuantizationType.Q8_0:
            codes = (blocks[..., 2:].view(np.int8).astype(np.int16) + 128).astype(np.uint8)
            return _pack(codes, 8), d, (d * np.float16(-128)).astype(np.float16), 8
        qs = blocks[..., 4:] if kind == GGMLQuantizationType.Q4_1 else blocks[..., 2:]
        codes = np.concatenate([qs & 0x0F, qs >> 4], axis=-1)  # elements 0-15 low nibbles, 16-31 high
        if kind == GGMLQuantizationType.Q4_1:
            m = blocks[..., 2:4].copy().view(np.float16)[..., 0]
            return _pack(codes, 4), d, m, 4
        return _pack(codes, 4), d, (d * np.float16(-8)).astype(np.float16), 4


# bytes per 32-value block of the types MLX keeps as affine-quantized layers (ggml-common.h)
_NATIVE_BLOCKS = {GGMLQuantizationType.Q8_0: 34, GGMLQuantizationType.Q4_0: 18, GGMLQuantizationType.Q4_1: 20}


def _pack(codes: np.ndarray, bits: int) -> np.ndarray:
    """(rows, groups, 32) codes < 2**bits -> (rows, groups * bits) uint32 words, low bits first."""
    rows = codes.shape[0]
    per_word = 32 // bits
    c = codes.reshape(rows, -1, per_word).astype(np.uint32)
    shifts = (np.arange(per_word, dtype=np.uint32) * bits)[None, None, :]
    return np.bitwise_or.reduce(c << shifts, axis=-1).astype(np.uint32)


def _field_value(f: Any) -> Any:
    types = f.types
    if not types:
        return None
    if types[0] == GGUFValueType.ARRAY:
        sub = types[-1]
        if sub == GGUFValueType.STRING:
            return [bytes(f.parts[i]).decode("utf-8") for i in f.data]
        if len(types) > 2:  # nested arrays: rarely used, fall back to the reader
            return f.contents()
        if not f.data:
            return []
        vals = np.concatenate([np.asarray(f.parts[i]).reshape(-1) for i in f.data])
        return vals.tolist()
    if types[0] == GGUFValueType.STRING:
        return bytes(f.parts[f.data[0]]).decode("utf-8")
    v = f.parts[f.data[0]][0]
    if types[0] == GGUFValueType.BOOL:
        return bool(v)
    return v.item()


def read_gguf(path: str | os.PathLike) -> GGUFContents:
    """Read a GGUF file's metadata and tensor table (tensor data stays memory-mapped).

    Raises FileNotFoundError if ``path`` is missing, GGUFImportError if it is not a GGUF file.
    """
    p = Path(path)
    if not p.is_file():
        raise NotFoundError(f"GGUF file not found: {p}")
    with open(p, "rb") as fh:
        magic = fh.read(4)
    if magic != b"GGUF":
        raise GGUFImportError(f"{p} is not a GGUF file (magic {magic!r}, expected b'GGUF')")
    reader = GGUFReader(str(p), "r")
    meta = {k: _field_value(f) for k, f in reader.fields.items()}
    return GGUFContents(path=p, metadata=meta, tensors={t.name: t for t in reader.tensors})
