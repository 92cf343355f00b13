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
from gguf import GGUFReader, GGUFValueType
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
