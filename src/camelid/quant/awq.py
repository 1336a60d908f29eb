"""AWQ (Lin et al. 2023, "Activation-aware Weight Quantization") as pure functions over tensors, the
way AutoAWQ implements it (`awq/quantize/quantizer.py` `_search_best_scale`, `_compute_best_scale`,
`_compute_best_clip`, `pseudo_quantize_tensor`; `awq/quantize/scale.py`; `awq/models/llama.py`
`get_layers_for_scaling`).

Per decoder layer, on its calibration inputs:
1. Scales. For each group of Linears that read one input x, and the op that produces x (a norm, or the
   Linear before), search s over a grid of ratios r = k/n_grid, k = 0..n_grid-1:
   s = (mean|x|^r / (mean_w^(1-r) + 1e-4)).clamp(1e-4) (`duo_scaling`; mean|x|^r alone otherwise),
   normalised by sqrt(max s * min s), and keep the s whose Q(W*s)/s gives the least mean squared error
   of the group's block output (`module2inspect`: the whole attention for q,k,v, the MLP for gate,up).
   All groups are searched on the original weights, then applied together, fused so the layer's
   structure is unchanged: prev /= s (a norm's weight, or the previous Linear's output rows), W *= s
   on the input columns.
2. Clipping. For every Linear but q and k ("due to qk bmm" in AutoAWQ), per (output channel, group)
   the largest |w| is shrunk by 1 - i/n_grid, i < max_shrink * n_grid, and the shrink with the least
   error of the group's partial dot products on a token sample is kept; the weights are clamped to it.
3. Round to nearest on AWQ's asymmetric min/max grid (the range need not contain 0, zero points 0..15).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from camelid.quant.gptq import QuantResult
from camelid.quant.quantizer import round_half_even


@dataclass(frozen=True)
class AWQSettings:
    bits: int = 4
    group_size: int = 128
    n_grid: int = 20  # scale ratios k/n_grid and clip shrinks 1 - i/n_grid
    duo_scaling: bool = True  # AutoAWQ's default; False is llm-awq's activation-only rule
    clip: bool = True
    max_shrink: float = 0.5
    n_sample_token: int = 512  # tokens the clip search looks at
    chunk_tokens: int = 8192  # tokens per forward in the scale search (memory only)


# ---- the grid -------------------------------------------------------------------------------------------

def quantize_grid(w: torch.Tensor, s: AWQSettings) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """AWQ's zero-point grid per group of `group_size` inputs: codes [out, in] and scales, zeros
    [out, groups]. Scales are rounded to fp16 (the stored dtype) before use, so what the search and
    the clip see is exactly what the checkpoint holds."""
    maxq = 2 ** s.bits - 1
    rows, cols = w.shape
    g = w.float().reshape(rows, cols // s.group_size, s.group_size)
    wmax, wmin = g.amax(dim=-1), g.amin(dim=-1)
    scales = ((wmax - wmin).clamp(min=1e-5) / maxq).to(torch.float16).float()
    zeros = (-round_half_even(wmin / scales)).clamp(0, maxq)
    q = (round_half_even(g / scales[..., None]) + zeros[..., None]).clamp(0, maxq)
    return q.reshape(rows, cols), scales, zeros


def fake_quantize(w: torch.Tensor, s: AWQSettings) -> torch.Tensor:
    """Q(w): w rounded onto its grid and back, in w's dtype."""
    q, scales, zeros = quantize_grid(w, s)
    rows, cols = w.shape
    out = (q.reshape(rows, -1, s.group_size) - zeros[..., None]) * scales[..., None]
    return out.reshape(rows, cols).to(w.dtype)


