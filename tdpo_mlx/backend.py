"""Device, compute dtype and the optimized CBLAS on Linux.

Why the BLAS matters: the Linux ``mlx[cpu]`` wheel links a reference BLAS whose float32
matmul runs at a few GFLOP/s. MLX calls ``cblas_sgemm`` through the dynamic linker, so an
optimized CBLAS loaded into the global symbol scope (``RTLD_GLOBAL``) *before* ``mlx.core``
is imported takes those calls over (measured here: about 20x on 2 cores, see
``tdpo-mlx doctor``). :func:`load_fast_blas` does that; ``import tdpo_mlx`` calls it.

This module must not import ``mlx`` (nor ``numpy``, whose own BLAS would load first) at module
level, for the same reason: its functions import them when called.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import json
import logging
import os
import platform
import subprocess
import sys
import time
from importlib import metadata

log = logging.getLogger("tdpo_mlx")

#: Environment variable: a CBLAS library path to load, or ``none`` (``0``, ``off``) to load none.
BLAS_ENV = "TDPO_MLX_BLAS"
_OFF = {"none", "0", "off", "false", "no", "disable", "disabled"}

_BLAS_STATE: dict = {"loaded": None, "kind": None, "tried": False, "note": "not tried yet", "handle": None}


def _mkl_candidates() -> list[str]:
    """libmkl_rt from the ``mkl`` wheel: its recorded files, then ``<prefix>/lib``."""
    found: list[str] = []
    try:
        dist = metadata.distribution("mkl")
        for f in dist.files or []:
            if os.path.basename(str(f)).startswith("libmkl_rt.so"):
                found.append(os.path.normpath(str(dist.locate_file(f))))
    except Exception:  # the wheel is not installed, or its metadata is odd
        pass
    for prefix in dict.fromkeys([sys.prefix, sys.base_prefix, os.environ.get("CONDA_PREFIX") or ""]):
        if prefix:
            found += sorted(glob.glob(os.path.join(prefix, "lib", "libmkl_rt.so*")), reverse=True)
    return [p for p in dict.fromkeys(found) if os.path.isfile(p)]


def _openblas_candidates() -> list[str]:
    """The operating system's OpenBLAS (e.g. ``apt install libopenblas0-pthread``)."""
    found: list[str] = []
    name = ctypes.util.find_library("openblas")
    if name:
        found.append(name)
    for pattern in (
        "/usr/lib/x86_64-linux-gnu/libopenblas.so*",
        "/usr/lib/x86_64-linux-gnu/openblas*/libopenblas.so*",
        "/usr/lib/aarch64-linux-gnu/libopenblas.so*",
        "/usr/lib/aarch64-linux-gnu/openblas*/libopenblas.so*",
        "/usr/lib64/libopenblas*.so*",
        "/usr/lib/libopenblas.so*",
        "/usr/local/lib/libopenblas.so*",
    ):
        found += sorted(glob.glob(pattern))
    return list(dict.fromkeys(found))


def _try_load(path: str, kind: str) -> bool:
    if kind == "mkl":
        # mlx calls the 32-bit-integer CBLAS interface.
        os.environ.setdefault("MKL_INTERFACE_LAYER", "LP64")
    try:
        handle = ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
    except OSError as e:
        log.debug("could not load %s: %s", path, e)
        return False
    if not hasattr(handle, "cblas_sgemm"):
        log.debug("%s has no cblas_sgemm; ignored", path)
        return False
    _BLAS_STATE.update(loaded=path, kind=kind, handle=handle)
    return True


