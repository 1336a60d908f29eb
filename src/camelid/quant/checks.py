"""Refuse a quantize run that would silently produce garbage, before any work: a setting that quantizes
nothing, a window longer than the model's context, weights that are not finite (checked as they stream).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from camelid.checkpoint.source import Checkpoint
from camelid.errors import CamelidError, CheckpointError
from camelid.quant.layer import LINEARS, layer_prefix
from camelid.quant.settings import QuantParams


def linear_dims(ckpt: Checkpoint, name: str) -> tuple[int, int]:
    """(in_features, out_features) of Linear `name` from its weight's shape on disk."""
    try:
        out_f, in_f = ckpt.tensors[name + ".weight"].shape
    except KeyError:
        raise CheckpointError(f"{ckpt.dir}: no tensor named {name}.weight") from None
    except ValueError:
        raise CheckpointError(f"{ckpt.dir}: {name}.weight is not a matrix") from None
    return in_f, out_f


DEFAULT_SEQ_LEN = 2048  # GPTQ's windows (Frantar et al. 2022), when the model's context allows


def default_seq_len(ckpt: Checkpoint) -> int:
    """2048, or the model's context when that is shorter (stories260K: 512)."""
    context = ckpt.config.get("max_position_embeddings")
    return min(DEFAULT_SEQ_LEN, context) if isinstance(context, int) and context > 0 else DEFAULT_SEQ_LEN


def check_run(p: QuantParams, ckpt: Checkpoint, n_layers: int, seq_len: int, nsamples: int,
              calibrated: bool, packable: Callable[[int, int], bool]) -> None:
    """Everything about a run that can be known wrong from settings and shapes alone; `packable`
    (in_features, out_features) says which Linears the method's format holds quantized."""
    if calibrated:
        if seq_len < 1 or nsamples < 1:
            raise CamelidError(f"--seq-len and --nsamples must be >= 1, got {seq_len} and {nsamples}")
        context = ckpt.config.get("max_position_embeddings")
        if isinstance(context, int) and seq_len > context:
            raise CamelidError(f"--seq-len {seq_len} is longer than the model's context ({context} positions, "
                               f"max_position_embeddings): use --seq-len {context} or less")
    names = [layer_prefix(i) + m for i in range(n_layers) for m in LINEARS] + (["lm_head"] if p.lm_head else [])
    dims = {linear_dims(ckpt, n) for n in names}
    if not any(packable(i, o) for i, o in dims):
        sizes = ", ".join(f"{i}x{o}" for i, o in sorted(dims))
        needs = ("the output size to be a multiple of 8 and the group size to divide the input size; try a "
                 "divisor such as 32" if p.method == "awq" else "both sizes to be multiples of 32 and the group "
                 "size to divide the input size; try --group-size -1 or a divisor such as 32")
        raise CamelidError(f"--group-size {p.group_size} quantizes none of the Linears (in x out: {sizes}): "
                           f"the format needs {needs}")


class FiniteWeights:
    """A Checkpoint whose floating-point reads are checked for NaN/Inf, naming the tensor: they would give
    inf scales (RTN) or a NaN Hessian and loss (GPTQ) instead of an error."""

    def __init__(self, ckpt: Checkpoint) -> None:
        self.ckpt = ckpt

    def __getattr__(self, name: str):
        return getattr(self.ckpt, name)

    def __contains__(self, name: str) -> bool:
        return name in self.ckpt

    def read(self, name: str, rows: slice | None = None) -> torch.Tensor:
        t = self.ckpt.read(name, rows)
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise CheckpointError(f"{self.ckpt.dir}: tensor {name} has {bad} NaN/Inf value(s); "
                                  "a model with non-finite weights cannot be quantized")
        return t
