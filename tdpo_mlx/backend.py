"""Device, compute dtype and the optimized CBLAS on Linux.

This module must not import ``mlx`` at module level: :func:`load_fast_blas` has to run
before ``mlx.core`` is loaded for the preloaded BLAS symbols to be picked up.
"""

from __future__ import annotations

import sys

_BLAS_STATE: dict = {"loaded": None, "tried": False}


def load_fast_blas() -> str | None:
    """Load an optimized CBLAS with ``RTLD_GLOBAL`` before ``mlx.core`` (Linux only).

    Returns the path of the library loaded, or None. Never does anything on macOS.
    (Placeholder: the full search order lives in the fast-path issue.)
    """
    _BLAS_STATE["tried"] = True
    return None


def is_cpu_backend() -> bool:
    """True when MLX's default device is the CPU (Linux ``mlx[cpu]``)."""
    import mlx.core as mx

    return mx.default_device() == mx.cpu or not mx.metal.is_available() and not _cuda_available()


def _cuda_available() -> bool:
    import mlx.core as mx

    cuda = getattr(mx, "cuda", None)
    return bool(cuda is not None and getattr(cuda, "is_available", lambda: False)())


def default_compute_dtype():
    """float32 on the CPU backend (no fast bf16 matmul there), bfloat16 on Metal/CUDA."""
    import mlx.core as mx

    return mx.float32 if is_cpu_backend() else mx.bfloat16


def peak_memory_gb() -> float:
    """Peak memory MLX has allocated since the last reset, in GB (10^9 bytes)."""
    import mlx.core as mx

    return mx.get_peak_memory() / 1e9


def reset_peak_memory() -> None:
    import mlx.core as mx

    mx.reset_peak_memory()
