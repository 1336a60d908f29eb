"""Quantization methods the layer loop runs: each observes a group's input activations and quantizes
the group of Linears that share that input.

The loop (camelid.quant.loop) owns everything else: which groups exist and in what order (the layer's
`Stage`s), computing their inputs, memory, resume. A method sees, per group, a `LinearGroup` (the
Linears as live modules of the layer being walked, plus their checkpoint weights) and the input batches
it asked to observe. GPTQ and RTN are the two here. An activation-aware method (AWQ) fits the same
shape: its observer keeps per-channel input statistics (or the inputs themselves), and its `quantize`
sees the group's live modules and, through `group.stage.after`, the norm or Linear that produces the
group's input, which it may rescale. (What a third method would still add to the loop: writing the
norms from the live layer rather than from the checkpoint once they are rescaled, and, because AWQ
scales a Linear's input into the previous group (v_proj for o_proj), running its scale search for
all groups of a layer before any group is quantized: with true_sequential off the loop already
observes every group before quantizing any.)
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

from camelid.quant.gptq import Hessian, QuantResult, gptq, prepare_hessian, rtn
from camelid.quant.layer import Stage
from camelid.quant.settings import QuantParams


@dataclass
class LinearGroup:
    """Linears of one layer (or lm_head) that read the same input, in the order they are stacked."""

    names: list[str]  # module names inside the layer ("self_attn.k_proj", ...), or ["lm_head"]
    rows: list[int]  # out_features of each
    in_features: int
    read_weight: Callable[[str], torch.Tensor]  # name -> the checkpoint's weight, fp32, on the compute device
    device: torch.device
    # the layer's live modules by name (all of them, for a method that rescales a neighbour); empty
    # for lm_head, which is never built as a module
    modules: dict[str, torch.nn.Module]
    stage: Stage | None  # where in the layer the group sits (None for lm_head)


class Observer(Protocol):
    def add(self, x: torch.Tensor) -> None:
        """Take one batch of the group's input activations [..., in_features]."""


class QuantMethod(Protocol):
    params: QuantParams
    needs_activations: bool  # False: the loop runs no calibration data at all

    def observer(self, group: LinearGroup) -> Observer | None:
        """A fresh accumulator for the group's inputs, or None when this method does not look at them."""

    def quantize(self, group: LinearGroup, observed: Observer | None) -> dict[str, QuantResult]:
        """Quantize every Linear of the group (by name)."""


def stacked_weights_t(group: LinearGroup) -> torch.Tensor:
    """W^T of the group's Linears stacked by rows [in, sum(out)], fp32, filled one Linear at a time (so
    no second full copy exists): GPTQ's scratch buffer."""
    wt = None
    rows = group.rows
    for nm, (start, stop) in zip(group.names, itertools.pairwise([0, *itertools.accumulate(rows)]), strict=True):
        w = group.read_weight(nm)
        if wt is None:
            wt = torch.empty(w.shape[1], sum(rows), dtype=torch.float32, device=w.device)
        wt[:, start:stop] = w.t()
        del w
    return wt


@dataclass(frozen=True)
class GPTQ:
    """GPTQ on the Hessian of the group's inputs. Linears that read the same input are quantized as
    one row-stacked matrix: GPTQ treats rows independently given H, so this equals quantizing each
    alone, with one factorization of H and one pass of the column loop instead of one per Linear.

    The Hessian is factored (and its buffer consumed) before the weights are read, to keep the
    largest matrices of a layer from being alive at once."""

    params: QuantParams
    needs_activations: bool = True

    def observer(self, group: LinearGroup) -> Hessian:
        return Hessian(group.in_features, group.device)

    def quantize(self, group: LinearGroup, observed: Hessian) -> dict[str, QuantResult]:
        prepared = prepare_hessian(observed, self.params.act_order, self.params.damp)
        wt = stacked_weights_t(group)
        res = gptq(wt.t(), None, self.params, prepared=prepared, overwrite=True)
        del wt, prepared
        return dict(zip(group.names, res.split_rows(group.rows), strict=True))


@dataclass(frozen=True)
class RTN:
    """Round-to-nearest on the same grid: no calibration data."""

    params: QuantParams
    needs_activations: bool = False

    def observer(self, group: LinearGroup) -> None:
        return None

    def quantize(self, group: LinearGroup, observed: None) -> dict[str, QuantResult]:
        res = rtn(stacked_weights_t(group).t(), self.params)
        return dict(zip(group.names, res.split_rows(group.rows), strict=True))


def method_for(params: QuantParams) -> QuantMethod:
    return {"gptq": GPTQ, "rtn": RTN}[params.method](params)
