"""The package never needs torch: with torch made unimportable (as if not installed), tdpo_mlx is
imported and PEFT, HF and MLX exports run in a fresh interpreter."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from support.no_torch import SITECUSTOMIZE

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(
    """
    import sys, warnings
    try:
        import torch
    except ModuleNotFoundError:
        pass
    else:
        raise SystemExit("torch was importable: the blocker did not work")
    import tdpo_mlx
    from tdpo_mlx.export import export
    sys.path.insert(0, "tests")
    from support.models import make_adapter, make_model_dir
    from pathlib import Path
    tmp = Path(sys.argv[1])
    model = make_model_dir(tmp / "base", "gemma3_text")
    adapter = make_adapter(model, tmp / "ad", num_layers=1, dora=True)
    for to in ("peft", "hf", "mlx"):
        export(model, adapter, to=to, out=tmp / to)
    from tdpo_mlx.cli import main
    assert main(["export", "--model", str(model), "--adapter-path", str(adapter), "--to", "peft", "--out", str(tmp / "cli")]) == 0
    loaded = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
    assert not loaded, loaded
    print("NO_TORCH_OK", sorted(p.name for p in (tmp / "hf").iterdir()))
    """
)


def test_export_runs_with_torch_unimportable(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "NO_TORCH_OK" in proc.stdout
    assert "model.safetensors" in proc.stdout and "config.json" in proc.stdout
