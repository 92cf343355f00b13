"""Backend helpers: CBLAS preloading (Linux), device info, compute dtype, the doctor."""

import json
import os
import subprocess
import sys
from importlib import metadata

import mlx.core as mx
import pytest

from tdpo_mlx import backend
from tdpo_mlx.cli import doctor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="CBLAS preloading is Linux-only")


def _child(code: str, **env) -> str:
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, e.get("PYTHONPATH", "")) if p)
    e.update(env)
    out = subprocess.run([sys.executable, "-c", code], env=e, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1] + "\n" + out.stderr


def test_blas_info_shape():
    info = backend.blas_info()
    assert set(info) == {"kind", "path", "note"}
    assert info["kind"] in (None, "mkl", "openblas", "env")
    assert (info["kind"] is None) == (info["path"] is None)
    assert isinstance(info["note"], str) and info["note"]


@linux_only
def test_mkl_wheel_is_found_when_installed():
    try:
        metadata.distribution("mkl")
    except metadata.PackageNotFoundError:
        pytest.skip("the mkl wheel is not installed (pip install -e '.[blas]')")
    cands = backend._mkl_candidates()
    assert cands, "mkl wheel installed but libmkl_rt not found"
    assert all(os.path.basename(c).startswith("libmkl_rt.so") and os.path.isfile(c) for c in cands)


@linux_only
def test_env_none_disables_and_bad_path_warns():
    out = _child(
        "import json, tdpo_mlx; from tdpo_mlx import backend as b; print(json.dumps(b.blas_info()))",
        TDPO_MLX_BLAS="none",
    )
    info = json.loads(out.splitlines()[0])
    assert info["path"] is None and "disabled" in info["note"]
    out = _child(
        "import json, tdpo_mlx; from tdpo_mlx import backend as b; print(json.dumps(b.blas_info()))",
        TDPO_MLX_BLAS="/nonexistent/libnothing.so",
    )
    info = json.loads(out.splitlines()[0])
    assert info["path"] is None and "could not be loaded" in info["note"]
    assert "warning" in out  # said once on stderr


@linux_only
def test_no_effect_after_mlx_core_import():
    out = _child("import json, mlx.core, tdpo_mlx; from tdpo_mlx import backend as b; print(json.dumps(b.blas_info()))")
    info = json.loads(out.splitlines()[0])
    assert info["path"] is None and "mlx.core was imported before" in info["note"]


def test_never_on_macos(monkeypatch):
    saved = dict(backend._BLAS_STATE)
    try:
        backend._BLAS_STATE.update(tried=False, loaded=None, kind=None)
        monkeypatch.setattr(sys, "platform", "darwin")
        assert backend.load_fast_blas() is None
        assert "not Linux" in backend.blas_info()["note"]
        assert backend.load_fast_blas() is None  # once per process
    finally:
        backend._BLAS_STATE.clear()
        backend._BLAS_STATE.update(saved)


def test_matmul_is_correct_with_loaded_blas():
    r = backend.matmul_gflops(n=128, repeats=1)
    assert r["n"] == 128 and r["gflops"] > 0
    # float32 accumulation of 128 products of N(0,1) values: error far below 1e-3
    assert r["max_abs_err"] < 1e-3


def test_device_helpers_on_this_backend():
    info = backend.device_info()
    assert info["backend"] in ("cpu", "metal", "cuda", "gpu")
    if info["backend"] == "cpu":
        assert backend.is_cpu_backend()
        assert backend.default_compute_dtype() == mx.float32
    else:
        assert backend.default_compute_dtype() == mx.bfloat16
    backend.reset_peak_memory()
    mx.eval(mx.zeros((1000, 1000)))  # 4 MB
    assert backend.peak_memory_gb() >= 0.004


def test_doctor_report_and_cli(capsys):
    r = doctor.diagnose(size=64, repeats=1, compare=False)
    assert r["device"]["backend"] == backend.device_info()["backend"]
    assert r["blas"] == backend.blas_info()
    text = doctor.format_report(r)
    assert "BLAS" in text and "GFLOP/s" in text
    from tdpo_mlx.cli import main

    assert main(["doctor", "--size", "64", "--repeats", "1", "--no-compare", "--json"]) == 0
    got = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert got["matmul"]["n"] == 64 and "baseline" not in got


@linux_only
def test_doctor_compare_measures_wheel_blas():
    if backend.blas_info()["path"] is None or not backend.is_cpu_backend():
        pytest.skip("no optimized BLAS loaded")
    r = doctor.diagnose(size=128, repeats=1, compare=True)
    # the baseline really ran on the wheel's own BLAS (no optimized library loaded in the child),
    # this process on the optimized one, and both multiply correctly
    assert r["baseline"]["blas"]["kind"] is None and r["blas"]["kind"] is not None
    assert r["baseline"]["gflops"] > 0 and r["baseline"]["max_abs_err"] < 1e-2 * 128**0.5


def test_buffer_cache_from_memory_on_cpu_only_and_never_shrinks():
    previous = mx.set_cache_limit(0)
    try:
        limit = backend.set_buffer_cache_from_memory()
        if not backend.is_cpu_backend():
            assert limit is None
            return
        total = backend.physical_memory_bytes()
        assert limit == int(min(total * backend.CPU_CACHE_FRACTION, backend.CPU_CACHE_MAX)) > 0
        assert mx.set_cache_limit(limit) == limit  # it is what MLX now uses
        mx.set_cache_limit(limit * 2)
        assert backend.set_buffer_cache_from_memory() is None  # a larger limit stays
        assert mx.set_cache_limit(previous) == limit * 2
    finally:
        mx.set_cache_limit(previous)
