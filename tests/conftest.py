import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Shared read-only data: $CAMELID_SHARED_DATA, else ../shared/data beside the checkout."""
    path = Path(os.environ.get("CAMELID_SHARED_DATA") or Path(__file__).resolve().parents[1].parent / "shared" / "data")
    if not path.is_dir():
        pytest.fail(f"shared data not found at {path}; set CAMELID_SHARED_DATA")
    return path
