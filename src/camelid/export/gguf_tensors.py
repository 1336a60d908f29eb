"""HF Llama tensors -> GGUF tensors: names, the Q/K row permutation, the type of each, encoded in row chunks.

Facts from llama.cpp's converter (`convert_hf_to_gguf.py`, `LlamaModel.modify_tensors` and
`prepare_tensors`) and gguf-py's `tensor_mapping.py` for MODEL_ARCH.LLAMA:
- names: `model.embed_tokens` -> `token_embd`, `model.layers.N.self_attn.q_proj` -> `blk.N.attn_q`, ...,
  `lm_head` -> `output`; `rotary_emb.inv_freq` is dropped;
- q_proj and k_proj rows are permuted from HF's rotate-half RoPE layout (the two halves of each head) to
  GGML's interleaved pairs: `W.reshape(n_head, 2, head_dim // 2, ...).swapaxes(1, 2)`, with the KV head
  count for k_proj;
- 1-D tensors (norms, biases) are F32; a matrix whose rows do not split into whole quantization blocks
  falls back to F16 (the converter's `QuantError` path).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import gguf
import numpy as np

from camelid.checkpoint import Checkpoint, row_slices
from camelid.errors import CheckpointError

Q = gguf.GGMLQuantizationType
_GLOBAL = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}
_LAYER = {
    "input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
}
_DROPPED = ("rotary_emb.inv_freq",)
CHUNK_ELEMS = 1 << 20  # values read and encoded at a time (camelid.checkpoint.row_slices' default)


@dataclass(frozen=True)
class GGUFTensor:
    source: str  # HF tensor name in the checkpoint
    name: str  # GGUF tensor name
    shape: tuple[int, ...]  # logical shape, HF (row-major) order; the writer reverses it into ggml order
    qtype: gguf.GGMLQuantizationType
    heads: int | None = None  # rows permuted per head (q_proj, k_proj), else None

    @property
    def nbytes(self) -> int:
        block, size = gguf.GGML_QUANT_SIZES[self.qtype]
        return math.prod(self.shape) // block * size


def gguf_name(hf_name: str) -> str | None:
    """The GGUF name of an HF Llama tensor, None for tensors llama.cpp does not use."""
    if hf_name.endswith(_DROPPED):
        return None
    stem, dot, suffix = hf_name.rpartition(".")
    if suffix not in ("weight", "bias"):
        raise CheckpointError(f"tensor {hf_name}: not a weight or bias of a Llama model")
    if stem in _GLOBAL:
        return f"{_GLOBAL[stem]}.{suffix}"
    layer, _, module = stem.removeprefix("model.layers.").partition(".")
    if stem.startswith("model.layers.") and layer.isdigit() and module in _LAYER:
        return f"blk.{layer}.{_LAYER[module]}.{suffix}"
    raise CheckpointError(f"tensor {hf_name} has no GGUF name for the llama architecture")


def tensor_type(shape: tuple[int, ...], want: gguf.GGMLQuantizationType) -> gguf.GGMLQuantizationType:
    """F32 for 1-D tensors, `want` for matrices whose rows split into whole blocks, else F16."""
    if len(shape) < 2:
        return Q.F32
    if shape[-1] % gguf.GGML_QUANT_SIZES[want][0]:
        return Q.F16
    return want


def plan_tensors(ckpt: Checkpoint, want: gguf.GGMLQuantizationType) -> list[GGUFTensor]:
    """Every tensor of the GGUF file in checkpoint order, with its name, type and permutation."""
    cfg = ckpt.config
    heads = {"self_attn.q_proj.weight": cfg["num_attention_heads"], "self_attn.q_proj.bias": cfg["num_attention_heads"],
             "self_attn.k_proj.weight": cfg.get("num_key_value_heads", cfg["num_attention_heads"]),
             "self_attn.k_proj.bias": cfg.get("num_key_value_heads", cfg["num_attention_heads"])}
    tied = cfg.get("tie_word_embeddings", False)
    plan = []
    for src, info in ckpt.tensors.items():
        name = gguf_name(src)
        if name is None or (tied and name.startswith("output.")):  # tied head: llama.cpp reuses token_embd
            continue
        if not info.is_float:
            raise CheckpointError(f"tensor {src} is {info.code}; GGUF export reads floating-point models "
                                  "(export the fp16 model, not a quantized one)")
        n_head = next((n for suffix, n in heads.items() if src.endswith(suffix)), None)
        if n_head is not None and info.shape[0] % (2 * n_head):
            raise CheckpointError(f"tensor {src}: {info.shape[0]} rows do not split into {n_head} heads of RoPE pairs")
        plan.append(GGUFTensor(src, name, info.shape, tensor_type(info.shape, want), n_head))
    return plan


def permute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF rotate-half row order -> GGML interleaved RoPE pairs, per head (llama.cpp `LlamaModel.permute`)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """The inverse of `permute_rows` (GGML order back to HF order)."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def encode(x: np.ndarray, qtype: gguf.GGMLQuantizationType) -> np.ndarray:
    """float32 rows -> the bytes (or f16/f32 values) of those rows in `qtype`."""
    if qtype == Q.F32:
        return x.astype(np.float32, copy=False)
    if qtype == Q.F16:
        return x.astype(np.float16)
    return gguf.quants.quantize(x, qtype)


def _chunks(t: GGUFTensor) -> list[slice | None]:
    if t.heads is None:
        return row_slices(t.shape, CHUNK_ELEMS)
    # The permutation only moves rows within a head, so chunks of whole heads can be permuted on their own.
    head_rows = t.shape[0] // t.heads
    per = head_rows * max(1, CHUNK_ELEMS // (math.prod(t.shape[1:]) * head_rows))
    return [slice(r, min(r + per, t.shape[0])) for r in range(0, t.shape[0], per)]


def encoded_chunks(ckpt: Checkpoint, t: GGUFTensor) -> Iterator[np.ndarray]:
    """The GGUF data of `t`, read, permuted and encoded about 1M values at a time (bounded memory)."""
    head_rows = t.shape[0] // t.heads if t.heads else None
    for rows in _chunks(t):
        x = ckpt.read_float32(t.source, rows)
        if head_rows is not None:
            x = permute_rows(x, x.shape[0] // head_rows)
        yield encode(x, t.qtype)
