"""tdpo_mlx: Token-level Direct Preference Optimization (Zeng et al., ICML 2024) for MLX.

Importing the package first gives :mod:`tdpo_mlx.backend` the chance to load an optimized
CBLAS (Linux CPU backend only) *before* ``mlx.core`` is imported anywhere in the process.
"""

from . import backend as _backend

_backend.load_fast_blas()

__version__ = "0.1.0"
