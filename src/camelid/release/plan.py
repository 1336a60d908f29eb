"""Exact size of every branch from config.json alone: no weights are read, so a 70B plan runs anywhere.

The tensors and their order are those `camelid.quant` writes (embeddings, each layer's tensors in name
order as the per-layer files hand them back, final norm, head), shaped by the GPTQ format's rules
(`camelid.formats.gptq`: `packable`, `packed_shapes`, the config's weight-file metadata); shards and headers come from the checkpoint writer itself, so the
planned bytes are the written bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace

import torch

from camelid.checkpoint.writer import TensorSpec, file_size, parse_size, plan_shards, shard_names
from camelid.errors import CamelidError
from camelid.formats.gptq.config import GPTQConfig
from camelid.formats.gptq.layout import packable, packed_shapes
from camelid.quant.layer import LINEARS, layer_prefix
from camelid.quant.settings import QuantParams
from camelid.release.matrix import Row

FP16 = torch.float16
# Packed tensors of one Linear (prefix, in, out), or None where the format leaves it fp16.
Packer = Callable[[str, int, int], "list[TensorSpec] | None"]


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


def gptq_packer(p: QuantParams) -> Packer:
    def pack(prefix: str, in_f: int, out_f: int) -> list[TensorSpec] | None:
        if not packable(in_f, out_f, p.bits, p.group_size):
            return None
        return [TensorSpec(f"{prefix}.{k}", dt, shape)
                for k, (dt, shape) in packed_shapes(in_f, out_f, p.bits, p.group_size).items()]
    return pack


def model_specs(config: dict, pack: Packer, lm_head: bool = False) -> tuple[list[TensorSpec], list[str]]:
    """Every tensor of a checkpoint camelid writes layer by layer (`camelid.quant.assemble`'s order:
    embeddings, each layer's tensors by name, final norm, head), and the Linears `pack` left fp16."""
    dims = linear_dims(config)
    hidden, vocab = config["hidden_size"], config["vocab_size"]
    specs = [TensorSpec("model.embed_tokens.weight", FP16, (vocab, hidden))]
    skipped = []
    for i in range(config["num_hidden_layers"]):
        layer = [TensorSpec(f"{layer_prefix(i)}{n}.weight", FP16, (hidden,))
                 for n in ("input_layernorm", "post_attention_layernorm")]
        for name in LINEARS:
            in_f, out_f = dims[name]
            packed = pack(layer_prefix(i) + name, in_f, out_f)
            if packed is None:
                layer.append(TensorSpec(f"{layer_prefix(i)}{name}.weight", FP16, (out_f, in_f)))
                skipped.append(layer_prefix(i) + name)
            else:
                layer += packed
        specs += sorted(layer, key=lambda s: s.name)  # safetensors lists a file's tensors by name
    specs.append(TensorSpec("model.norm.weight", FP16, (hidden,)))
    if lm_head:
        specs += pack("lm_head", hidden, vocab) or []
    elif not config.get("tie_word_embeddings", False):
        specs.append(TensorSpec("lm_head.weight", FP16, (vocab, hidden)))
    return specs, skipped


def weight_specs(config: dict, p: QuantParams) -> tuple[list[TensorSpec], list[str]]:
    """Every tensor of the GPTQ checkpoint in file order, and the Linears left fp16."""
    return model_specs(config, gptq_packer(p), p.lm_head)


def config_shapes(config: dict) -> SimpleNamespace:
    """The fp16 model's tensor shapes as config.json implies them, in the shape of a Checkpoint
    (`tensors[name].shape`, `config`, `dir`), so quantize's own checks run on a plan (no weights)."""
    specs, _ = model_specs(config, lambda *_: None)
    if config.get("tie_word_embeddings", False):  # quantize's lm_head check reads it even when tied
        specs.append(TensorSpec("lm_head.weight", FP16, (config["vocab_size"], config["hidden_size"])))
    return SimpleNamespace(tensors={s.name: s for s in specs}, config=config, dir="config.json")


def files_of(specs: list[TensorSpec], metadata: dict[str, str], max_shard_size: str | int) -> dict[str, int]:
    """{weight file: bytes} as the checkpoint writer shards and writes `specs`."""
    shards = plan_shards(specs, parse_size(max_shard_size))
    return {name: file_size(shard, metadata) for name, shard in zip(shard_names(len(shards)), shards, strict=True)}


def plan_branch(config: dict, row: Row, max_shard_size: str | int = "5GB") -> BranchPlan:
    from camelid.quant.checks import check_run

    p = row.params
    try:  # quantize's own rule for a setting that packs none of the Linears (lm_head included), one owner
        check_run(p, config_shapes(config), config["num_hidden_layers"], 0, 0, calibrated=False)
    except CamelidError as e:
        raise CamelidError(f"matrix row {row.branch!r}: {e}") from None
    specs, skipped = weight_specs(config, p)
    total = config["num_hidden_layers"] * len(LINEARS)
    # the weight files' metadata, from the config block quantize writes
    meta = GPTQConfig(bits=p.bits, group_size=p.group_size, desc_act=p.act_order,
                      damp_percent=p.damp).safetensors_metadata()
    return BranchPlan(row, files_of(specs, meta, max_shard_size), tuple(skipped), total - len(skipped))


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
