"""The README's "From Python" snippet runs as written, on a tiny local model and data (no downloads)."""

import json
import re
from pathlib import Path

from support.models import make_model_dir

ROOT = Path(__file__).resolve().parents[1]

# what the snippet names -> what this test gives it (each must appear, so an edited README
# cannot silently reach for the real model or the hub)
LOCAL = {
    '"gemma3-270m"': None,  # the tiny model directory
    '"pairs.jsonl"': None,  # the tiny data file
    "iters=100": "iters=2, batch_size=2, eval_every=2, max_eval_pairs=4, progress=False",
    "max_tokens=32": "max_tokens=3, samples_per_prompt=1, progress=False",
}


def readme_snippet() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## From Python", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, "the 'From Python' section should hold one python block"
    return blocks[0]


def test_readme_from_python_snippet_runs(tmp_path, monkeypatch):
    model_dir = make_model_dir(tmp_path / "tiny", seed=2)
    data = tmp_path / "pairs.jsonl"
    rows = [{"prompt": "what is good", "chosen": " good answer", "rejected": " bad answer"} for _ in range(10)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code = readme_snippet()
    for key in LOCAL:
        assert key in code, f"README snippet no longer contains {key}: update tests/test_readme.py"
    code = code.replace('"gemma3-270m"', repr(str(model_dir))).replace('"pairs.jsonl"', repr(str(data)))
    for key, value in LOCAL.items():
        if value is not None:
            code = code.replace(key, value)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "README.md (From Python)", "exec"), scope)
    assert scope["result"]["step"] == 2
    assert (tmp_path / "adapters" / "adapters.safetensors").is_file()
    policy = scope["report"].policy
    assert -1.0 <= policy["reward_mean"] <= 1.0 and policy["seq_kl_mean"] >= 0.0  # VADER compound; a KL
    assert sorted(p.name for p in (tmp_path / "peft-adapter").iterdir()) == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
    ]


def test_public_api_names_are_documented_functions():
    """Every name ``tdpo_mlx`` exports resolves, with a docstring; ``export`` stays the function
    after the ``tdpo_mlx.export`` subpackage is imported; importing the package loads no mlx.core
    (the BLAS loader must come first) and none of the API's modules."""
    import subprocess
    import sys

    import tdpo_mlx
    import tdpo_mlx.export.pipeline  # noqa: F401  (binds the subpackage: the name must stay the function)

    names = [n for n in tdpo_mlx.__all__ if n != "__version__"]
    assert {"TrainConfig", "train", "load_preference_data", "load_policy", "evaluate", "export", "import_gguf"} <= set(
        names
    )
    for name in names:
        obj = getattr(tdpo_mlx, name)
        assert callable(obj) and (obj.__doc__ or "").strip(), name
    assert tdpo_mlx.export is tdpo_mlx.export.__globals__["export"]
    code = "import sys, tdpo_mlx; print(sorted(m for m in sys.modules if m in ('mlx.core', 'tdpo_mlx.trainer')))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
