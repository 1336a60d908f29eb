"""dtype names: the safetensors header codes and the names users type (`float16`, `bf16`, ...)."""

from __future__ import annotations

import torch

from camelid.errors import CamelidError

# safetensors header "dtype" codes (huggingface/safetensors `Dtype` in safetensors/src/tensor.rs)
SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
SAFETENSORS_NAMES: dict[torch.dtype, str] = {v: k for k, v in SAFETENSORS_DTYPES.items()}

# the floating-point dtypes a model's weights or computations are given in
DTYPES: dict[str, torch.dtype] = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
_ALIASES = {"fp16": "float16", "half": "float16", "bf16": "bfloat16", "fp32": "float32", "float": "float32"}


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    """`float16`/`fp16`/`half`, `bfloat16`/`bf16`, `float32`/`fp32`/`float` (any case, `torch.` prefix allowed)."""
    if isinstance(name, torch.dtype):
        return name
    key = str(name).lower().removeprefix("torch.")
    try:
        return DTYPES[_ALIASES.get(key, key)]
    except KeyError:
        raise CamelidError(f"unknown dtype {name!r}: use one of {', '.join(DTYPES)}") from None


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
