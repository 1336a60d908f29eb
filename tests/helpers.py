"""Test helpers: a reference GPTQ writer (RTN, the AutoGPTQ tensor layout) for tiny layers and models."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from camelid.formats.gptq.pack import pack_qweight, pack_qzeros

STORIES = Path(__file__).resolve().parents[1] / "examples" / "stories260K"

# make_tiny_llama's defaults: smallest useful shapes for checkpoint/diff tests (not GPTQ-packable).
TINY = dict(vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=False)


def random_gptq_layer(n_in: int, n_out: int, bits: int, group_size: int, act_order: bool, sym: bool, v1: bool,
                      seed: int = 0) -> dict[str, torch.Tensor]:
    """Random codes/scales/zeros in GPTQ layout. Act order gives a non-monotonic g_idx as GPTQ's
    `(position_in_perm // group_size)[invperm]`."""
    g = torch.Generator().manual_seed(seed)
    maxq = 2**bits - 1
    gs = n_in if group_size == -1 else group_size
    n_groups = -(-n_in // gs)
    q = torch.randint(0, maxq + 1, (n_in, n_out), generator=g, dtype=torch.int32)
    scales = (torch.rand(n_groups, n_out, generator=g) * 0.02 + 0.005).to(torch.float16)
    if sym:
        zeros = torch.full((n_groups, n_out), (maxq + 1) // 2, dtype=torch.int32)
    else:  # v1 cannot store a zero of 0
        zeros = torch.randint(1 if v1 else 0, maxq + 1, (n_groups, n_out), generator=g, dtype=torch.int32)
    g_idx = torch.arange(n_in, dtype=torch.int32) // gs
    if act_order:
        perm = torch.randperm(n_in, generator=g)
        g_idx = (torch.arange(n_in) // gs)[torch.argsort(perm)].to(torch.int32)
    return {"qweight": pack_qweight(q, bits), "qzeros": pack_qzeros(zeros, bits, v1=v1), "scales": scales, "g_idx": g_idx}


def rtn_gptq_layer(weight: torch.Tensor, bits: int, group_size: int, sym: bool = True, v1: bool = True,
                   act_order_seed: int | None = None) -> dict[str, torch.Tensor]:
    """Round-to-nearest GPTQ tensors for a Linear weight [out, in] with AutoGPTQ's quantizer grid
    (AutoGPTQ `auto_gptq/quantization/quantizer.py`). With `act_order_seed`, groups follow a random column permutation."""
    w = weight.t().to(torch.float32)  # [in, out]
    n_in = w.shape[0]
    gs = n_in if group_size == -1 else group_size
    maxq = 2**bits - 1
    g_idx = torch.arange(n_in) // gs
    if act_order_seed is not None:
        perm = torch.randperm(n_in, generator=torch.Generator().manual_seed(act_order_seed))
        g_idx = g_idx[torch.argsort(perm)]
    n_groups = int(g_idx.max()) + 1
    scales, zeros = torch.empty(n_groups, w.shape[1]), torch.empty(n_groups, w.shape[1], dtype=torch.int32)
    for k in range(n_groups):
        rows = w[g_idx == k]
        xmin, xmax = rows.min(0).values.clamp(max=0), rows.max(0).values.clamp(min=0)
        if sym:
            xmax = torch.maximum(xmin.abs(), xmax)
            xmin = -xmax
        both0 = (xmin == 0) & (xmax == 0)
        xmin, xmax = torch.where(both0, -1.0, xmin), torch.where(both0, 1.0, xmax)
        s = (xmax - xmin) / maxq
        z = torch.full_like(s, (maxq + 1) // 2) if sym else torch.round(-xmin / s)
        if v1:
            z = z.clamp(min=1)  # v1 stores zero - 1
        scales[k], zeros[k] = s, z.to(torch.int32)
    scales = scales.to(torch.float16)
    s_rows, z_rows = scales.float()[g_idx], zeros[g_idx].float()
    q = torch.clamp(torch.round(w / s_rows) + z_rows, 0, maxq).to(torch.int32)
    return {"qweight": pack_qweight(q, bits), "qzeros": pack_qzeros(zeros, bits, v1=v1), "scales": scales,
            "g_idx": g_idx.to(torch.int32)}


def tiny_llama_config(**overrides) -> dict:
    cfg = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
        "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "vocab_size": 512, "max_position_embeddings": 256, "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0, "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2,
        "torch_dtype": "float16",
    }
    cfg.update(overrides)
    return cfg


LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def write_tiny_gptq_llama(out: Path, bits: int = 4, group_size: int = 32, sym: bool = True, v1: bool = True,
                          act_order: bool = False, skip: tuple[str, ...] = (), seed: int = 0,
                          config_overrides: dict | None = None) -> dict[str, torch.Tensor]:
    """A random tiny Llama as a GPTQ checkpoint (RTN). Returns the dense reference state dict, in which
    every quantized weight is replaced by its dequantized value, so a plain model loaded from it is the
    exact reference. The tokenizer is stories260K's (same 512-token vocabulary). Linears whose name contains a `skip` entry stay fp16."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from camelid.formats.gptq.pack import dequantize

    cfg = tiny_llama_config(**(config_overrides or {}))
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**cfg)).to(torch.float16)
    dense, tensors = {}, {}
    for name, t in model.state_dict().items():
        if name == "lm_head.weight" and cfg["tie_word_embeddings"]:
            continue
        prefix = name.removesuffix(".weight")
        if name.endswith(".weight") and prefix.split("layers.")[-1].split(".", 1)[-1] in LINEARS \
                and not any(s in name for s in skip):
            lay = rtn_gptq_layer(t, bits, group_size, sym=sym, v1=v1,
                                 act_order_seed=(seed + len(tensors)) if act_order else None)
            tensors.update({f"{prefix}.{k}": v for k, v in lay.items()})
            dense[name] = dequantize(lay["qweight"], lay["qzeros"], lay["scales"], lay["g_idx"], bits, v1=v1).t()
        else:
            tensors[name] = t.contiguous()
            dense[name] = t.float()
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    qcfg = {"bits": bits, "group_size": group_size, "desc_act": act_order, "sym": sym, "quant_method": "gptq",
            "checkpoint_format": "gptq" if v1 else "gptq_v2", "damp_percent": 0.01, "static_groups": False,
            "true_sequential": True}
    cfg["quantization_config"] = qcfg
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    (out / "quantize_config.json").write_text(json.dumps(qcfg, indent=2))
    for name in ("tokenizer.model", "tokenizer_config.json"):  # stories260K's 512-token vocab fits
        (out / name).write_bytes((STORIES / name).read_bytes())
    return dense


