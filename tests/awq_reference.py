"""An AWQ checkpoint writer written from AutoAWQ's code, independent of camelid.formats.awq: its
`pseudo_quantize_tensor` grid (`awq/quantize/quantizer.py`, zero_point=True) and
`WQLinear_GEMM.from_linear`'s per-column packing loop (`awq/modules/linear/gemm.py`), for tiny models
in the tests. What other tools' checkpoints look like, so camelid's reader is tested against them."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from helpers import LINEARS, STORIES, tiny_llama_config
from safetensors.torch import save_file

ORDER_MAP = [0, 2, 4, 6, 1, 3, 5, 7]  # from_linear's order_map


def pseudo_quantize(w: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """AutoAWQ's asymmetric 4-bit grid per group of inputs: codes [out, in], scales and zeros [out, groups]."""
    out_f, in_f = w.shape
    g = w.float().reshape(-1, group_size)
    max_val, min_val = g.amax(dim=1, keepdim=True), g.amin(dim=1, keepdim=True)
    scales = ((max_val - min_val).clamp(min=1e-5) / 15).half().float()  # stored fp16
    zeros = (-torch.round(min_val / scales)).clamp(0, 15)
    q = torch.clamp(torch.round(g / scales) + zeros, 0, 15)
    return (q.reshape(out_f, in_f).to(torch.int32), scales.reshape(out_f, -1),
            zeros.reshape(out_f, -1).to(torch.int32))


def pack_like_from_linear(intweight: torch.Tensor) -> torch.Tensor:
    """[rows, cols] -> int32 [rows, cols // 8], one column and one nibble at a time as from_linear."""
    rows, cols = intweight.shape
    packed = torch.zeros(rows, cols // 8, dtype=torch.int64)
    for col in range(cols // 8):
        for i in range(8):
            packed[:, col] |= intweight[:, col * 8 + ORDER_MAP[i]].to(torch.int64) << (i * 4)
    return torch.where(packed >= 2**31, packed - 2**32, packed).to(torch.int32)


def awq_layer(weight: torch.Tensor, group_size: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """(qweight, qzeros, scales) of one Linear and its dequantized weight [out, in]."""
    q, scales, zeros = pseudo_quantize(weight, group_size)
    g = torch.arange(weight.shape[1]) // group_size
    dense = (q - zeros[:, g]).float() * scales[:, g]
    tensors = {"qweight": pack_like_from_linear(q.t().contiguous()),
               "qzeros": pack_like_from_linear(zeros.t().contiguous()),
               "scales": scales.t().contiguous().half()}
    return tensors, dense


def write_tiny_awq_llama(out: Path, group_size: int = 32, skip: tuple[str, ...] = (), seed: int = 0,
                         config_file: str = "config.json") -> dict[str, torch.Tensor]:
    """A random tiny Llama as an AutoAWQ GEMM checkpoint. Returns the dense reference state dict.
    `config_file` "quant_config.json" writes the block as AutoAWQ 0.1.x did (internal names, no quant_method)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = tiny_llama_config()
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**cfg)).to(torch.float16)
    dense, tensors = {}, {}
    for name, t in model.state_dict().items():
        prefix = name.removesuffix(".weight")
        if prefix.split("layers.")[-1].split(".", 1)[-1] in LINEARS and not any(s in name for s in skip):
            layer, dense[name] = awq_layer(t, group_size)
            tensors.update({f"{prefix}.{k}": v for k, v in layer.items()})
        else:
            tensors[name] = t.contiguous()
            dense[name] = t.float()
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    if config_file == "config.json":  # as AutoAWQ >= 0.2 (`to_transformers_dict`)
        cfg["quantization_config"] = {"quant_method": "awq", "zero_point": True, "group_size": group_size, "bits": 4,
                                      "version": "gemm", "modules_to_not_convert": list(skip) or None}
    else:
        (out / config_file).write_text(json.dumps({"zero_point": True, "q_group_size": group_size, "w_bit": 4,
                                                   "version": "GEMM"}))
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    for name in ("tokenizer.model", "tokenizer_config.json"):
        (out / name).write_bytes((STORIES / name).read_bytes())
    return dense
