"""GGUF import: read a llama.cpp GGUF file into an mlx-lm model directory, torch-free.

:func:`import_gguf` converts one file; :func:`resolve_model_path` turns a named source
(``gemma3-270m``), a local directory or a hub id into a local model directory, importing
named sources once into the cache.
"""

from .importer import (
    NAMED_SOURCES,
    SUPPORTED_ARCHITECTURES,
    GGUFImportError,
    import_gguf,
    read_gguf,
    resolve_model_path,
)

__all__ = [
    "NAMED_SOURCES",
    "SUPPORTED_ARCHITECTURES",
    "GGUFImportError",
    "import_gguf",
    "read_gguf",
    "resolve_model_path",
]