def write_tiny_llama(out: Path, seed: int = 0, **overrides) -> Path:
    """A random tiny fp16 Llama in Hugging Face format (dims GPTQ can pack), with stories260K's tokenizer."""
    return make_tiny_llama(out, seed=seed, dtype=torch.float16, tokenizer=True, **{**tiny_llama_config(), **overrides})


def make_tiny_llama(path: str | Path, *, seed: int = 0, dtype: torch.dtype = torch.float32,
                    max_shard_size: str | int | None = None, bin_format: bool = False,
                    tokenizer: bool = False, **overrides) -> Path:
    """Write a randomly initialised LlamaForCausalLM folder (config + weights) and return its path.

    overrides: any LlamaConfig field (vocab_size, hidden_size, tie_word_embeddings, ...).
    max_shard_size: shard the safetensors (e.g. "20KB"); bin_format: write pytorch_model.bin instead.
    tokenizer: copy the stories260K SentencePiece tokenizer (vocab 512) into the folder.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    config = LlamaConfig(**{**TINY, **overrides})
    model = LlamaForCausalLM(config).to(dtype).eval()
    if bin_format:
        model.config.save_pretrained(path)
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        if config.tie_word_embeddings:
            state.pop("lm_head.weight", None)
        torch.save(state, path / "pytorch_model.bin")
    else:
        kwargs = {"max_shard_size": max_shard_size} if max_shard_size is not None else {}
        model.save_pretrained(path, **kwargs)
    if tokenizer:
        for name in ("tokenizer.model", "tokenizer_config.json"):
            shutil.copyfile(STORIES / name, path / name)
    return path


def quantize_with_gptqmodel(base: Path, out: Path, bits: int = 4, group_size: int = 32, desc_act: bool = True,
                            sym: bool = False, samples: int = 4) -> Path:
    """GPTQ-quantize `base` with GPTQModel itself (random-token calibration: the format is what is tested)."""
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")
    from gptqmodel import GPTQModel, QuantizeConfig

    model = GPTQModel.load(str(base), QuantizeConfig(bits=bits, group_size=group_size, desc_act=desc_act, sym=sym,
                                                     offload_to_disk=False))
    g = torch.Generator().manual_seed(0)
    calib = [{"input_ids": torch.randint(3, 512, (32,), generator=g).tolist(), "attention_mask": [1] * 32}
             for _ in range(samples)]
    cwd = os.getcwd()
    os.chdir(out.parent)  # GPTQModel writes a logs/ folder into the working directory
    try:
        model.quantize(calib, batch_size=1)
        model.save(str(out))
    finally:
        os.chdir(cwd)
    return out


def crash_after_layer(layer: int):
    """A `quant.loop.save_progress` that saves, then interrupts the run (Ctrl-C) after `layer`."""
    from camelid.quant import loop

    real_save = loop.save_progress

    def save_then_crash(work, progress, hidden, done):
        real_save(work, progress, hidden, done)
        if done == layer:
            raise KeyboardInterrupt

    return save_then_crash
