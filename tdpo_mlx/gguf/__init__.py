"""GGUF import: read a llama.cpp GGUF file into an mlx-lm model directory, torch-free.

:func:`import_gguf` converts one file; :func:`resolve_model_path` turns a named source
(``gemma3-270m``), a local directory or a hub id into a local model directory, importing
named sources once into the cache. Modules: :mod:`.reader` (GGUF contents), :mod:`.arch`
(configs, tensor names, transforms), :mod:`.tokenizer`, :mod:`.sources` (named sources, cache
directory), :mod:`.importer`.
"""

from .arch import SUPPORTED_ARCHITECTURES
from .importer import import_gguf, resolve_model_path
from .reader import GGUFImportError, read_gguf
from .sources import NAMED_SOURCES

__all__ = [
    "NAMED_SOURCES",
    "SUPPORTED_ARCHITECTURES",
    "GGUFImportError",
    "import_gguf",
    "read_gguf",
    "resolve_model_path",
]
