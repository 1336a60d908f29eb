"""One Llama decoder layer built from a config and loaded from disk, and its sublayer inputs.

The GPTQ layer loop needs, for each group of Linears that read the same input (true-sequential
order k,v,q -> o -> up,gate -> down), that input computed through the layer as it stands. Instead of
re-running the whole layer under hooks once per group (AutoGPTQ), each named `Stage` computes its input
from what the previous stage left behind, so attention and every Linear run about once per layer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

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


@dataclass(frozen=True)
class Stage:
    """One step of the walk through a layer: computes the input of `linears` (a group that shares it).

    `run(layer, h, left, pe, x2_in_h)` gets the layer input h and the value the previous stage `left`
    (named by that stage's `leaves`), and returns (the group's input, the value to leave for the next
    stage or None to keep it, a replacement for h or None). Each stage starts from what the previous
    one left, so later stages see the already-quantized Linears of earlier ones (true-sequential) and
    no norm or projection is computed twice.
    """

    name: str
    linears: tuple[str, ...]
    leaves: str  # what `left` holds once this stage ran
    run: Callable[..., tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]]
    # Linears the rest of the walk never runs again once this stage has (true-sequential): their
    # weights need not stay in RAM while the later, wider Hessians are factored
    done_with: tuple[str, ...] = ()
    reads_left: bool = True  # False for the first stage, which starts from h alone


def _attention_input(layer, h, left, pe, x2_in_h):
    x1 = layer.input_layernorm(h)
    return x1, x1, None


def _attention_output_input(layer, h, x1, pe, x2_in_h):
    ctx = _attention_context(layer, x1, pe)
    return ctx, ctx, None


def _mlp_input(layer, h, ctx, pe, x2_in_h):
    """Also returns x2 = ln2(h2) as h's replacement: the caller may keep it in place of h (the layer
    input is not needed again), which the next stage reads with `x2_in_h`."""
    h2 = h + layer.self_attn.o_proj(ctx)
    x2 = layer.post_attention_layernorm(h2)
    return x2, h2, x2


def _down_input(layer, h, h2, pe, x2_in_h):
    x2 = h if x2_in_h else layer.post_attention_layernorm(h2)
    return mlp_activation(layer, x2), None, None


STAGES: tuple[Stage, ...] = (
    Stage("attention input", GROUPS[0], leaves="x1 = ln1(h)", run=_attention_input,
          reads_left=False),
    Stage("attention context", GROUPS[1], leaves="attention context",
          run=_attention_output_input),
    Stage("mlp input", GROUPS[2], leaves="h2 (post-attention residual)",
          run=_mlp_input, done_with=(*GROUPS[0], *GROUPS[1])),
    Stage("mlp hidden", GROUPS[3], leaves="h2 (post-attention residual)", run=_down_input),
)


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
