import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data beside the checkout, or $CAMELID_SHARED_DATA; missing data is a failure, not a skip."""
    env = os.environ.get("CAMELID_SHARED_DATA")
    path = Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "data"
    if not path.is_dir():
        pytest.fail(f"shared data not found at {path} (set CAMELID_SHARED_DATA)")
    return path