def load_fast_blas() -> str | None:
    """Load an optimized CBLAS with ``RTLD_GLOBAL`` before ``mlx.core`` (Linux only).

    Search order: the path in ``$TDPO_MLX_BLAS`` (``none`` disables loading); ``libmkl_rt``
    from the ``mkl`` wheel (``pip install "tdpo-mlx[blas]"``; ``MKL_INTERFACE_LAYER=LP64`` is
    set unless already set); the OS's OpenBLAS. Runs once per process; never on macOS (MLX
    uses Accelerate/Metal there), and has no effect when ``mlx.core`` is already imported
    (recorded in :func:`blas_info`).

    Returns:
        The path of the library loaded, or None. Says what happened once, at DEBUG level on
        the ``tdpo_mlx`` logger; :func:`blas_info` gives it to callers that print it
        (``tdpo-mlx doctor``, the trainer's start banner).
    """
    if _BLAS_STATE["tried"]:
        return _BLAS_STATE["loaded"]
    _BLAS_STATE["tried"] = True
    if not sys.platform.startswith("linux"):
        _BLAS_STATE["note"] = f"not Linux ({sys.platform}): MLX's own BLAS (Accelerate on macOS) is used"
        return None
    if "mlx.core" in sys.modules:
        _BLAS_STATE["note"] = (
            "mlx.core was imported before tdpo_mlx, so no BLAS was preloaded; "
            "import tdpo_mlx first for the fast CPU matmul"
        )
        log.debug(_BLAS_STATE["note"])
        return None
    env = os.environ.get(BLAS_ENV, "").strip()
    if env.lower() in _OFF:
        _BLAS_STATE["note"] = f"disabled by {BLAS_ENV}={env}: the mlx wheel's own BLAS is used"
        return None
    if env:
        kind = "mkl" if "mkl" in os.path.basename(env) else "env"
        if _try_load(env, kind):
            _BLAS_STATE["note"] = f"loaded {env} (from {BLAS_ENV})"
        else:
            _BLAS_STATE["note"] = f"{BLAS_ENV}={env} could not be loaded or has no cblas_sgemm"
            print(f"tdpo_mlx: warning: {_BLAS_STATE['note']}", file=sys.stderr)
        log.debug(_BLAS_STATE["note"])
        return _BLAS_STATE["loaded"]
    for kind, candidates in (("mkl", _mkl_candidates()), ("openblas", _openblas_candidates())):
        for path in candidates:
            if _try_load(path, kind):
                _BLAS_STATE["note"] = f"loaded {kind} from {path}"
                log.debug(_BLAS_STATE["note"])
                return path
    _BLAS_STATE["note"] = "no optimized CBLAS found: the mlx wheel's own (slow) BLAS is used; " + install_hint()
    log.debug(_BLAS_STATE["note"])
    return None


def install_hint() -> str:
    """What to install for a fast CPU matmul on this platform (one line)."""
    if sys.platform.startswith("linux") and platform.machine() in ("x86_64", "AMD64"):
        return 'pip install "tdpo-mlx[blas]" (Intel MKL wheel), or apt install libopenblas0-pthread'
    if sys.platform.startswith("linux"):
        return "apt install libopenblas0-pthread (or set TDPO_MLX_BLAS=/path/to/libopenblas.so)"
    return "nothing: macOS uses Accelerate and Metal"


def blas_info() -> dict:
    """What :func:`load_fast_blas` did: ``{"kind": "mkl"|"openblas"|"env"|None, "path": str|None,
    "note": one line for people}``."""
    return {"kind": _BLAS_STATE["kind"], "path": _BLAS_STATE["loaded"], "note": _BLAS_STATE["note"]}


def backend_name() -> str:
    """``"metal"``, ``"cuda"`` or ``"cpu"``: the backend of MLX's default device."""
    import mlx.core as mx

    if mx.default_device().type == mx.DeviceType.cpu:
        return "cpu"
    if mx.metal.is_available():
        return "metal"
    if _cuda_available():
        return "cuda"
    return "gpu"


def is_cpu_backend() -> bool:
    """True when MLX's default device is the CPU (Linux ``mlx[cpu]``)."""
    return backend_name() == "cpu"


def _cuda_available() -> bool:
    import mlx.core as mx

    cuda = getattr(mx, "cuda", None)
    try:
        return bool(cuda is not None and cuda.is_available())
    except Exception:
        return False


def device_info() -> dict:
    """Backend, device name and memory of the default device; works on CPU, Metal and CUDA.

    Returns:
        dict with ``backend`` and whatever ``mx.device_info`` / ``mx.metal.device_info`` report
        (e.g. ``device_name``, ``architecture``, ``memory_size`` in bytes); never raises.
    """
    import mlx.core as mx

    info: dict = {"backend": backend_name(), "mlx": getattr(mx, "__version__", "?")}
    for fn in (getattr(mx, "device_info", None), getattr(getattr(mx, "metal", None), "device_info", None)):
        if fn is None:
            continue
        try:
            got = fn()
        except Exception:
            continue
        if got:
            info.update({k: v for k, v in got.items() if k not in info})
            break
    return info


