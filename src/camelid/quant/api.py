"""`quantize`: a Llama checkpoint in, a quantized checkpoint folder out (GPTQ v1 for GPTQ and RTN, AutoAWQ
GEMM for AWQ), settings passed as values."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import torch

from camelid.checkpoint.output import (
    atomic_output_dir,
    check_output,
    copy_side_files,
    sha256_file,
    write_manifest,
)
from camelid.checkpoint.source import Checkpoint, open_checkpoint
from camelid.device import compute_dtype, resolve_device
from camelid.dtypes import dtype_name
from camelid.errors import CamelidError
from camelid.formats import awq as awq_format
from camelid.formats.gptq.config import QUANTIZER, GPTQConfig, write_config
from camelid.formats.gptq.layout import declare_unquantized
from camelid.quant.assemble import assemble
from camelid.quant.calib import calibration_windows
from camelid.quant.checks import FiniteWeights, check_run, default_seq_len, linear_dims
from camelid.quant.layer import GROUPS, LINEARS, layer_prefix, llama_config
from camelid.quant.loop import quantize_layers
from camelid.quant.methods import QuantMethod, method_for
from camelid.quant.progress import LAYERS, STATE, run_fingerprint
from camelid.quant.settings import CalibSpec, QuantParams, RunOptions
from camelid.tokenizer import load_tokenizer


def check_model(p: QuantParams, config: dict) -> None:
    """What the settings ask of this particular model (the settings check themselves)."""
    if config.get("model_type") != "llama":
        raise CamelidError(f"only Llama-architecture models are supported, got model_type {config.get('model_type')!r}")
    if p.lm_head and config.get("tie_word_embeddings", False):
        raise CamelidError("--lm-head needs an untied lm_head; this model ties it to the embeddings")


def quantize(model: str | Path, out: str | Path, params: QuantParams, calib: CalibSpec = CalibSpec(),
             options: RunOptions = RunOptions(), calibration: torch.Tensor | None = None) -> Path:
    """Quantize a Llama checkpoint with `params.method` into `out`: a GPTQ (v1) checkpoint for gptq and
    rtn, an AutoAWQ GEMM checkpoint for awq. Returns `out`.

    `calibration` ([n, seq_len] token ids) overrides `calib`'s dataset/nsamples/seq_len. Rerunning
    after an interruption resumes from the last finished layer.
    """
    return quantize_with(model, out, method_for(params), calib, options, calibration)


def quantize_with(model: str | Path, out: str | Path, method: QuantMethod, calib: CalibSpec = CalibSpec(),
                  options: RunOptions = RunOptions(), calibration: torch.Tensor | None = None) -> Path:
    """`quantize` with a method built by the caller (e.g. `methods.AWQ` with other search settings)."""
    params = method.params
    ckpt = open_checkpoint(model, options.revision)
    check_output(out, options.overwrite, [ckpt.dir])  # before the (long) calibration, not after
    check_model(params, ckpt.config)
    dev = resolve_device(options.device)
    dtype = compute_dtype(dev, options.compute)
    config = llama_config(ckpt.config)
    nsamples, seq_len = calibration.shape if calibration is not None else (calib.nsamples, calib.seq_len)
    seq_len = default_seq_len(ckpt) if seq_len is None else seq_len
    check_run(params, ckpt, config.num_hidden_layers, seq_len, nsamples, method.needs_activations, method.packable)
    ckpt = FiniteWeights(ckpt)

    # OUT.partial is locked before calibration: a second run into the same OUT refuses at once.
    with atomic_output_dir(out, overwrite=options.overwrite, resume=True, inputs=[ckpt.dir]) as work:
        ids = None
        if method.needs_activations:
            if calibration is None:
                tok = load_tokenizer(ckpt.dir)
                calibration = calibration_windows(tok, calib.dataset, calib.dataset_path, nsamples,
                                                  seq_len, calib.seed, calib.template)
            ids = calibration.to(torch.long)
        fingerprint = run_fingerprint(params, ids, ckpt, str(dtype) + method.key)
        log, extra = quantize_layers(work, ckpt, config, method, ids, fingerprint, options, dev, dtype)
        if params.method == "awq":
            write_awq_checkpoint(work, ckpt, method, log, options.max_shard_size)
        else:
            write_checkpoint(work, ckpt, str(model), method, calib, ids, dtype, log, extra, options.max_shard_size)
        write_manifest(work)  # also what lets a later --overwrite recognise this folder as camelid's
    return Path(out)


def unquantized(ckpt: Checkpoint, method: QuantMethod) -> list[str]:
    """The decoder layers' Linears the method's format cannot hold quantized (left fp16)."""
    n_layers = ckpt.config["num_hidden_layers"]
    return [n for n in (f"{layer_prefix(i)}{m}" for i in range(n_layers) for m in LINEARS)
            if not method.packable(*linear_dims(ckpt, n))]


def write_checkpoint(work: Path, ckpt: Checkpoint, model_name: str, method: QuantMethod, calib: CalibSpec,
                     ids: torch.Tensor | None, dtype: torch.dtype, log: list[dict], extra: dict[str, torch.Tensor],
                     max_shard_size: str) -> None:
    """The finished run's folder: shards, side files, quantize_config.json, config.json, quant_log.csv."""
    p = method.params
    n_layers = ckpt.config["num_hidden_layers"]
    skipped = unquantized(ckpt, method)
    dynamic, in_block = declare_unquantized(skipped, n_layers, GROUPS)
    run = {
        **({"dataset": None} if ids is None else dataset_record(calib.dataset, calib.dataset_path)),
        "seq_len": None if ids is None else ids.shape[1], "nsamples": None if ids is None else ids.shape[0],
        "seed": calib.seed, "template": calib.template, "compute_dtype": dtype_name(dtype),
        "damp_used": max([r["damp"] for r in log], default=p.damp),
        "damp_auto_increment": 0.01, "static_groups": p.static_groups, "true_sequential": p.true_sequential,
        "unquantized_modules": skipped,
    }
    qcfg = GPTQConfig(bits=p.bits, group_size=p.group_size, desc_act=p.act_order, sym=p.sym, damp_percent=p.damp,
                      true_sequential=p.true_sequential, static_groups=p.static_groups, lm_head=p.lm_head,
                      model_name_or_path=source_name(model_name), dynamic=dynamic, modules_in_block_to_quantize=in_block,
                      meta={"quantizer": [QUANTIZER], "method": p.method, "mse": p.mse, **run})
    assemble(work, ckpt, n_layers, extra, qcfg.safetensors_metadata(), max_shard_size)
    copy_side_files(ckpt.dir, work)
    write_config(work, ckpt.config, qcfg)
    _finish(work, log)


