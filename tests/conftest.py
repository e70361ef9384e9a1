"""Shared test fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    """The raw development set beside the repository (skips where it is absent, e.g. on a user's machine)."""
    if not (SHARED_DATASETS / "routerbench_zs.parquet").exists():
        pytest.skip(f"raw development data not found at {SHARED_DATASETS}")
    return SHARED_DATASETS
