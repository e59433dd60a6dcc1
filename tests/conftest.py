"""Shared fixtures: small generated data, the real MovieLens-100K copy in ../shared/data (never copied here)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _threads_and_seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "ml-100k" / "u.data").is_file():
        if os.environ.get("CI"):
            pytest.fail(f"CI run without the real data at {SHARED_DATA}")
        pytest.skip(f"real data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def planted_small():
    import dcn_explore as dx

    return dx.data.planted_crosses(n_samples=3000, seed=0)
