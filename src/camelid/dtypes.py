"""dtype names: the safetensors header codes and the names users type (`float16`, `bf16`, ...).

The header facts (bytes per value, which codes are floating point) are plain data, known without torch:
GGUF export reads checkpoints with numpy alone, and importing torch costs ~225 MB of resident memory
(measured: 225 MB VmRSS after `import torch` against 9 MB for the bare interpreter). The torch-valued
tables are built on first use (PEP 562 module `__getattr__`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from camelid.errors import CamelidError

if TYPE_CHECKING:
    import torch

# safetensors header "dtype" codes (huggingface/safetensors `Dtype` in safetensors/src/tensor.rs):
# code -> (torch dtype name, bytes per value)
SAFETENSORS_CODES: dict[str, tuple[str, int]] = {
    "F64": ("float64", 8), "F32": ("float32", 4), "F16": ("float16", 2), "BF16": ("bfloat16", 2),
    "I64": ("int64", 8), "I32": ("int32", 4), "I16": ("int16", 2), "I8": ("int8", 1), "U8": ("uint8", 1),
    "BOOL": ("bool", 1), "F8_E4M3": ("float8_e4m3fn", 1), "F8_E5M2": ("float8_e5m2", 1),
}
SAFETENSORS_FLOATS = frozenset({"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"})

# the floating-point dtypes a model's weights or computations are given in
_DTYPE_NAMES = ("float16", "bfloat16", "float32")
_ALIASES = {"fp16": "float16", "half": "float16", "bf16": "bfloat16", "fp32": "float32", "float": "float32"}


def __getattr__(name: str) -> object:
    # The name is checked before torch is imported: the import system probes modules for `__path__`.
    if name not in ("SAFETENSORS_DTYPES", "SAFETENSORS_NAMES"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import torch

    dtypes = {k: getattr(torch, t) for k, (t, _) in SAFETENSORS_CODES.items()}  # code -> torch.dtype
    globals()["SAFETENSORS_DTYPES"] = dtypes  # built once; later lookups find the module attributes
    globals()["SAFETENSORS_NAMES"] = {v: k for k, v in dtypes.items()}
    return globals()[name]


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    """`float16`/`fp16`/`half`, `bfloat16`/`bf16`, `float32`/`fp32`/`float` (any case, `torch.` prefix allowed)."""
    import torch

    if isinstance(name, torch.dtype):
        return name
    key = str(name).lower().removeprefix("torch.")
    key = _ALIASES.get(key, key)
    if key not in _DTYPE_NAMES:
        raise CamelidError(f"unknown dtype {name!r}: use one of {', '.join(_DTYPE_NAMES)}")
    return getattr(torch, key)


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