#: Buffer cache on the CPU backend: this fraction of physical memory, at most CPU_CACHE_MAX bytes.
CPU_CACHE_FRACTION = 0.125
CPU_CACHE_MAX = 4 * 2**30


def physical_memory_bytes() -> int | None:
    """Physical memory of this machine in bytes (``sysconf``), or None where unknown."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None


def set_buffer_cache_from_memory() -> int | None:
    """On the CPU backend, let MLX keep freed buffers for reuse up to 1/8 of physical memory
    (at most 4 GiB), instead of returning them to the OS and page-faulting fresh ones.

    MLX's CPU cache limit is small; the training step frees and reallocates the same
    (chunk, vocab) blocks every chunk, and each fresh 64 MiB block costs page faults: a larger
    cache measured ~15x faster elementwise ops on fresh outputs (0.5 vs 7.7 ns an element) and
    seconds per step. Cached buffers are not in use (:func:`peak_memory_gb` does not count them)
    but stay in the process's resident memory. Metal and CUDA keep MLX's defaults.

    Returns:
        The limit set in bytes, or None where nothing was changed.
    """
    import mlx.core as mx

    total = physical_memory_bytes()
    if not is_cpu_backend() or not total:
        return None
    limit = int(min(total * CPU_CACHE_FRACTION, CPU_CACHE_MAX))
    previous = mx.set_cache_limit(limit)  # returns the limit it replaces
    if previous >= limit:  # never shrink a larger limit someone set
        mx.set_cache_limit(previous)
        return None
    return limit


def default_compute_dtype():
    """float32 on the CPU backend (no fast bf16 matmul there), bfloat16 on Metal/CUDA."""
    import mlx.core as mx

    return mx.float32 if is_cpu_backend() else mx.bfloat16


def peak_memory_gb() -> float:
    """Peak memory MLX has allocated since the last reset, in GB (10^9 bytes)."""
    import mlx.core as mx

    return mx.get_peak_memory() / 1e9


def reset_peak_memory() -> None:
    """Reset MLX's peak-memory counter (see :func:`peak_memory_gb`)."""
    import mlx.core as mx

    mx.reset_peak_memory()


def matmul_gflops(n: int = 1024, repeats: int = 5, dtype: str = "float32") -> dict:
    """Measure MLX matmul throughput on the default device in this process.

    Args:
        n: square matrix size; repeats: timed runs (the best is reported).
        dtype: ``"float32"`` etc.

    Returns:
        ``{"gflops": best GFLOP/s (2 n^3 / seconds / 1e9), "max_abs_err": vs NumPy float64,
        "n": n}``. A wrong BLAS shows as a large error.
    """
    import mlx.core as mx
    import numpy as np

    rng = np.random.default_rng(0)
    a_np = rng.standard_normal((n, n), dtype=np.float32)
    b_np = rng.standard_normal((n, n), dtype=np.float32)
    a = mx.array(a_np).astype(getattr(mx, dtype))
    b = mx.array(b_np).astype(getattr(mx, dtype))
    c = a @ b
    mx.eval(c)
    ref = a_np.astype(np.float64) @ b_np.astype(np.float64)
    err = float(np.max(np.abs(np.array(c.astype(mx.float32)) - ref)))
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        mx.eval(a @ b)
        best = min(best, time.perf_counter() - t)
    return {"gflops": 2 * n**3 / best / 1e9, "max_abs_err": err, "n": n}


def measure_in_subprocess(blas: str | None = None, n: int = 1024, repeats: int = 5, timeout: float = 600) -> dict:
    """Run :func:`matmul_gflops` in a fresh Python process with ``TDPO_MLX_BLAS=blas``.

    ``blas=None`` keeps the current environment (the normal search); ``"none"`` measures the
    mlx wheel's own BLAS. Returns the measurement plus ``blas_info`` of that process.

    Raises:
        RuntimeError: if the child process fails.
    """
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    if blas is not None:
        env[BLAS_ENV] = blas
    code = (
        "import json, tdpo_mlx; from tdpo_mlx import backend as b; "
        f"r = b.matmul_gflops({int(n)}, {int(repeats)}); r['blas'] = b.blas_info(); print(json.dumps(r))"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"matmul benchmark failed (TDPO_MLX_BLAS={blas}):\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
