"""Quantization methods the layer loop runs: each observes a group's input activations and quantizes
the group of Linears that share that input, into its checkpoint format's tensors.

The loop (camelid.quant.loop) owns everything else: which groups exist and in what order (the layer's
`Stage`s), computing their inputs, memory, resume. A method sees, per group, a `LinearGroup` (the
Linears' names, shapes and checkpoint weights) and the input batches it asked to observe. GPTQ and RTN write the GPTQ format; AWQ the AutoAWQ GEMM format.

AWQ folds its input scales into the module that produces a group's input (a norm, or the previous
group's Linear: v_proj for o_proj), so it declares `folds_scales`: the loop then observes every group
of a layer on the unquantized layer, takes the layer's output from it (AutoAWQ propagates no
quantization error), and calls `fold` once before quantizing any group; every tensor of the layer it
reads from the checkpoint afterwards (the Linears to quantize, the ones left fp16, the norms) goes
through the returned function.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import ClassVar, Protocol

import torch

from camelid.formats import awq as awq_format
from camelid.formats.gptq import layout as gptq_layout
from camelid.quant import awq
from camelid.quant.gptq import Hessian, QuantResult, gptq, prepare_hessian, rtn
from camelid.quant.settings import QuantParams

# name inside the layer, its checkpoint tensor in fp32 -> the tensor to quantize or store
Fold = Callable[[str, torch.Tensor], torch.Tensor]


@dataclass
class LinearGroup:
    """Linears of one layer (or lm_head) that read the same input, in the order they are stacked."""

    names: list[str]  # module names inside the layer ("self_attn.k_proj", ...), or ["lm_head"]
    rows: list[int]  # out_features of each
    in_features: int
    # name -> the checkpoint's weight (through the method's fold, if any), fp32, on the compute device
    read_weight: Callable[[str], torch.Tensor]
    device: torch.device


class Observer(Protocol):
    def add(self, x: torch.Tensor) -> None:
        """Take one batch of the group's input activations [..., in_features]."""


class QuantMethod(Protocol):
    params: QuantParams
    needs_activations: bool  # False: the loop runs no calibration data at all
    folds_scales: bool  # True: `fold` runs once per layer, after every group is observed (see above)

    @property
    def key(self) -> str:
        """What besides `params` changes the output (part of the resume fingerprint)."""

    def observer(self, group: LinearGroup) -> Observer | None:
        """A fresh accumulator for the group's inputs, or None when this method does not look at them."""

    def fold(self, layer: torch.nn.Module, pe: tuple[torch.Tensor, torch.Tensor],
             observed: list[tuple[LinearGroup, Observer]]) -> Fold:
        """(folds_scales only) Fit the layer on its groups' inputs; how its tensors change."""

    def quantize(self, group: LinearGroup, observed: Observer | None) -> dict[str, QuantResult]:
        """Quantize every Linear of the group (by name)."""

    def packable(self, in_features: int, out_features: int) -> bool:
        """Whether the format can hold a Linear of this shape quantized (else it stays fp16)."""

    def pack(self, prefix: str, res: QuantResult) -> dict[str, torch.Tensor]:
        """One quantized Linear's tensors in the checkpoint format, named under `prefix`."""


class _GPTQFormat:
    """GPTQ (v1) packing, shared by the methods that write it."""

    params: QuantParams
    folds_scales: ClassVar[bool] = False
    key: ClassVar[str] = ""

    def packable(self, in_features: int, out_features: int) -> bool:
        return gptq_layout.packable(in_features, out_features, self.params.bits, self.params.group_size)

    def pack(self, prefix: str, res: QuantResult) -> dict[str, torch.Tensor]:
        return gptq_layout.pack_linear(prefix, res.q, res.scales, res.zeros, res.g_idx, self.params.bits)


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
class GPTQ(_GPTQFormat):
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
class RTN(_GPTQFormat):
    """Round-to-nearest on the same grid: no calibration data."""

    params: QuantParams
    needs_activations: bool = False

    def observer(self, group: LinearGroup) -> None:
        return None

    def quantize(self, group: LinearGroup, observed: None) -> dict[str, QuantResult]:
        res = rtn(stacked_weights_t(group).t(), self.params)
        return dict(zip(group.names, res.split_rows(group.rows), strict=True))


class Inputs:
    """A group's input batches as they come (AWQ's searches need the inputs themselves), on the
    compute device."""

    def __init__(self) -> None:
        self.batches: list[torch.Tensor] = []

    def add(self, x: torch.Tensor) -> None:
        self.batches.append(x.detach())

    def take(self) -> torch.Tensor:
        """All batches as one tensor [windows, seq_len, in]; the batches are let go."""
        x = torch.cat(self.batches) if len(self.batches) > 1 else self.batches[0]
        self.batches = []
        return x


@dataclass(frozen=True)
class AWQ:
    """AutoAWQ's activation-aware scale search and clip search (`camelid.quant.awq`), then round to
    nearest on AWQ's zero-point grid, into the AutoAWQ GEMM format. `search` holds the searches' knobs
    (AutoAWQ's defaults unless given; its bits and group size are the params')."""

    params: QuantParams
    search: awq.AWQSettings = awq.AWQSettings()
    needs_activations: bool = True
    folds_scales: ClassVar[bool] = True

    @property
    def settings(self) -> awq.AWQSettings:
        return replace(self.search, bits=self.params.bits, group_size=self.params.group_size)

    @property
    def key(self) -> str:
        return repr(self.settings)

    def observer(self, group: LinearGroup) -> Inputs:
        return Inputs()

    def fold(self, layer: torch.nn.Module, pe: tuple[torch.Tensor, torch.Tensor],
             observed: list[tuple[LinearGroup, Inputs]]) -> Fold:
        inputs = {awq.input_group(group.names[0]): obs.take() for group, obs in observed}
        quantized = {nm for group, _ in observed for nm in group.names}
        fit = awq.fit_inputs(layer, inputs, pe, self.settings, quantized)
        del inputs
        return lambda name, w: awq.fitted(name, w, fit, self.params.group_size)

    def quantize(self, group: LinearGroup, observed: Inputs) -> dict[str, QuantResult]:
        """Round to nearest on the fitted weights (the loop's `read_weight` has the fold in it). The
        rows' loss is the squared rounding error of the fitted weight."""
        out = {}
        for nm in group.names:
            w = group.read_weight(nm).cpu()
            res = awq.quantize_weight(w, self.settings)
            out[nm] = replace(res, row_loss=(res.dequantized() - w).pow(2).sum(dim=1))
        return out

    def packable(self, in_features: int, out_features: int) -> bool:
        return awq_format.packable(in_features, out_features, self.params.group_size)

    def pack(self, prefix: str, res: QuantResult) -> dict[str, torch.Tensor]:
        return awq_format.pack_linear(prefix, res.q, res.scales, res.zeros)


def method_for(params: QuantParams) -> QuantMethod:
    return {"gptq": GPTQ, "rtn": RTN, "awq": AWQ}[params.method](params)
