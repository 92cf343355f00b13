"""tdpo_mlx: Token-level Direct Preference Optimization (Zeng et al., ICML 2024) for MLX.

The Python API (each name is documented where it is defined)::

    from tdpo_mlx import TrainConfig, train, load_model, evaluate, load_reward, export

    train(TrainConfig(model="gemma3-270m", data="pairs.jsonl", adapter_path="adapters", iters=100))
    model, tokenizer = load_model("gemma3-270m", "adapters")

- training: :class:`TrainConfig` (every knob and its default), :func:`train`;
- data: :func:`load_preference_data` (file, folder or hub dataset -> encoded pairs);
- models: :func:`resolve_model` (path, hub id or named source), :func:`load_policy` (base +
  fresh or trained LoRA/DoRA adapters), :func:`load_model` (a model to evaluate or sample from,
  with trained adapters), :func:`adapters_disabled` (the reference: the same model, adapters off);
- evaluation: :func:`generate_samples`, :func:`evaluate` (reward, sequence KL, entropy, win
  rate against the reference), :func:`load_reward`;
- files: :func:`export` (PEFT, fused Hugging Face or MLX directory), :func:`import_gguf`.

Importing the package first gives :mod:`tdpo_mlx.backend` the chance to load an optimized
CBLAS (Linux CPU backend only) *before* ``mlx.core`` is imported anywhere in the process. The
names above are imported on first use, so that ``tdpo-mlx --help`` stays fast.
"""

import importlib
import sys
import types

from . import backend as _backend

_backend.load_fast_blas()

__version__ = "0.1.0"

# public name -> the module that defines it
_API = {
    "TrainConfig": "config",
    "train": "trainer",
    "load_preference_data": "data",
    "resolve_model": "models",
    "load_policy": "models",
    "adapters_disabled": "models",
    "load_model": "evaluation",
    "generate_samples": "generation",
    "evaluate": "evaluation",
    "load_reward": "rewards",
    "export": "export",
    "import_gguf": "gguf",
}

__all__ = [*_API, "__version__"]


def __getattr__(name: str):
    """Import a public name from its module on first use (PEP 562)."""
    if name not in _API:
        raise AttributeError(f"module 'tdpo_mlx' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_API[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])


class _Package(types.ModuleType):
    """The import system binds each loaded subpackage to its name on the package; the public
    name ``export`` is the function (:func:`tdpo_mlx.export.export`), so the ``export``
    subpackage is reached only by its full name (``from tdpo_mlx.export import ...``)."""

    def __setattr__(self, name, value):
        if name == "export" and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
