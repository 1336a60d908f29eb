"""One Llama decoder layer built from a config and loaded from disk, and its sublayer inputs.

The GPTQ layer loop needs, for each group of Linears that read the same input (true-sequential
order k,v,q -> o -> up,gate -> down), that input computed through the layer as it stands. Instead of
re-running the whole layer under hooks once per group (AutoGPTQ), each stage computes its input from
what the previous stage left behind, so attention and every Linear run about once per layer.
"""

from __future__ import annotations

import torch
from torch import nn

from camelid.checkpoint import Checkpoint

# Linears of a Llama decoder layer, in true-sequential groups (members of a group share one input).
GROUPS: tuple[tuple[str, ...], ...] = (
    ("self_attn.k_proj", "self_attn.v_proj", "self_attn.q_proj"),
    ("self_attn.o_proj",),
    ("mlp.up_proj", "mlp.gate_proj"),
    ("mlp.down_proj",),
)
LINEARS: tuple[str, ...] = tuple(name for group in GROUPS for name in group)


def llama_config(config: dict):
    from transformers import LlamaConfig

    cfg = LlamaConfig(**{k: v for k, v in config.items() if k != "quantization_config"})
    cfg._attn_implementation = "sdpa"
    return cfg


def layer_prefix(i: int) -> str:
    return f"model.layers.{i}."


def load_layer(ckpt: Checkpoint, config, i: int, device: torch.device | str = "cpu",
               dtype: torch.dtype = torch.float32) -> nn.Module:
    """Decoder layer i in `dtype`, weights read from the checkpoint (no random init, no other layer)."""
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    with torch.device("meta"):
        layer = LlamaDecoderLayer(config, layer_idx=i)
    prefix = layer_prefix(i)
    names = [n for n, _ in layer.named_parameters()]
    missing = [n for n in names if prefix + n not in ckpt]
    if missing:
        from camelid.errors import CheckpointError

        raise CheckpointError(f"{ckpt.dir}: layer {i} lacks {', '.join(prefix + n for n in missing)}")
    state = {n: ckpt.read(prefix + n).to(device, dtype) for n in names}
    layer.load_state_dict(state, assign=True)
    return layer.eval()


def rotary(config, seq_len: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin) for positions 0..seq_len-1, shared by every layer."""
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    rope = LlamaRotaryEmbedding(config).to(device)
    pos = torch.arange(seq_len, device=device)[None]
    return rope(torch.zeros(1, dtype=torch.float32, device=device), pos)


def _attention_context(layer: nn.Module, x: torch.Tensor, pe) -> torch.Tensor:
    """The input of o_proj (attention output before the projection), captured by a pre-hook."""
    seen: list[torch.Tensor] = []

    def grab(_mod, args):
        seen.append(args[0])
        raise _Stop

    handle = layer.self_attn.o_proj.register_forward_pre_hook(grab)
    try:
        layer.self_attn(hidden_states=x, position_embeddings=pe, attention_mask=None)
    except _Stop:
        pass
    finally:
        handle.remove()
    return seen[0]


class _Stop(Exception):
    pass


def stage_input(layer: nn.Module, stage: int, h: torch.Tensor, carry: torch.Tensor | None, pe,
                x2_in_h: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Input of GROUPS[stage]; returns (input, carry for the next stage, replacement for h or None).

    Each stage starts from what the previous one left in `carry` (x1 = ln1(h), then the attention
    context, then the post-attention residual h2), so later stages see the already-quantized Linears
    of earlier ones (true-sequential) and no norm or projection is computed twice. Stage 2 also
    returns x2 = ln2(h2), which the caller may keep in place of h (`x2_in_h` for stage 3).
    """
    if stage == 0:
        x1 = layer.input_layernorm(h)
        return x1, x1, None
    if stage == 1:
        ctx = _attention_context(layer, carry, pe)
        return ctx, ctx, None
    if stage == 2:
        h2 = h + layer.self_attn.o_proj(carry)
        x2 = layer.post_attention_layernorm(h2)
        return x2, h2, x2
    x2 = h if x2_in_h else layer.post_attention_layernorm(carry)
    return mlp_activation(layer, x2), carry, None


def mlp_activation(layer: nn.Module, x2: torch.Tensor) -> torch.Tensor:
    """Input of down_proj: act(gate(x2)) * up(x2)."""
    mlp = layer.mlp
    return mlp.act_fn(mlp.gate_proj(x2)) * mlp.up_proj(x2)


def layer_output(layer: nn.Module, h: torch.Tensor, pe, h2: torch.Tensor | None = None) -> torch.Tensor:
    """Output of the layer for input h; with h2 (the post-attention residual, already computed) and
    h holding x2 = ln2(h2), only the MLP runs."""
    if h2 is None:
        return layer(h, attention_mask=None, position_embeddings=pe)
    return h2 + layer.mlp.down_proj(mlp_activation(layer, h))
