"""Per-group affine grid: scale and zero-point for a block of weights, and rounding onto it.

Math as AutoGPTQ's `auto_gptq/quantization/quantizer.py`: the range always includes 0, symmetric grids
sit the zero at (maxq+1)/2, the optional MSE search shrinks the range in 100 steps down to 0.2 of it
and keeps the shrink with the least sum |q - x|^2.4.

Two choices differ from AutoGPTQ, both so that what GPTQ's error feedback sees is exactly what the
checkpoint stores: scales are rounded to fp16 (the stored dtype) before use, and an asymmetric
zero-point is kept >= 1, because the v1 format stores `zero - 1` and has no code for 0. Where the
plain grid would put zero at 0 (a group whose minimum is ~0), the range is stretched by one step
instead (`scale = xmax / (maxq - 1)`, zero 1): nothing is clipped, and the format stays lossless.
"""

from __future__ import annotations

import torch

_MAGIC = 1.5 * 2**23


def round_half_even(x: torch.Tensor) -> torch.Tensor:
    """torch.round for fp32 (ties to even), via the 1.5*2^23 trick: torch.round's CPU kernel costs
    ~1 ms even on a 3k-element vector, and GPTQ calls it once per column. Exact for |x| < 2^22;
    larger values stay far outside [0, maxq] and are clamped anyway."""
    return (x + _MAGIC) - _MAGIC


def max_q(bits: int) -> int:
    return (1 << bits) - 1


def _grid(xmin: torch.Tensor, xmax: torch.Tensor, maxq: int, sym: bool) -> tuple[torch.Tensor, torch.Tensor]:
    if sym:
        xmax = torch.maximum(xmin.abs(), xmax)
        xmin = torch.where(xmin < 0, -xmax, xmin)
    empty = (xmin == 0) & (xmax == 0)
    xmin = torch.where(empty, -1.0, xmin)
    xmax = torch.where(empty, 1.0, xmax)
    scale = (xmax - xmin) / maxq
    if sym:
        zero = torch.full_like(scale, (maxq + 1) // 2)
    else:
        zero = round_half_even(-xmin / scale)
        low = zero < 1  # v1 cannot store zero 0: widen the grid by one step rather than clip
        scale = torch.where(low, torch.maximum(scale, xmax / (maxq - 1)), scale)
        zero = torch.where(low, torch.ones_like(zero), zero)
    scale = scale.to(torch.float16).to(torch.float32)
    scale = torch.where(scale > 0, scale, torch.finfo(torch.float16).tiny)
    return scale, zero


def find_params(w: torch.Tensor, bits: int, sym: bool, mse: bool = False,
                grid: int = 100, maxshrink: float = 0.8, norm: float = 2.4) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero per row of `w` [rows, cols] (one row = one output channel of a group)."""
    maxq = max_q(bits)
    w = w.float()
    xmin = torch.clamp(w.min(dim=1).values, max=0)
    xmax = torch.clamp(w.max(dim=1).values, min=0)
    scale, zero = _grid(xmin, xmax, maxq, sym)
    if not mse:
        return scale, zero
    best = torch.full_like(scale, float("inf"))
    for i in range(int(maxshrink * grid)):
        p = 1 - i / grid
        s, z = _grid(p * xmin, p * xmax, maxq, sym)
        err = (dequantize(quantize(w, s[:, None], z[:, None], maxq), s[:, None], z[:, None]) - w)
        err = err.abs_().pow_(norm).sum(dim=1)
        better = err < best
        best = torch.where(better, err, best)
        scale = torch.where(better, s, scale)
        zero = torch.where(better, z, zero)
    return scale, zero


def quantize(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, maxq: int) -> torch.Tensor:
    """Integer codes in [0, maxq] (as float, for cheap arithmetic); scale/zero broadcast against w."""
    return torch.clamp(round_half_even(w / scale) + zero, 0, maxq)


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    return scale * (q - zero)
