"""`quantize`: a Llama checkpoint in, a GPTQ (v1) checkpoint folder out, settings passed as values."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import torch

from camelid import __version__
from camelid.checkpoint import Checkpoint, atomic_output_dir, copy_side_files, open_checkpoint, write_json
from camelid.errors import CamelidError
from camelid.quant.assemble import assemble
from camelid.quant.calib import calibration_windows
from camelid.quant.format import modules_in_block, packable, quantize_config
from camelid.quant.layer import GROUPS, LINEARS, layer_prefix, llama_config
from camelid.quant.loop import quantize_layers
from camelid.quant.methods import method_for
from camelid.quant.progress import LAYERS, STATE, run_fingerprint
from camelid.quant.settings import CalibSpec, QuantParams, RunOptions
from camelid.runtime.tokenizer import load_tokenizer


def check_model(p: QuantParams, config: dict) -> None:
    """What the settings ask of this particular model (the settings check themselves)."""
    if config.get("model_type") != "llama":
        raise CamelidError(f"only Llama-architecture models are supported, got model_type {config.get('model_type')!r}")
    if p.lm_head and config.get("tie_word_embeddings", False):
        raise CamelidError("--lm-head needs an untied lm_head; this model ties it to the embeddings")


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise CamelidError("--device cuda: no CUDA device is available")
    if device not in ("cpu", "cuda"):
        raise CamelidError(f"--device must be auto, cpu or cuda, got {device!r}")
    return torch.device(device)


def compute_dtype(device: torch.device, name: str = "auto") -> torch.dtype:
    """dtype of the calibration forward passes. bf16 where matmul units support it (CUDA; CPUs with
    AMX/AVX512-BF16, ~10x the fp32 speed), as GPTQModel runs on CPU; fp32 otherwise."""
    if name != "auto":
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else torch.float32


def quantize(model: str | Path, out: str | Path, params: QuantParams, calib: CalibSpec = CalibSpec(),
             options: RunOptions = RunOptions(), calibration: torch.Tensor | None = None) -> Path:
    """Quantize a Llama checkpoint to a GPTQ (v1) checkpoint in `out`. Returns `out`.

    `calibration` ([n, seq_len] token ids) overrides `calib`'s dataset/nsamples/seq_len. Rerunning
    after an interruption resumes from the last finished layer.
    """
    if Path(out).exists() and not options.overwrite:  # before the (long) calibration, not after
        raise CamelidError(f"output {out} already exists (use --overwrite to replace it)")
    ckpt = open_checkpoint(model, options.revision)
    check_model(params, ckpt.config)
    dev = pick_device(options.device)
    dtype = compute_dtype(dev, options.compute)
    config = llama_config(ckpt.config)
    method = method_for(params)
    ids = None
    if method.needs_activations:
        if calibration is None:
            tok = load_tokenizer(ckpt.dir)
            calibration = calibration_windows(tok, calib.dataset, calib.dataset_path, calib.nsamples,
                                              calib.seq_len, calib.seed, calib.template)
        ids = calibration.to(torch.long)

    with atomic_output_dir(out, overwrite=options.overwrite, resume=True) as work:
        fingerprint = run_fingerprint(params, ids, ckpt, str(dtype))
        log, extra = quantize_layers(work, ckpt, config, method, ids, fingerprint, options, dev, dtype)
        write_checkpoint(work, ckpt, str(model), params, calib, ids, dtype, log, extra, options.max_shard_size)
    return Path(out)


def write_checkpoint(work: Path, ckpt: Checkpoint, model_name: str, p: QuantParams, calib: CalibSpec,
                     ids: torch.Tensor | None, dtype: torch.dtype, log: list[dict], extra: dict[str, torch.Tensor],
                     max_shard_size: str) -> None:
    """The finished run's folder: shards, side files, quantize_config.json, config.json, quant_log.csv."""
    n_layers = ckpt.config["num_hidden_layers"]
    skipped = [n for n in (f"{layer_prefix(i)}{m}" for i in range(n_layers) for m in LINEARS)
               if not packable(*_linear_dims(ckpt, n), p.bits, p.group_size)]
    meta = {
        "dataset": None if ids is None else (str(calib.dataset_path) if calib.dataset_path else calib.dataset),
        "seq_len": None if ids is None else ids.shape[1], "nsamples": None if ids is None else ids.shape[0],
        "seed": calib.seed, "template": calib.template, "compute_dtype": str(dtype).removeprefix("torch."),
        "damp_used": max([r["damp"] for r in log], default=p.damp),
        "damp_auto_increment": 0.01, "static_groups": p.static_groups, "true_sequential": p.true_sequential,
        "unquantized_modules": skipped,
    }
    in_block = modules_in_block(skipped, GROUPS)
    if in_block is not None and any(n not in skipped for n in
                                    (f"{layer_prefix(i)}{m}" for i in range(n_layers) for m in LINEARS
                                     if not any(m in g for g in in_block))):
        raise CamelidError("unquantizable Linears differ between layers; Transformers cannot load that")
    qcfg = quantize_config(p, model_name, skipped, n_layers, meta, in_block)
    st_meta = {"format": "pt", "quantizer": f"camelid:{__version__}", "gptq_bits": str(p.bits),
               "gptq_group_size": str(p.group_size), "gptq_desc_act": str(p.act_order),
               "gptq_damp_percent": str(p.damp)}
    assemble(work, ckpt, n_layers, extra, st_meta, max_shard_size)
    copy_side_files(ckpt.dir, work)
    write_json(work / "quantize_config.json", qcfg)
    cfg = {k: v for k, v in ckpt.config.items() if k != "torch_dtype"}
    cfg.update({"dtype": "float16", "torch_dtype": "float16", "quantization_config": qcfg})
    write_json(work / "config.json", cfg)
    with open(work / "quant_log.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ["layer", "module", "loss", "damp", "seconds"])
        w.writeheader()
        w.writerows(log)
    shutil.rmtree(work / LAYERS)
    shutil.rmtree(work / STATE)


def _linear_dims(ckpt: Checkpoint, name: str) -> tuple[int, int]:
    out_f, in_f = ckpt.tensors[name + ".weight"].shape
    return in_f, out_f
