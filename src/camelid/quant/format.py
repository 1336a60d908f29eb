"""The AutoGPTQ "gptq" (v1) checkpoint layout: packed tensors per Linear and the config blocks.

Per quantized Linear: qweight int32 [in*bits/32, out], qzeros int32 [groups, out*bits/32] (zero - 1),
scales fp16 [groups, out], g_idx int32 [in] (AutoGPTQ `qlinear_cuda.py`). Linears that cannot be packed stay
fp16 and are named in GPTQModel's `dynamic` block as negative ("-:") matches, which GPTQModel (and
Transformers through it) honour by leaving them plain nn.Linear.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

import torch

from camelid import __version__
from camelid.quant.gptq import QuantResult
from camelid.quant.pack import pack_qweight, pack_qzeros


@dataclass(frozen=True)
class QuantParams:
    bits: int = 4
    group_size: int = 128
    act_order: bool = False
    damp: float = 0.01
    sym: bool = True
    true_sequential: bool = True
    static_groups: bool = False
    mse: bool = False
    lm_head: bool = False
    method: str = "gptq"

    def as_dict(self) -> dict:
        return asdict(self)


def packable(in_features: int, out_features: int, bits: int, group_size: int) -> bool:
    """Whether a Linear fits the format: both dims pack into whole 32-value runs, groups divide `in`."""
    if in_features % 32 or out_features % 32:
        return False
    return group_size in (-1, 0) or in_features % group_size == 0


def packed_shapes(in_features: int, out_features: int, bits: int, group_size: int) -> dict[str, tuple]:
    """(dtype, shape) of each tensor `pack_linear` writes for one Linear, keyed by suffix."""
    groups = 1 if group_size in (-1, 0) else -(-in_features // group_size)
    return {
        "qweight": (torch.int32, (in_features // 32 * bits, out_features)),
        "qzeros": (torch.int32, (groups, out_features // 32 * bits)),
        "scales": (torch.float16, (groups, out_features)),
        "g_idx": (torch.int32, (in_features,)),
    }


def safetensors_metadata(params: QuantParams) -> dict[str, str]:
    """`__metadata__` of every weight shard (AutoGPTQ writes the same gptq_* keys)."""
    return {"format": "pt", "quantizer": f"camelid:{__version__}", "gptq_bits": str(params.bits),
            "gptq_group_size": str(params.group_size), "gptq_desc_act": str(params.act_order),
            "gptq_damp_percent": str(params.damp)}


def pack_linear(prefix: str, res: QuantResult, bits: int) -> dict[str, torch.Tensor]:
    """Tensors of one quantized Linear under `prefix` (e.g. 'model.layers.0.self_attn.q_proj')."""
    # packed in slices of output columns: the packer widens to int64, 8 bytes per weight at once
    qweight = torch.cat([pack_qweight(res.q[c:c + 512].t().to(torch.int32), bits)
                         for c in range(0, res.q.shape[0], 512)], dim=1)
    return {
        f"{prefix}.qweight": qweight,
        f"{prefix}.qzeros": pack_qzeros(res.zeros.to(torch.int32), bits, v1=True),
        f"{prefix}.scales": res.scales.to(torch.float16).contiguous(),
        f"{prefix}.g_idx": res.g_idx.to(torch.int32).contiguous(),
    }


def dynamic_excludes(skipped: list[str], layers: int) -> dict[str, dict]:
    """GPTQModel `dynamic` rules that keep `skipped` modules unquantized.

    A Linear name skipped in every layer becomes one rule on its suffix; others are named exactly.
    """
    rules: dict[str, dict] = {}
    by_suffix: dict[str, list[str]] = {}
    for name in skipped:
        m = re.match(r"model\.layers\.\d+\.(.+)$", name)
        if m:
            by_suffix.setdefault(m.group(1), []).append(name)
        else:
            rules[f"-:^{re.escape(name)}$"] = {}
    for suffix, names in by_suffix.items():
        if len(names) == layers:
            rules[rf"-:.*\.{re.escape(suffix)}$"] = {}
        else:
            rules.update({f"-:^{re.escape(n)}$": {} for n in names})
    return rules


def modules_in_block(skipped: list[str], groups: tuple[tuple[str, ...], ...]) -> list[list[str]] | None:
    """Transformers/optimum's `modules_in_block_to_quantize` (it ignores `dynamic`): the Linears of
    each block that are quantized, matched by name suffix, so it needs the same set in every layer."""
    if not skipped:
        return None
    suffixes = {re.sub(r"^model\.layers\.\d+\.", "", n) for n in skipped}
    kept = [[m for m in group if m not in suffixes] for group in groups]
    return [g for g in kept if g]


def quantize_config(params: QuantParams, model_name: str, skipped: list[str], layers: int,
                    meta: dict, in_block: list[list[str]] | None = None) -> dict:
    """Every field written explicitly: loaders disagree on defaults (AutoGPTQ
    `BaseQuantizeConfig` defaults desc_act=True and group_size=-1; GPTQModel and Transformers differ)."""
    cfg = {
        "bits": params.bits,
        "group_size": params.group_size,
        "desc_act": params.act_order,
        "sym": params.sym,
        "damp_percent": params.damp,
        "true_sequential": params.true_sequential,
        "static_groups": params.static_groups,
        "lm_head": params.lm_head,
        "model_name_or_path": model_name,
        "model_file_base_name": "model",
        "quant_method": "gptq",
        "checkpoint_format": "gptq",
        "format": "gptq",
        "pack_dtype": "int32",
        "dynamic": dynamic_excludes(skipped, layers) or None,
        "modules_in_block_to_quantize": in_block,
        "meta": {"quantizer": [f"camelid:{__version__}"], "method": params.method, "mse": params.mse, **meta},
    }
    return cfg
