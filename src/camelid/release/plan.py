"""Exact size of every branch from config.json alone: no weights are read, so a 70B plan runs anywhere.

The tensors and their order are those `camelid.quant` writes (embeddings, each layer's tensors in name
order as the per-layer files hand them back, final norm, head), shaped by the GPTQ format's rules
(`camelid.formats.gptq`: `packable`, `packed_shapes`, the config's weight-file metadata); shards and headers come from the checkpoint writer itself, so the
planned bytes are the written bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from camelid.checkpoint.writer import TensorSpec, file_size, parse_size, plan_shards, shard_names
from camelid.errors import CamelidError
from camelid.formats.gptq.config import GPTQConfig
from camelid.formats.gptq.layout import packable, packed_shapes
from camelid.quant.layer import LINEARS, layer_prefix
from camelid.quant.settings import QuantParams
from camelid.release.matrix import Row

FP16 = torch.float16


@dataclass(frozen=True)
class BranchPlan:
    row: Row
    files: dict[str, int]  # weight file name -> bytes
    unquantized: tuple[str, ...]  # Linears that stay fp16 (shapes the format cannot pack)
    quantized: int  # number of packed Linears

    @property
    def size_bytes(self) -> int:
        return sum(self.files.values())


def linear_dims(config: dict) -> dict[str, tuple[int, int]]:
    """(in_features, out_features) of each Linear of a Llama decoder layer."""
    try:
        hidden, inter = config["hidden_size"], config["intermediate_size"]
        heads = config["num_attention_heads"]
        kv = config.get("num_key_value_heads") or heads
    except KeyError as e:
        raise CamelidError(f"config.json lacks {e.args[0]}; cannot plan the release") from None
    head_dim = config.get("head_dim") or hidden // heads
    return {"self_attn.q_proj": (hidden, heads * head_dim), "self_attn.k_proj": (hidden, kv * head_dim),
            "self_attn.v_proj": (hidden, kv * head_dim), "self_attn.o_proj": (heads * head_dim, hidden),
            "mlp.gate_proj": (hidden, inter), "mlp.up_proj": (hidden, inter), "mlp.down_proj": (inter, hidden)}


def _packed(prefix: str, in_f: int, out_f: int, p: QuantParams) -> list[TensorSpec]:
    return [TensorSpec(f"{prefix}.{k}", dt, shape) for k, (dt, shape) in packed_shapes(in_f, out_f, p.bits,
                                                                                          p.group_size).items()]


def weight_specs(config: dict, p: QuantParams) -> tuple[list[TensorSpec], list[str]]:
    """Every tensor of the quantized checkpoint in file order, and the Linears left fp16."""
    dims = linear_dims(config)
    hidden, vocab = config["hidden_size"], config["vocab_size"]
    specs = [TensorSpec("model.embed_tokens.weight", FP16, (vocab, hidden))]
    skipped = []
    for i in range(config["num_hidden_layers"]):
        layer = [TensorSpec(f"{layer_prefix(i)}{n}.weight", FP16, (hidden,))
                 for n in ("input_layernorm", "post_attention_layernorm")]
        for name in LINEARS:
            in_f, out_f = dims[name]
            if packable(in_f, out_f, p.bits, p.group_size):
                layer += _packed(layer_prefix(i) + name, in_f, out_f, p)
            else:
                layer.append(TensorSpec(f"{layer_prefix(i)}{name}.weight", FP16, (out_f, in_f)))
                skipped.append(layer_prefix(i) + name)
        specs += sorted(layer, key=lambda s: s.name)  # safetensors lists a file's tensors by name
    specs.append(TensorSpec("model.norm.weight", FP16, (hidden,)))
    if p.lm_head:
        specs += _packed("lm_head", hidden, vocab, p)
    elif not config.get("tie_word_embeddings", False):
        specs.append(TensorSpec("lm_head.weight", FP16, (vocab, hidden)))
    return specs, skipped


def plan_branch(config: dict, row: Row, max_shard_size: str | int = "5GB") -> BranchPlan:
    specs, skipped = weight_specs(config, row.params)
    total = config["num_hidden_layers"] * len(LINEARS)
    if len(skipped) == total and row.params.method == "gptq":
        raise CamelidError(f"matrix row {row.branch!r}: group size {row.params.group_size} at "
                           f"{row.params.bits} bits packs none of the model's Linears")
    shards = plan_shards(specs, parse_size(max_shard_size))
    p = row.params  # the weight files' metadata, from the config block quantize writes
    meta = GPTQConfig(bits=p.bits, group_size=p.group_size, desc_act=p.act_order,
                      damp_percent=p.damp).safetensors_metadata()
    files = {name: file_size(shard, meta) for name, shard in zip(shard_names(len(shards)), shards, strict=True)}
    return BranchPlan(row, files, tuple(skipped), total - len(skipped))


def plan_release(config: dict, rows: list[Row], max_shard_size: str | int = "5GB") -> list[BranchPlan]:
    from camelid.quant.api import check_model

    plans = []
    for row in rows:
        try:
            check_model(row.params, config)
        except CamelidError as e:
            raise CamelidError(f"matrix row {row.branch!r}: {e}") from None
        plans.append(plan_branch(config, row, max_shard_size))
    return plans


def plan_json(plans: list[BranchPlan]) -> list[dict]:
    """One object per branch: name, settings and size in bytes (`camelid release --plan --json`)."""
    from dataclasses import asdict

    return [{"branch": pl.row.branch, **asdict(pl.row.params), **asdict(pl.row.calib),
             "seq_len_requested": pl.row.seq_len_requested, "description": pl.row.description,
             "size_bytes": pl.size_bytes, "files": pl.files, "quantized_linears": pl.quantized,
             "unquantized_linears": len(pl.unquantized)} for pl in plans]
