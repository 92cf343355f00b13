"""``tdpo-mlx doctor``: backend, device, BLAS in use and measured float32 matmul speed."""

from __future__ import annotations

import argparse
import json
import sys

from .. import backend
from .common import HelpFormatter, positive_int

#: Below this float32 matmul throughput (GFLOP/s) on the CPU backend, training is impractically slow.
SLOW_GFLOPS = 30.0


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "doctor",
        help="check backend, device, BLAS and matmul speed",
        description=(
            "Print MLX's backend and device, the CBLAS loaded by tdpo_mlx (Linux), the measured "
            "float32 matmul throughput, and what to install when it is slow. With --compare, also "
            "measure the mlx wheel's own BLAS in a subprocess (TDPO_MLX_BLAS=none) and print the ratio."
        ),
        formatter_class=HelpFormatter,
    )
    p.add_argument("--size", type=positive_int, default=1024, help="square matmul size n (2 n^3 flops)")
    p.add_argument("--repeats", type=positive_int, default=5, help="timed repeats (best is reported)")
    p.add_argument(
        "--compare",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also measure the wheel's own BLAS (TDPO_MLX_BLAS=none) in a subprocess, Linux CPU only",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.set_defaults(func=run)
    return p


def diagnose(size: int = 1024, repeats: int = 5, compare: bool = True) -> dict:
    """Collect the doctor's report as a dict (see :func:`run` for the printed form).

    Keys: ``device`` (dict), ``blas`` (dict from :func:`tdpo_mlx.backend.blas_info`),
    ``compute_dtype``, ``matmul`` (GFLOP/s and error vs NumPy float64), and with ``compare`` on
    the Linux CPU backend ``baseline`` (the wheel's own BLAS, measured in a subprocess whose
    ``blas`` is reported too) and
    ``speedup`` (ratio of GFLOP/s); ``advice`` is a list of lines.
    """
    dev = backend.device_info()
    report: dict = {
        "device": dev,
        "blas": backend.blas_info(),
        "compute_dtype": str(backend.default_compute_dtype()).replace("mlx.core.", ""),
        "matmul": backend.matmul_gflops(size, repeats),
        "advice": [],
    }
    cpu_linux = dev["backend"] == "cpu" and sys.platform.startswith("linux")
    if compare and cpu_linux and report["blas"]["path"]:
        try:
            base = backend.measure_in_subprocess("none", size, repeats)
            report["baseline"] = {k: base[k] for k in ("gflops", "max_abs_err", "blas")}
            report["speedup"] = report["matmul"]["gflops"] / max(base["gflops"], 1e-9)
        except Exception as e:  # report, don't fail the doctor
            report["advice"].append(f"could not measure the wheel's own BLAS: {e}")
    if report["matmul"]["max_abs_err"] > 1e-2 * size**0.5:
        report["advice"].append(
            "matmul results disagree with NumPy: set TDPO_MLX_BLAS=none and report this BLAS as broken"
        )
    if cpu_linux and report["matmul"]["gflops"] < SLOW_GFLOPS:
        report["advice"].append(
            f"float32 matmul is slow ({report['matmul']['gflops']:.1f} GFLOP/s): {backend.install_hint()}"
        )
    return report


def format_report(r: dict) -> str:
    dev = r["device"]
    lines = [
        f"backend        {dev['backend']} (mlx {dev.get('mlx', '?')})",
        f"device         {dev.get('device_name', '?')} {dev.get('architecture', '')}".rstrip(),
    ]
    mem = dev.get("memory_size") or dev.get("total_memory")
    if mem:
        lines.append(f"memory         {int(mem) / 1e9:.1f} GB")
    b = r["blas"]
    lines.append(f"BLAS           {b['kind'] or 'mlx built-in'}" + (f" ({b['path']})" if b["path"] else ""))
    lines.append(f"               {b['note']}")
    lines.append(f"compute dtype  {r['compute_dtype']}")
    m = r["matmul"]
    lines.append(f"fp32 matmul    {m['gflops']:.1f} GFLOP/s (n={m['n']}, max abs err vs NumPy {m['max_abs_err']:.2g})")
    if "baseline" in r:
        lines.append(
            f"wheel BLAS     {r['baseline']['gflops']:.1f} GFLOP/s (TDPO_MLX_BLAS=none) -> speedup {r['speedup']:.1f}x"
        )
    for a in r["advice"]:
        lines.append(f"advice         {a}")
    if not r["advice"]:
        lines.append("status         ok")
    return "\n".join(lines)


def run(args) -> int:
    r = diagnose(args.size, args.repeats, args.compare)
    print(json.dumps(r) if args.json else format_report(r))
    return 0
