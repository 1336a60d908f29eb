"""Reference reader: a GPTQ checkpoint as a dense fp32 state dict (the math a loader must match).

Used to check checkpoints (ours and other tools') against plain fp32 models; not a fast runtime path.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from camelid.checkpoint import open_checkpoint
from camelid.quant.pack import dequantize


def dequantized_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    ckpt = open_checkpoint(path)
    qcfg = ckpt.config.get("quantization_config") or json.loads((Path(path) / "quantize_config.json").read_text())
    bits = qcfg["bits"]
    v1 = qcfg.get("checkpoint_format", qcfg.get("format", "gptq")) != "gptq_v2"
    state = {}
    for name in ckpt.tensors:
        if name.endswith(".qweight"):
            p = name[: -len(".qweight")]
            state[p + ".weight"] = dequantize(ckpt.read(p + ".qweight"), ckpt.read(p + ".qzeros"),
                                              ckpt.read(p + ".scales"), ckpt.read(p + ".g_idx"), bits, v1).t()
        elif not name.endswith((".qzeros", ".scales", ".g_idx")):
            state[name] = ckpt.read(name).float()
    return state


def dense_model(path: str | Path):
    """A plain transformers LlamaForCausalLM (fp32) holding the dequantized weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = json.loads((Path(path) / "config.json").read_text())
    cfg.pop("quantization_config", None)
    config = LlamaConfig(**cfg)
    model = LlamaForCausalLM(config).float()
    state = dequantized_state_dict(path)
    if config.tie_word_embeddings:
        state.setdefault("lm_head.weight", state["model.embed_tokens.weight"])
    model.load_state_dict(state, strict=True)
    return model.eval()
