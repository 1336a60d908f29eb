"""AWQ over a whole Llama checkpoint into the AutoAWQ GEMM format, one decoder layer in memory at a time.

MINIMAL PATH: a loop of its own beside `camelid.quant.loop`'s GPTQ/RTN layer loop; once AWQ is one of
that loop's methods (`camelid.quant.methods`) this file goes. It reuses the loop's pieces (embedding,
per-layer files, streamed assembly, the output lock and manifest) and, like AutoAWQ's `quantize`, feeds each layer the
output of the previous layer before it was scaled or quantized (no error propagation), so a layer's
search sees the fp model's activations. Not resumable (an interrupted run starts over).
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import torch
from tqdm.auto import tqdm

from camelid.checkpoint.output import atomic_output_dir, check_output, copy_side_files, write_manifest
from camelid.checkpoint.source import open_checkpoint
from camelid.device import compute_dtype, resolve_device
from camelid.errors import CamelidError
from camelid.formats import awq as awq_format
from camelid.quant.assemble import assemble
from camelid.quant.awq import AWQSettings, apply_fit, fit_layer, quantize_weight
from camelid.quant.calib import calibration_windows
from camelid.quant.checks import default_seq_len
from camelid.quant.layer import LINEARS, layer_prefix, llama_config, load_layer, rotary
from camelid.quant.loop import embed
from camelid.quant.progress import LAYERS, layer_file, write_tensors
from camelid.quant.settings import CalibSpec, RunOptions
from camelid.tokenizer import load_tokenizer


def quantize_awq(model: str | Path, out: str | Path, settings: AWQSettings, calib: CalibSpec = CalibSpec(),
                 options: RunOptions = RunOptions(), calibration: torch.Tensor | None = None) -> Path:
    """AWQ-quantize a Llama checkpoint into `out` (AutoAWQ GEMM). `calibration` ([n, seq_len] token ids)
    overrides `calib`'s dataset/nsamples/seq_len. Returns `out`."""
    if settings.bits != awq_format.BITS:
        raise CamelidError(f"AWQ checkpoints are {awq_format.BITS}-bit (the GEMM format); got --bits {settings.bits}")
    if settings.group_size <= 0:
        raise CamelidError(f"AWQ needs a positive --group-size, got {settings.group_size}")
    ckpt = open_checkpoint(model, options.revision)
    check_output(out, options.overwrite, [ckpt.dir])
    if ckpt.config.get("model_type") != "llama":
        raise CamelidError(f"only Llama-architecture models are supported, got {ckpt.config.get('model_type')!r}")
    dev = resolve_device(options.device)
    dtype = compute_dtype(dev, options.compute)
    config = llama_config(ckpt.config)
    if calibration is None:
        seq_len = default_seq_len(ckpt) if calib.seq_len is None else calib.seq_len
        calibration = calibration_windows(load_tokenizer(ckpt.dir), calib.dataset, calib.dataset_path, calib.nsamples,
                                          seq_len, calib.seed, calib.template)
    ids = calibration.to(torch.long)
    hidden = torch.empty(*ids.shape, config.hidden_size, dtype=dtype)
    embed(ckpt, ids, hidden)
    pe = tuple(t.to(dev, dtype) for t in rotary(config, ids.shape[1], dev))
    n_layers = config.num_hidden_layers
    log: list[dict] = []
    skipped: list[str] = []
    with atomic_output_dir(out, overwrite=options.overwrite, inputs=[ckpt.dir]) as work:
        (work / LAYERS).mkdir()
        for i in tqdm(range(n_layers), desc="awq", unit="layer", disable=not options.progress):
            prefix = layer_prefix(i)
            # searched in the compute dtype (bf16 where matmul units have it), applied to fp32 weights,
            # so the scaled weights and norms are not rounded to bf16 before quantization and storage
            nxt, fit = fit_layer(load_layer(ckpt, config, i, dev, dtype), hidden.to(dev), pe, settings)
            layer = load_layer(ckpt, config, i, dev, torch.float32)
            apply_fit(layer, fit, settings.group_size)
            log += [{"layer": i, **r} for r in fit.log]
            tensors: dict[str, torch.Tensor] = {}
            for nm in LINEARS:
                lin = layer.get_submodule(nm)
                if awq_format.packable(lin.in_features, lin.out_features, settings.group_size):
                    res = quantize_weight(lin.weight.data.float().cpu(), settings)
                    tensors.update(awq_format.pack_linear(prefix + nm, res.q, res.scales, res.zeros))
                else:  # scaled, so stored from the live layer, not the checkpoint
                    tensors[prefix + nm + ".weight"] = lin.weight.data.to(torch.float16).cpu()
                    skipped.append(prefix + nm)
            for nm in ("input_layernorm", "post_attention_layernorm"):  # they carry 1/s
                tensors[prefix + nm + ".weight"] = layer.get_submodule(nm).weight.data.to(torch.float16).cpu()
            write_tensors(layer_file(work, i), tensors)
            hidden = nxt.to("cpu", dtype)
            del layer, tensors
        quantized = [layer_prefix(i) + m for i in range(n_layers) for m in LINEARS
                     if layer_prefix(i) + m not in skipped]
        qcfg = awq_format.AWQConfig(group_size=settings.group_size,
                                    modules_to_not_convert=awq_format.not_converted(skipped, n_layers, quantized))
        assemble(work, ckpt, n_layers, {}, {"format": "pt", "quantizer": "camelid-awq"}, options.max_shard_size)
        copy_side_files(ckpt.dir, work)
        awq_format.write_config(work, ckpt.config, qcfg)
        _write_log(work / "quant_log.csv", log)
        shutil.rmtree(work / LAYERS)
        write_manifest(work)  # what lets a later --overwrite recognise the folder as camelid's
    return Path(out)


def _write_log(path: Path, rows: list[dict]) -> None:
    fields = ["layer", "module", "loss", "scale_min", "scale_max", "mean_shrink"]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fields)
        w.writeheader()
        w.writerows(rows)
