import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/helpers.py importable as `helpers`


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data beside the checkout, or $CAMELID_SHARED_DATA; missing data fails loudly (no skip)."""
    env = os.environ.get("CAMELID_SHARED_DATA")
    path = Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "data"
    if not path.is_dir():
        pytest.fail(f"shared data not found at {path}: set CAMELID_SHARED_DATA to the shared/data folder")
    return path


@pytest.fixture(scope="session")
def gptqmodel_checkpoint(tmp_path_factory) -> Path:
    """A tiny Llama quantized by GPTQModel (4-bit, g32, asym, act order), made once per session."""
    pytest.importorskip("gptqmodel")
    from helpers import quantize_with_gptqmodel, write_tiny_llama

    root = tmp_path_factory.mktemp("gptqmodel")
    return quantize_with_gptqmodel(write_tiny_llama(root / "base"), root / "quantized")
