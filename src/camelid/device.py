"""Device and compute-dtype policy, one rule for quantization and inference."""

from __future__ import annotations

import torch

from camelid.dtypes import parse_dtype
from camelid.errors import CamelidError


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """`auto` (or None): CUDA when present, else CPU; `cpu`, `cuda`, `cuda:N` as given, when they exist."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise CamelidError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from e
    if dev.type not in ("cpu", "cuda"):
        raise CamelidError(f"device {device!r} is not supported; use auto, cpu, cuda or cuda:N")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise CamelidError(f"device {device!r} requested but CUDA is not available")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise CamelidError(f"device {device!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
    return dev


def compute_dtype(device: torch.device, name: str | torch.dtype = "auto") -> torch.dtype:
    """dtype of the calibration forward passes. bf16 where matmul units support it (CUDA; CPUs with
    AMX/AVX512-BF16, ~10x the fp32 speed), as GPTQModel runs on CPU; fp32 otherwise."""
    if name != "auto":
        return parse_dtype(name)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else torch.float32
