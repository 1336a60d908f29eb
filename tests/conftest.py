import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data beside the checkout (CAMELID_SHARED_DATA overrides); CI has it, so fail if absent."""
    path = Path(os.environ.get("CAMELID_SHARED_DATA", REPO.parent / "shared" / "data"))
    if not path.is_dir():
        pytest.fail(f"shared data not found at {path}; set CAMELID_SHARED_DATA")
    return path
