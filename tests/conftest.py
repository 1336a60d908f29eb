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


@pytest.fixture(scope="session")
def gptqmodel_checkpoint(tmp_path_factory) -> Path:
    """A tiny Llama quantized by GPTQModel (4-bit, g32, asym, act order), made once per session."""
    pytest.importorskip("gptqmodel")
    from tests.helpers import quantize_with_gptqmodel, write_tiny_llama

    root = tmp_path_factory.mktemp("gptqmodel")
    return quantize_with_gptqmodel(write_tiny_llama(root / "base"), root / "quantized")
