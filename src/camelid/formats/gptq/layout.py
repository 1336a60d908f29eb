"""Which Linears a GPTQ checkpoint quantizes, how the others are declared, and one Linear's tensors.

Per quantized Linear: qweight int32 [in*bits/32, out], qzeros int32 [groups, out*bits/32] (zero - 1),
scales fp16 [groups, out], g_idx int32 [in] (AutoGPTQ `auto_gptq/nn_modules/qlinear/qlinear_cuda.py`).
Linears that cannot be packed stay fp16 and are named in GPTQModel's `dynamic` block as negative ("-:")
matches, which GPTQModel (and Transformers through it) honour by leaving them plain nn.Linear.
"""

from __future__ import annotations

import re

import torch

from camelid.errors import CamelidError
from camelid.formats.gptq.pack import pack_qweight, pack_qzeros
from camelid.formats.skipped import by_layer_suffix

LAYER_PREFIX = re.compile(r"^model\.layers\.\d+\.")


def packable(in_features: int, out_features: int, bits: int, group_size: int) -> bool:
    """Whether a Linear fits the format: both dims pack into whole 32-value runs, groups divide `in`."""
    if in_features % 32 or out_features % 32:
        return False
    return group_size == -1 or in_features % group_size == 0


def packed_shapes(in_features: int, out_features: int, bits: int, group_size: int) -> dict[str, tuple]:
    """(dtype, shape) of each tensor `pack_linear` writes for one Linear, keyed by suffix."""
    groups = 1 if group_size == -1 else -(-in_features // group_size)
    return {
        "qweight": (torch.int32, (in_features // 32 * bits, out_features)),
        "qzeros": (torch.int32, (groups, out_features // 32 * bits)),
        "scales": (torch.float16, (groups, out_features)),
        "g_idx": (torch.int32, (in_features,)),
    }


def pack_linear(prefix: str, q: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, g_idx: torch.Tensor,
                bits: int) -> dict[str, torch.Tensor]:
    """Tensors of one quantized Linear under `prefix` (e.g. 'model.layers.0.self_attn.q_proj') from its
    codes q [out, in], scales and zero-points [groups, out] and g_idx [in]."""
    # packed in slices of output columns: the packer widens to int64, 8 bytes per weight at once
    qweight = torch.cat([pack_qweight(q[c:c + 512].t().to(torch.int32), bits)
                         for c in range(0, q.shape[0], 512)], dim=1)
    return {
        f"{prefix}.qweight": qweight,
        f"{prefix}.qzeros": pack_qzeros(zeros.to(torch.int32), bits, v1=True),
        f"{prefix}.scales": scales.to(torch.float16).contiguous(),
        f"{prefix}.g_idx": g_idx.to(torch.int32).contiguous(),
    }


def dynamic_excludes(skipped: list[str], layers: int) -> dict[str, dict]:
    """GPTQModel `dynamic` rules that keep `skipped` modules unquantized.

    A Linear name skipped in every layer becomes one rule on its suffix; others are named exactly.
    """
    return {(rf"-:.*\.{re.escape(name)}$" if is_suffix else f"-:^{re.escape(name)}$"): {}
            for name, is_suffix in by_layer_suffix(skipped, layers)}


def modules_in_block(skipped: list[str], groups: tuple[tuple[str, ...], ...]) -> list[list[str]] | None:
    """Transformers/optimum's `modules_in_block_to_quantize` (it ignores `dynamic`): the Linears of
    each block that are quantized, matched by name suffix, so it needs the same set in every layer."""
    if not skipped:
        return None
    suffixes = {LAYER_PREFIX.sub("", n) for n in skipped}
    kept = [[m for m in group if m not in suffixes] for group in groups]
    return [g for g in kept if g]


def declare_unquantized(skipped: list[str], layers: int, groups: tuple[tuple[str, ...], ...]
                        ) -> tuple[dict[str, dict] | None, list[list[str]] | None]:
    """`dynamic` and `modules_in_block_to_quantize` for the `skipped` Linears of a model with `layers`
    decoder layers whose Linears are `groups` (suffixes after `model.layers.N.`)."""
    in_block = modules_in_block(skipped, groups)
    if in_block is not None:
        kept = {m for g in in_block for m in g}
        every_layer = (f"model.layers.{i}.{m}" for i in range(layers) for g in groups for m in g if m not in kept)
        if any(n not in skipped for n in every_layer):
            raise CamelidError("unquantizable Linears differ between layers; Transformers cannot load that")
    return dynamic_excludes(skipped, layers) or None, in_block