def quantize_weight(w: torch.Tensor, s: AWQSettings) -> QuantResult:
    """Round-to-nearest on the AWQ grid, as camelid.quant's result type ([groups, out] scales/zeros)."""
    q, scales, zeros = quantize_grid(w, s)
    g_idx = (torch.arange(w.shape[1]) // s.group_size).to(torch.int32)
    return QuantResult(q.to(torch.uint8), scales.t().contiguous(), zeros.t().to(torch.int32).contiguous(), g_idx,
                       torch.zeros(w.shape[0]), 0.0)


# ---- scale search ---------------------------------------------------------------------------------------

def activation_mean(x: torch.Tensor) -> torch.Tensor:
    """mean |x| per input channel over all tokens, summed in fp32."""
    x = x.reshape(-1, x.shape[-1])
    total = torch.zeros(x.shape[-1], dtype=torch.float32, device=x.device)
    for r in range(0, x.shape[0], 8192):
        total += x[r:r + 8192].float().abs().sum(dim=0)
    return total / x.shape[0]


def weight_mean(weights: list[torch.Tensor], group_size: int) -> torch.Tensor:
    """Per input channel, the mean over output rows of |w| / max|w| of its group (AutoAWQ's w_mean)."""
    w = torch.cat([t.float() for t in weights], dim=0)
    g = w.abs().reshape(-1, group_size)
    g = g / (g.amax(dim=1, keepdim=True) + 1e-6)
    return g.reshape(w.shape).mean(dim=0)


def candidate_scales(x_mean: torch.Tensor, w_mean: torch.Tensor, ratio: float, duo: bool) -> torch.Tensor:
    if duo:
        s = (x_mean.pow(ratio) / (w_mean.pow(1 - ratio) + 1e-4)).clamp(min=1e-4)
    else:
        s = x_mean.pow(ratio).clamp(min=1e-4)
    s = s / (s.max() * s.min()).sqrt()
    return torch.where(torch.isfinite(s), s, torch.ones_like(s))


def search_scale(x: torch.Tensor, linears: list[nn.Linear], block: Callable[[torch.Tensor], torch.Tensor],
                 s: AWQSettings) -> tuple[torch.Tensor, float]:
    """The best s for `linears` (which all read x [..., in]) and its loss. `block(x)` is the output the
    loss is measured on; it runs the live modules, whose weights are swapped per candidate and restored."""
    originals = [lin.weight.data for lin in linears]
    x_mean = activation_mean(x)
    w_mean = weight_mean(originals, s.group_size)
    with torch.no_grad():
        reference = [block(c) for c in _chunks(x, s.chunk_tokens)]
    best, best_loss = torch.ones_like(x_mean), float("inf")
    try:
        for k in range(s.n_grid):
            scales = candidate_scales(x_mean, w_mean, k / s.n_grid, s.duo_scaling)
            sc = scales.to(originals[0].dtype)
            for lin, w in zip(linears, originals, strict=True):
                lin.weight.data = fake_quantize(w * sc, s) / sc
            with torch.no_grad():
                err = sum(float((block(c) - ref).float().pow(2).sum())
                          for c, ref in zip(_chunks(x, s.chunk_tokens), reference, strict=True))
            loss = err / sum(r.numel() for r in reference)
            if loss < best_loss:
                best, best_loss = scales, loss
    finally:
        for lin, w in zip(linears, originals, strict=True):
            lin.weight.data = w
    return best, best_loss


def _chunks(x: torch.Tensor, tokens: int) -> list[torch.Tensor]:
    """Batches of whole rows of x [n, seq, ...] holding about `tokens` tokens each."""
    per = max(1, tokens // x.shape[1]) if x.dim() > 2 else tokens
    return list(x.split(per))


# ---- clip search ----------------------------------------------------------------------------------------

def search_clip(x: torch.Tensor, w: torch.Tensor, s: AWQSettings, rows_per_batch: int = 256) -> torch.Tensor:
    """Per (output channel, group) the clip threshold [out, groups] minimising the mean squared error
    of the group's partial products x_g . w_g on `n_sample_token` tokens of x (every step-th)."""
    x = x.reshape(-1, x.shape[-1])
    x = x[::max(1, x.shape[0] // s.n_sample_token)].float()
    n_out, n_in = w.shape
    groups = n_in // s.group_size
    xg = x.reshape(x.shape[0], groups, s.group_size).transpose(0, 1)  # [groups, tokens, gs]
    out = []
    for r in range(0, n_out, rows_per_batch):
        wb = w[r:r + rows_per_batch].float()
        wg = wb.reshape(wb.shape[0], groups, s.group_size)
        org_max = wg.abs().amax(dim=-1, keepdim=True)  # [rows, groups, 1]
        ref = torch.bmm(xg, wg.permute(1, 2, 0))  # partial products [groups, tokens, rows]
        best_err = torch.full((wb.shape[0], groups), float("inf"), device=wb.device)
        best_max = org_max[..., 0].clone()
        for i in range(int(s.max_shrink * s.n_grid)):
            max_val = org_max * (1 - i / s.n_grid)
            cur = torch.clamp(wg, -max_val, max_val)  # symmetric clamp, as AutoAWQ, before the asymmetric grid
            q = fake_quantize(cur.reshape(wb.shape[0], n_in), s).reshape(wg.shape)
            err = (torch.bmm(xg, q.permute(1, 2, 0)) - ref).pow(2).mean(dim=1).t()  # [rows, groups]
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_max = torch.where(better, max_val[..., 0], best_max)
        out.append(best_max)
    return torch.cat(out)


def apply_clip(w: torch.Tensor, max_val: torch.Tensor, group_size: int) -> torch.Tensor:
    g = w.reshape(w.shape[0], -1, group_size)
    m = max_val.to(w.dtype)[..., None]
    return torch.clamp(g, -m, m).reshape(w.shape)


# ---- a Llama decoder layer ------------------------------------------------------------------------------

@dataclass(frozen=True)
class ScaleSpec:
    """One AutoAWQ scaling group of a Llama layer by module names: `prev` produces the input of
    `linears`; `inspect` is the module whose output the scale search measures (`module2inspect`)."""

    name: str
    prev: str
    linears: tuple[str, ...]
    inspect: str


# `awq/models/llama.py` `get_layers_for_scaling`, in its order (the order the scales are fused in)
LLAMA_SCALING = (
    ScaleSpec("qkv", "input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), "self_attn"),
    ScaleSpec("o", "self_attn.v_proj", ("self_attn.o_proj",), "self_attn.o_proj"),
    ScaleSpec("gate_up", "post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj"), "mlp"),
    ScaleSpec("down", "mlp.up_proj", ("mlp.down_proj",), "mlp.down_proj"),
)


def input_group(linear: str) -> str:
    """The scaling group whose input `linear` reads."""
    return next(spec.name for spec in LLAMA_SCALING if linear in spec.linears)


@dataclass
class ScaleGroup:
    """One AutoAWQ scaling group as live modules: `prev` produces the input of `linears`; `block` is
    the loss target."""

    name: str
    prev: nn.Module  # RMSNorm (weight divided by s) or Linear (output rows divided by s)
    linears: list[nn.Linear]
    block: Callable[[torch.Tensor], torch.Tensor]
    names: tuple[str, ...]  # of the linears, inside the layer


def llama_groups(layer: nn.Module, pe) -> list[ScaleGroup]:
    """`awq/models/llama.py` `get_layers_for_scaling`: v -> o only when v_proj and o_proj have the same
    shape (not under GQA, llm-awq PR #67)."""
    attn = layer.self_attn
    groups = []
    for spec in LLAMA_SCALING:
        if spec.name == "o" and attn.v_proj.weight.shape != attn.o_proj.weight.shape:
            continue
        inspect = layer.get_submodule(spec.inspect)
        block = ((lambda x: attn(hidden_states=x, position_embeddings=pe, attention_mask=None)[0])
                 if spec.inspect == "self_attn" else inspect)
        groups.append(ScaleGroup(spec.name, layer.get_submodule(spec.prev),
                                 [layer.get_submodule(nm) for nm in spec.linears], block, spec.linears))
    return groups


def group_inputs(layer: nn.Module, h: torch.Tensor, pe) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The inputs of each group's Linears for layer input h [n, seq, hidden], and the layer's output,
    from one forward."""
    seen: dict[str, torch.Tensor] = {}
    handles = [layer.get_submodule(spec.linears[0]).register_forward_pre_hook(
        lambda _mod, args, key=spec.name: seen.__setitem__(key, args[0].detach())) for spec in LLAMA_SCALING]
    try:
        with torch.no_grad():
            out = layer(h, attention_mask=None, position_embeddings=pe)
    finally:
        for handle in handles:
            handle.remove()
    return seen, out[0] if isinstance(out, tuple) else out


def apply_scale(group: ScaleGroup, scales: torch.Tensor) -> None:
    """Fuse s into the layer: prev's output divided by s, the group's input columns multiplied by it
    (AutoAWQ `scale_ln_fcs` / `scale_fc_fc`)."""
    sc = scales.to(group.prev.weight.dtype)
    if isinstance(group.prev, nn.Linear):
        group.prev.weight.data[-sc.numel():] /= sc[:, None]
        if group.prev.bias is not None:
            group.prev.bias.data[-sc.numel():] /= sc
    else:
        group.prev.weight.data /= sc
        if getattr(group.prev, "bias", None) is not None:
            group.prev.bias.data /= sc
    for lin in group.linears:
        lin.weight.data *= sc


# Linears whose clip is searched: not q_proj and k_proj, whose outputs meet in q.k^T, which a
# per-Linear error does not see (AutoAWQ skips them "due to qk bmm").
CLIPPED = ("self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


@dataclass
class LayerFit:
    """What AWQ found for one layer: per group its scales, per clipped Linear its thresholds."""

    scales: dict[str, torch.Tensor]  # group name -> s [in]
    clips: dict[str, torch.Tensor]  # Linear name -> max |w| [out, groups]
    log: list[dict]


def fit_layer(layer: nn.Module, h: torch.Tensor, pe, s: AWQSettings) -> tuple[torch.Tensor, LayerFit]:
    """`fit_inputs` on the group inputs of layer input h. Returns the unchanged layer's output (the
    next layer's input: AutoAWQ does not propagate quantization error) and the fit."""
    inputs, out = group_inputs(layer, h, pe)
    return out, fit_inputs(layer, inputs, pe, s)


def fit_inputs(layer: nn.Module, inputs: dict[str, torch.Tensor], pe, s: AWQSettings,
               quantized: set[str] | None = None) -> LayerFit:
    """Search the scales and clips of one decoder layer, in AutoAWQ's order: every scale is searched
    on the original weights, all are applied (in place; the cached `inputs`, by group name, divided by
    s), then the clip search runs on the scaled inputs and weights. Only the `quantized` Linears (all
    when None) are fake-quantized in the searches; a group with none of them, or without an input, is
    left unscaled. The fit, which `fitted` applies to each weight held at higher precision."""
    def searched(g: ScaleGroup) -> list[nn.Linear]:
        return [lin for lin, nm in zip(g.linears, g.names, strict=True) if quantized is None or nm in quantized]

    groups = [g for g in llama_groups(layer, pe) if g.name in inputs and searched(g)]
    found = [(g, *search_scale(inputs[g.name], searched(g), g.block, s)) for g in groups]
    fit = LayerFit({}, {}, [])
    for g, scales, loss in found:
        apply_scale(g, scales)
        inputs[g.name] = inputs[g.name] / scales.to(inputs[g.name].dtype)
        fit.scales[g.name] = scales
        fit.log.append({"module": g.name, "loss": loss, "scale_min": float(scales.min()),
                        "scale_max": float(scales.max())})
    # without a v -> o scale (GQA), o_proj's input is unchanged: scaling ln1 and q,k,v cancels exactly
    for nm in CLIPPED if s.clip else ():
        if (quantized is not None and nm not in quantized) or input_group(nm) not in inputs:
            continue
        lin = layer.get_submodule(nm)
        org_max = lin.weight.data.abs().reshape(lin.out_features, -1, s.group_size).amax(dim=-1).float()
        fit.clips[nm] = search_clip(inputs[input_group(nm)], lin.weight.data, s)
        lin.weight.data = apply_clip(lin.weight.data, fit.clips[nm], s.group_size)
        fit.log.append({"module": nm, "mean_shrink": float((fit.clips[nm] / org_max.clamp(min=1e-12)).mean())})
    return fit


def fitted(name: str, w: torch.Tensor, fit: LayerFit, group_size: int) -> torch.Tensor:
    """The weight of module `name` (a norm or Linear inside the layer) with the fit fused in, as
    `apply_scale` and `apply_clip` change it, in the same order (a copy; w is not changed)."""
    w = w.clone()
    for spec in LLAMA_SCALING:
        if spec.name not in fit.scales:
            continue
        sc = fit.scales[spec.name].to(w.dtype)
        if name == spec.prev:
            if w.dim() == 2:
                w[-sc.numel():] /= sc[:, None]
            else:
                w /= sc
        if name in spec.linears:
            w *= sc
    if name in fit.clips:
        w = apply_clip(w, fit.clips[name], group_size)
    return w


def apply_fit(layer: nn.Module, fit: LayerFit, group_size: int) -> None:
    """Fuse a layer's scales into its norms and Linears, then clamp the clipped Linears (in place)."""
    for nm in dict.fromkeys(n for spec in LLAMA_SCALING for n in (spec.prev, *spec.linears)):
        mod = layer.get_submodule(nm)
        mod.weight.data = fitted(nm, mod.weight.data, fit, group_size)
