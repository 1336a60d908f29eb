"""The release's repositories beside the GPTQ matrix: AWQ (main only), GGUF (one file per type) and the
fp16 model, each planned to the byte, built atomically from the same source and calibration windows,
measured on the same held-out windows as the GPTQ branches, and recorded in OUT/.camelid/siblings.json.

Resumable as the GPTQ matrix: a finished repository whose manifest verifies and whose record matches is
kept; an unfinished one is rebuilt (AWQ, fp16) or continued file by file (GGUF: each finished file in
`<Name>-GGUF.partial/` is kept, as its writer renames a file only once it is complete).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from camelid.checkpoint import write_json
from camelid.checkpoint.output import MANIFEST, atomic_output_dir, partial_dir, write_manifest
from camelid.checkpoint.source import open_checkpoint
from camelid.checkpoint.writer import TensorSpec
from camelid.errors import CamelidError
from camelid.formats import awq as awq_format
from camelid.formats.gptq.config import QUANTIZER
from camelid.quant.api import dataset_record
from camelid.quant.settings import CalibSpec, QuantParams, RunOptions
from camelid.release.build import finish_folder, manifest_verifies, weights_digest
from camelid.release.measure import measure_branch
from camelid.release.plan import FP16, config_shapes, files_of, model_specs
from camelid.release.siblings import Sibling

# The weight files' metadata `camelid.quant.api.write_awq_checkpoint` writes (it decides the plan's header bytes).
AWQ_METADATA = {"format": "pt", "quantizer": QUANTIZER}
AWQ_BITS = 4


@dataclass(frozen=True)
class VariantJob:
    """What every sibling build needs: the source, the shared windows, how to run, the card's template."""
    source: Path
    eval_windows: torch.Tensor
    eval_record: dict
    options: RunOptions
    chat_template: str | None


# ---- plans: exact bytes, from config.json (AWQ), the source's safetensors headers (fp16), or the tokenizer
# files plus tensor headers (GGUF types gguf-py writes). llama.cpp's K-quant mixes pick a type per tensor
# inside llama.cpp (llama-quant.cpp), so their size is known only once written.

def awq_params(group_size: int) -> QuantParams:
    """The AWQ repository's quantization (AutoAWQ's GEMM checkpoints: 4-bit, zero point, `group_size`)."""
    return QuantParams(bits=AWQ_BITS, group_size=group_size, method="awq")


def plan_awq(config: dict, group_size: int, max_shard_size: str) -> dict:
    from camelid.quant.checks import check_run
    from camelid.quant.methods import method_for

    p = awq_params(group_size)
    packable = method_for(p).packable
    try:  # quantize's own rule for a group size that packs none of the Linears, as for the GPTQ rows
        check_run(p, config_shapes(config), config["num_hidden_layers"], 0, 0, calibrated=False, packable=packable)
    except CamelidError as e:
        raise CamelidError(f"the AWQ repository: {e}") from None

    def pack(prefix: str, in_f: int, out_f: int) -> list[TensorSpec] | None:
        if not packable(in_f, out_f):
            return None
        groups, words = in_f // group_size, out_f // awq_format.PACK
        return [TensorSpec(f"{prefix}.qweight", torch.int32, (in_f, words)),
                TensorSpec(f"{prefix}.qzeros", torch.int32, (groups, words)),
                TensorSpec(f"{prefix}.scales", FP16, (groups, out_f))]

    specs, skipped = model_specs(config, pack)
    files = files_of(specs, AWQ_METADATA, max_shard_size)
    return {"files": files, "size_bytes": sum(files.values()), "unquantized_linears": skipped}


def plan_fp16(source: Path, max_shard_size: str) -> dict:
    """`camelid.checkpoint.cast.convert(source, out, "float16")`'s files: the source's tensors in its order,
    floating point ones in fp16."""
    ckpt = open_checkpoint(source)
    specs = [TensorSpec(t.name, FP16 if t.is_float else t.dtype, t.shape) for t in ckpt.tensors.values()]
    files = files_of(specs, None, max_shard_size)
    return {"files": files, "size_bytes": sum(files.values())}


