import pytest
import torch

from camelid.device import compute_dtype, resolve_device
from camelid.dtypes import (
    SAFETENSORS_CODES,
    SAFETENSORS_DTYPES,
    SAFETENSORS_FLOATS,
    SAFETENSORS_NAMES,
    parse_dtype,
)
from camelid.errors import CamelidError


@pytest.mark.parametrize("name,want", [("bf16", torch.bfloat16), ("torch.float16", torch.float16),
                                       ("FP32", torch.float32), ("half", torch.float16), (torch.bfloat16, torch.bfloat16)])
def test_dtype_names(name, want):
    assert parse_dtype(name) is want


def test_unknown_dtype_is_a_clear_error_everywhere():
    with pytest.raises(CamelidError, match="unknown dtype 'float64'"):
        parse_dtype("float64")
    with pytest.raises(CamelidError, match="unknown dtype"):  # quantization's --compute-dtype, once a KeyError
        compute_dtype(torch.device("cpu"), "int8")
    assert compute_dtype(torch.device("cpu"), "float32") is torch.float32


def test_safetensors_tables_are_inverse():
    assert all(SAFETENSORS_DTYPES[code] is dtype for dtype, code in SAFETENSORS_NAMES.items())
    assert SAFETENSORS_NAMES[torch.bfloat16] == "BF16" and SAFETENSORS_DTYPES["I32"] is torch.int32
    # the torch-free header facts (GGUF export reads checkpoints without torch) agree with torch's
    assert all(SAFETENSORS_DTYPES[code].itemsize == size for code, (_, size) in SAFETENSORS_CODES.items())
    assert SAFETENSORS_FLOATS == {code for code, dtype in SAFETENSORS_DTYPES.items() if dtype.is_floating_point}


def test_one_device_rule():
    assert resolve_device("cpu") == torch.device("cpu") == resolve_device(torch.device("cpu"))
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    for bad, match in (("mps", "not supported"), ("gpu", "unknown device")):
        with pytest.raises(CamelidError, match=match):
            resolve_device(bad)
    if not torch.cuda.is_available():
        for name in ("cuda", "cuda:1"):  # quantization once refused cuda:1 by name; now both say why
            with pytest.raises(CamelidError, match="CUDA is not available"):
                resolve_device(name)
    else:
        assert resolve_device("cuda:0") == torch.device("cuda:0")
        with pytest.raises(CamelidError, match="CUDA device"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")
