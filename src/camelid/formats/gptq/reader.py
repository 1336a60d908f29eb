"""Reference reader: a GPTQ checkpoint as a dense fp32 state dict (the math a loader must match).

Used to check checkpoints (ours and other tools') against plain fp32 models; not a fast runtime path.
"""

from __future__ import annotations

import os

import torch

from camelid.checkpoint.source import open_checkpoint
from camelid.errors import CheckpointError
from camelid.formats.gptq.config import read_config
from camelid.formats.gptq.pack import dequantize


def dequantized_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    ckpt = open_checkpoint(path)
    qcfg = read_config(ckpt.dir)
    if qcfg is None:
        raise CheckpointError(f"{ckpt.dir}: not a GPTQ checkpoint (no quantization config)")
    state = {}
    for name in ckpt.tensors:
        if name.endswith(".qweight"):
            p = name[: -len(".qweight")]
            state[p + ".weight"] = dequantize(ckpt.read(p + ".qweight"), ckpt.read(p + ".qzeros"),
                                              ckpt.read(p + ".scales"), ckpt.read(p + ".g_idx"), qcfg.bits,
                                              qcfg.v1).t()
        elif not name.endswith((".qzeros", ".scales", ".g_idx")):
            state[name] = ckpt.read(name).float()
    return state


def dense_model(path: str | os.PathLike):
    """A plain transformers LlamaForCausalLM (fp32) holding the dequantized weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = dict(open_checkpoint(path).config)
    cfg.pop("quantization_config", None)
    config = LlamaConfig(**cfg)
    model = LlamaForCausalLM(config).float()
    state = dequantized_state_dict(path)
    if config.tie_word_embeddings:
        state.setdefault("lm_head.weight", state["model.embed_tokens.weight"])
    model.load_state_dict(state, strict=True)
    return model.eval()
