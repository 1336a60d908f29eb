"""Change the floating-point dtype of a model folder (what "fp16" repos are), streamed and sharded."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import torch

from camelid.checkpoint.output import write_model_dir
from camelid.checkpoint.source import Checkpoint, open_checkpoint, row_slices
from camelid.checkpoint.writer import TensorSpec
from camelid.dtypes import dtype_name, parse_dtype
from camelid.errors import CheckpointError


def with_config_dtype(config: dict, dtype: torch.dtype) -> dict:
    """config.json says which dtype the weights are in: transformers 4 reads `torch_dtype`, 5 `dtype`."""
    config = dict(config)
    config["torch_dtype"] = dtype_name(dtype)
    if "dtype" in config:
        config["dtype"] = dtype_name(dtype)
    return config


_FP16_LIMIT = 65520.0  # the smallest magnitude that rounds to inf in float16 (65504 + half an ulp)


def cast_checked(x: torch.Tensor, dtype: torch.dtype, name: str) -> torch.Tensor:
    """Cast, refusing values that overflow float16 (65504 at most: inf weights are garbage)."""
    if dtype == torch.float16 and x.dtype != dtype and x.dtype.is_floating_point and x.numel():
        lo, hi = torch.aminmax(x)  # one vectorised pass over the source, cheaper than checking the result
        if max(-lo.item(), hi.item()) >= _FP16_LIMIT:
            lost = (x.abs() >= _FP16_LIMIT) & torch.isfinite(x)
            if bool(lost.any()):
                raise CheckpointError(
                    f"tensor {name}: values up to {x[lost].abs().max().item():.4g} overflow float16; "
                    "use bfloat16 or float32"
                )
    return x.to(dtype)


def _converted_chunks(ckpt: Checkpoint, specs: list[TensorSpec]) -> Iterator[tuple[str, torch.Tensor]]:
    for spec in specs:
        for rows in row_slices(spec.shape):
            yield spec.name, cast_checked(ckpt.read(spec.name, rows=rows), spec.dtype, spec.name)


def convert(src: str | os.PathLike, out: str | os.PathLike, dtype: str | torch.dtype = "float16",
            max_shard_size: int | str = "5GB", overwrite: bool = False, revision: str | None = None) -> Path:
    """Write `src` with every floating-point tensor cast to `dtype`; integer tensors (e.g. GPTQ's packed
    weights) are copied unchanged. Tokenizer and generation config are copied; config.json's dtype is set.
    """
    target = parse_dtype(dtype)
    ckpt = open_checkpoint(src, revision)
    specs = [TensorSpec(t.name, target if t.dtype.is_floating_point else t.dtype, t.shape)
             for t in ckpt.tensors.values()]
    return write_model_dir(out, specs, _converted_chunks(ckpt, specs), with_config_dtype(ckpt.config, target),
                           side_files_from=[ckpt.dir], max_shard_size=max_shard_size, overwrite=overwrite,
                           desc=f"convert to {dtype_name(target)}", inputs=[ckpt.dir])
