import os
import pathlib

import pytest

import tdpo_mlx  # noqa: F401  (loads the optimized BLAS before mlx.core)

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
HH_FILE = SHARED / "data" / "hh-rlhf" / "harmless-base-test.jsonl.gz"


@pytest.fixture
def hh_file():
    if not HH_FILE.exists():
        pytest.skip(f"real HH data not found at {HH_FILE} (needs ../shared beside the checkout)")
    return HH_FILE