def write_awq_checkpoint(work: Path, ckpt: Checkpoint, method: QuantMethod, log: list[dict],
                         max_shard_size: str) -> None:
    """The finished AWQ run's folder: shards, side files, config.json with AutoAWQ's block, quant_log.csv.
    The AutoAWQ format has no run record; the settings are AutoAWQ's defaults (`quant.awq.AWQSettings`)."""
    n_layers = ckpt.config["num_hidden_layers"]
    skipped = unquantized(ckpt, method)
    quantized = [layer_prefix(i) + m for i in range(n_layers) for m in LINEARS if layer_prefix(i) + m not in skipped]
    qcfg = awq_format.AWQConfig(group_size=method.params.group_size,
                                modules_to_not_convert=awq_format.not_converted(skipped, n_layers, quantized))
    assemble(work, ckpt, n_layers, {}, {"format": "pt", "quantizer": QUANTIZER}, max_shard_size)
    copy_side_files(ckpt.dir, work)
    awq_format.write_config(work, ckpt.config, qcfg)
    _finish(work, log)


def _finish(work: Path, log: list[dict]) -> None:
    """quant_log.csv, and the run's scratch folders removed."""
    with open(work / "quant_log.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ["layer", "module", "loss", "damp", "seconds"])
        w.writeheader()
        w.writerows(log)
    shutil.rmtree(work / LAYERS)
    shutil.rmtree(work / STATE)


def source_name(model: str | Path) -> str:
    """`model_name_or_path` as published: a Hub id as given, a local folder by its name only (a file
    others download must not carry a path of the machine it was built on)."""
    path = Path(model).expanduser()
    return path.resolve().name if path.exists() else str(model)


def dataset_record(dataset: str, dataset_path: str | Path | None) -> dict:
    """The calibration set by name and, for a local file, its file name and SHA-256 (no local path)."""
    file = Path(dataset_path) if dataset_path else (Path(dataset) if Path(dataset).is_file() else None)
    if file is None:
        return {"dataset": dataset}
    name = dataset if dataset_path else file.name
    return {"dataset": name, "dataset_file": file.name, "dataset_sha256": sha256_file(file)}