def gguf_stem(base: str) -> str:
    """TheBloke's file names: the lower-cased model name (`zephyr-7b-beta.Q4_K_M.gguf`)."""
    return base.lower()


def plan_gguf(source: Path, types: tuple[str, ...], stem: str, chat_template: str | None) -> list[dict]:
    """One entry per type: file name and planned bytes (None for K-quant mixes). Fails before any work
    when llama-cpp-python is missing: every GGUF file is measured by llama.cpp, and K-quants are made by it."""
    from camelid.export.gguf import check_llama, gguf_file_name, parse_types, planned_file_bytes
    from camelid.export.gguf_vocab import read_vocab
    from camelid.runtime.llamacpp import require_llama_cpp

    gtypes = parse_types(list(types))
    require_llama_cpp("the GGUF repository (llama.cpp measures every file; K-quants are made by it)")
    ckpt = open_checkpoint(source)
    cfg = check_llama(ckpt)
    vocab = read_vocab(ckpt.dir, cfg["vocab_size"], chat_template)
    return [{"type": t.name, "file": gguf_file_name(stem, t),
             "planned_size_bytes": None if t.needs_llama_cpp else planned_file_bytes(ckpt, t, vocab, stem)}
            for t in gtypes]


# ---- builds --------------------------------------------------------------------------------------------

def _kept(sib: Sibling, previous: dict | None, job: VariantJob) -> bool:
    """A finished sibling from an earlier run: its files verify and its record is of these files."""
    return (previous is not None and sib.folder.is_dir() and manifest_verifies(sib.folder)
            and previous.get("weights_sha256") == weights_digest(sib.folder)
            and previous.get("evaluation") == job.eval_record)


def _discard_damaged(folder: Path) -> None:
    if folder.is_dir() and (folder / MANIFEST).is_file() and not manifest_verifies(folder):
        shutil.rmtree(folder)  # changed since it was built: build it again


def _measured_folder(sib: Sibling, job: VariantJob, plan: dict, t0: float) -> dict:
    if finish_folder(sib.folder, job.chat_template) or not (sib.folder / MANIFEST).exists():
        write_manifest(sib.folder)
    seconds = time.perf_counter() - t0
    files = {p.name: p.stat().st_size for p in sorted(sib.folder.glob("*.safetensors"))}
    measured = measure_branch(sib.folder, job.source, job.eval_windows, _measure_device(job.options))
    return {"planned_size_bytes": plan["size_bytes"], "size_bytes": sum(files.values()), "files": files,
            "measured": measured, "weights_sha256": weights_digest(sib.folder), "build_seconds": round(seconds, 2),
            "evaluation": job.eval_record}


def _measure_device(options: RunOptions) -> str:
    return "cuda" if options.device == "cuda" else "cpu"


def quantize_awq_variant(source: Path, out: Path, group_size: int, calib: CalibSpec, options: RunOptions,
                         calibration: torch.Tensor) -> None:
    """The one call into AWQ: the layer loop's AWQ method, on the GPTQ `main` row's calibration windows."""
    from camelid.quant.api import quantize

    quantize(source, out, awq_params(group_size), calib, options, calibration)


def _folder_variant(sib: Sibling, job: VariantJob, plan: dict, previous: dict | None,
                    make: Callable[[], object], check: Callable[[], None]) -> dict:
    """A model-folder sibling kept from an earlier run, or made by `make()` when missing or damaged; then
    `check()` that it is this variant, the finishing files, its manifest and its measurement."""
    if _kept(sib, previous, job):
        return previous | {"built": False}
    t0 = time.perf_counter()
    _discard_damaged(sib.folder)
    built = not sib.folder.exists()
    if built:
        make()
    check()
    return _measured_folder(sib, job, plan, t0) | {"built": built}


