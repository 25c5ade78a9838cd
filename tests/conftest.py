"""Shared fixtures: tiny synthetic products (read-only, session scope) and per-test folders."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shangpin.records import Product
from tests.factories import tiny_products as make_tiny

os.environ.setdefault("SHANGPIN_PROGRESS", "0")
os.environ.setdefault("SHANGPIN_THREADS", "2")

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def tiny_products() -> list[Product]:
    """40 synthetic products with known answers; do not modify (copy first)."""
    return make_tiny(40)


@pytest.fixture()
def model_dir(tmp_path: Path) -> Path:
    return tmp_path / "model"


def shared_data(relative: str) -> Path:
    """A path under ../shared/data, or skip the test when the shared data is not beside the repository."""
    path = SHARED / relative
    if not path.exists():
        pytest.skip(f"needs ../shared/data/{relative} (not present: this clone has no ../shared beside it)")
    return path
