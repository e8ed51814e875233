"""Shared test fixtures: repository paths and the real reference data in ../shared/data."""

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Real DESED metadata and recordings (MIT, from ATST-SED); CI clones the repo with shared/ beside it."""
    if not SHARED_DATA.is_dir():
        raise FileNotFoundError(f"reference data expected at {SHARED_DATA} (shared/ beside the checkout)")
    return SHARED_DATA