def build_awq(sib: Sibling, job: VariantJob, group_size: int, calib: CalibSpec, calibration: torch.Tensor,
              previous: dict | None) -> dict:
    from camelid.formats.awq import read_config

    config = json.loads((job.source / "config.json").read_text())
    plan = plan_awq(config, group_size, job.options.max_shard_size)

    def check() -> None:
        qcfg = read_config(sib.folder)
        if qcfg is None or qcfg.group_size != group_size:
            raise CamelidError(f"{sib.folder} holds another variant (not AWQ {AWQ_BITS}-bit {group_size}g); delete it")

    record = _folder_variant(sib, job, plan, previous, check=check, make=lambda: quantize_awq_variant(
        job.source, sib.folder, group_size, calib, job.options, calibration))
    return {"format": "awq", "params": {"bits": AWQ_BITS, "group_size": group_size, "zero_point": True,
                                        "version": "gemm"},
            "calibration": {**dataset_record(calib.dataset, calib.dataset_path), "nsamples": int(calibration.shape[0]),
                            "seq_len": int(calibration.shape[1]), "seed": calib.seed},
            "unquantized_linears": plan["unquantized_linears"]} | record


def build_fp16(sib: Sibling, job: VariantJob, previous: dict | None) -> dict:
    from camelid.checkpoint.cast import convert

    plan = plan_fp16(job.source, job.options.max_shard_size)
    return {"format": "fp16", "params": {"dtype": "float16"}} | _folder_variant(
        sib, job, plan, previous, check=lambda: None,
        make=lambda: convert(job.source, sib.folder, "float16", max_shard_size=job.options.max_shard_size))


def build_gguf(sib: Sibling, job: VariantJob, types: tuple[str, ...], stem: str, previous: dict | None,
               write_card) -> dict:
    """Every type's file, each measured by llama.cpp; the card written inside the partial folder, so the
    repository appears complete or not at all. `write_card(folder, record)` renders its README.md."""
    from camelid.export import GGUFExport, export_gguf

    plans = plan_gguf(job.source, types, stem, job.chat_template)
    if _kept(sib, previous, job) and [f["type"] for f in previous["files"]] == [p["type"] for p in plans]:
        return previous | {"built": False}
    t0 = time.perf_counter()
    if sib.folder.exists():
        shutil.rmtree(sib.folder)  # another set of types, or damaged: the partial folder starts afresh
    state = partial_dir(sib.folder) / "measured.json"  # per-file measurements of an interrupted run
    with atomic_output_dir(sib.folder, resume=True, inputs=[job.source]) as work:
        missing = [p["type"] for p in plans if not (work / p["file"]).is_file()]
        if missing:
            export_gguf(job.source, work, GGUFExport(types=tuple(missing), name=stem,
                                                     chat_template=job.chat_template))
        done = json.loads(state.read_text()) if state.is_file() else {}
        files = []
        for p in plans:
            path = work / p["file"]
            size = path.stat().st_size
            if p["planned_size_bytes"] is not None and size != p["planned_size_bytes"]:
                raise CamelidError(f"{p['file']}: wrote {size} bytes, planned {p['planned_size_bytes']}")
            key = f"{p['file']}:{size}"
            if key not in done:
                done[key] = measure_branch(path, job.source, job.eval_windows, _measure_device(job.options))
                write_json(state, done)
            files.append({**p, "size_bytes": size, "measured": done[key]})
        state.unlink()
        record = {"format": "gguf", "files": files, "size_bytes": sum(f["size_bytes"] for f in files),
                  "evaluation": job.eval_record, "build_seconds": round(time.perf_counter() - t0, 2)}
        write_card(work, record)
        write_manifest(work)
        record["weights_sha256"] = weights_digest(work)
    return record | {"built": True}
