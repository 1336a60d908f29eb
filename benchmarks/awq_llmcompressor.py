"""camelid AWQ vs llm-compressor's AWQ on camel45m, 4-bit g128, same calibration windows, beside RTN and GPTQ.

llm-compressor (vllm-project/llm-compressor, `modifiers/transform/awq/base.py` AWQModifier, followed by a
QuantizationModifier that rounds the smoothed weights) needs a Transformers other than camelid's, so it runs
in its own virtual environment (`--llmc-python`, default /work/llmc-venv/bin/python) as a subprocess of
this script: it gets the very token windows camelid calibrates on (128 x 256 of wikitext-2-v1 valid, as
benchmarks/quantize.py builds them) as a dataset of input_ids, writes its compressed-tensors checkpoint,
loads it back with its own Transformers and writes (a) a dense fp32 copy (the checkpoint dequantized by
compressed-tensors, `run_compressed=False`) and (b) the logits of the compressed checkpoint on the first
KL windows. Here the dense copy is measured by the same camelid.eval code as every camelid row (KL to
fp and top-1 on GSM8K test text, wikitext-2 perplexity) and checked against (b).

Settings, matched where both expose them: 4 bits, group 128, asymmetric with zero point, scales rounded
to fp16 (the AWQ GEMM format's dtype; `scale_dtype` in compressed-tensors), duo scaling, n_grid 20, the
Llama mappings (input_layernorm -> q,k,v; v -> o, skipped on camel45m's GQA shapes by both;
post_attention_layernorm -> gate,up; up -> down), fp activations propagated from layer to layer, fp32
search (camelid's `--compute-dtype float32`; its default on AMX CPUs is a bf16 search). Differences that
neither exposes: llm-compressor's duo grid is identity + ratios k/18, k = 0..18; AutoAWQ's and camelid's
is k/20, k = 0..19. llm-compressor has no clip search (camelid's default has AutoAWQ's), so camelid runs
both with and without it. compressed-tensors widens each group's min/max range to contain 0; AutoAWQ's
grid does not.

    CAMELID_SHARED_DATA=/work/shared/data PYTHONPATH=src python benchmarks/awq_llmcompressor.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quantize import (  # noqa: E402
    CAMEL,
    ROOT,
    THREADS,
    camel_calibration,
    eval_texts,
    evaluate,
    measure,
    peak_rss_mb,
    run_child,
)

LLMC_PYTHON = "/work/llmc-venv/bin/python"
N_GRID = 20
SEQ = 256
PARITY_WINDOWS = 2


def llmc_child(spec: dict) -> None:
    """In llm-compressor's environment: AWQ (or plain RTN) with oneshot, then the dense copy and logits."""
    import torch

    torch.set_num_threads(THREADS)
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from llmcompressor.modifiers.transform.awq import AWQModifier
    from llmcompressor.pipelines.cache import IntermediatesCache
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM
    from transformers.utils.quantization_config import CompressedTensorsConfig

    if not torch.cuda.is_available():
        # AWQModifier pins its cached batches for host-to-device copies; torch's CPU build refuses
        # pin_memory without an accelerator. Pinning changes no value, so skip it.
        IntermediatesCache.pin_memory = lambda self, *args, **kwargs: None
    ids = load_file(spec["calib"])["ids"]
    out = Path(spec["out"])
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
    weights = QuantizationArgs(num_bits=4, type="int", strategy="group", group_size=spec["group_size"],
                               symmetric=False, dynamic=False, scale_dtype=torch.float16)
    recipe = [QuantizationModifier(config_groups={"group_0": QuantizationScheme(targets=["Linear"], weights=weights)},
                                   ignore=["lm_head"])]
    if spec["awq"]:
        recipe.insert(0, AWQModifier(duo_scaling=True, n_grid=spec["n_grid"]))
    data = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist()})
    t0 = time.perf_counter()
    oneshot(model=model, dataset=data, recipe=recipe, max_seq_length=ids.shape[1], num_calibration_samples=len(ids),
            shuffle_calibration_samples=False, batch_size=spec["batch"], pipeline="sequential")
    seconds = time.perf_counter() - t0
    peak = peak_rss_mb()
    model.save_pretrained(out / "compressed", save_compressed=True)
    del model

    windows = load_file(spec["windows"])["ids"]
    compressed = AutoModelForCausalLM.from_pretrained(out / "compressed", dtype=torch.float32).eval()
    with torch.inference_mode():
        logits = compressed(input_ids=windows, use_cache=False).logits.float()
    save_file({"logits": logits.contiguous()}, str(out / "parity.safetensors"))
    del compressed
    dense = AutoModelForCausalLM.from_pretrained(out / "compressed", dtype=torch.float32,
                                                 quantization_config=CompressedTensorsConfig(run_compressed=False))
    extra = ("weight_scale", "weight_zero_point", "weight_shape")
    state = {k: v.contiguous() for k, v in dense.state_dict().items() if not k.endswith(extra)}
    (out / "dense").mkdir()
    save_file(state, str(out / "dense" / "model.safetensors"), metadata={"format": "pt"})
    shutil.copy(Path(spec["model"]) / "config.json", out / "dense" / "config.json")
    print("RESULT " + json.dumps({"quant_s": seconds, "peak_rss_mb": peak}), flush=True)


def cpu_kind() -> str:
    flags, name = set(), platform.processor()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name") and name in ("", "x86_64"):
            name = line.split(":", 1)[1].strip()
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    isa = [f for f in ("avx512f", "avx512_bf16", "avx512_vnni", "amx_tile") if f in flags]
    return f"{name} ({', '.join(isa)}), {os.cpu_count()} CPUs, torch threads {THREADS}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--llmc-child", help=argparse.SUPPRESS)
    ap.add_argument("--llmc-python", default=LLMC_PYTHON, help="python of the venv llm-compressor is installed in")
    ap.add_argument("--kl-windows", type=int, default=32, help="256-token GSM8K test windows for KL/top-1")
    ap.add_argument("--ppl-windows", type=int, default=32, help="first 256-token windows of wiki.test.raw")
    ap.add_argument("--nsamples", type=int, default=128, help="256-token calibration windows (both tools)")
    ap.add_argument("--rows", default="rtn,gptq,awq,awq-fp32-noclip,llmc-awq,llmc-rtn",
                    help="comma list of rtn, gptq, awq (camelid's defaults), awq-fp32, awq-fp32-noclip, "
                         "llmc-awq, llmc-rtn")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "awq_llmcompressor.json"))
    args = ap.parse_args()
    if args.llmc_child:
        llmc_child(json.loads(args.llmc_child))
        return 0

    import torch
    from safetensors.torch import load_file, save_file
    from transformers import LlamaForCausalLM

    from camelid.eval.likelihood import gptq_windows
    from camelid.tokenizer import load_tokenizer

    torch.set_num_threads(THREADS)
    rows_wanted = args.rows.split(",")
    unknown = set(rows_wanted) - set(ROWS)
    if unknown:
        ap.error(f"unknown --rows {sorted(unknown)}; choose from {sorted(ROWS)}")
    if any(r.startswith("llmc") for r in rows_wanted) and not Path(args.llmc_python).exists():
        ap.error(f"--llmc-python {args.llmc_python} does not exist (see benchmarks/README.md for the venv recipe)")
    work = Path(tempfile.mkdtemp(prefix="camelid-bench-llmc-"))
    results: dict = {"machine": cpu_kind(), "seq_len": SEQ,
                     "calibration": f"{args.nsamples} x {SEQ} tokens, wikitext-2-v1 valid, seed 0 (both tools)",
                     "eval": {"kl_text": f"GSM8K test, first {args.kl_windows} x {SEQ}-token windows",
                              "ppl_text": f"wiki.test.raw GPTQ protocol, first {args.ppl_windows} x {SEQ}-token windows"},
                     "rows": []}
    print(results["machine"], flush=True)
    try:
        tok = load_tokenizer(CAMEL)
        save_file({"ids": camel_calibration(tok, args.nsamples, SEQ)}, str(work / "calib.safetensors"))
        texts = eval_texts(tok, args.kl_windows, args.ppl_windows, SEQ)
        save_file({"ids": gptq_windows(tok, texts["kl"], SEQ)[:PARITY_WINDOWS].contiguous()},
                  str(work / "parity-windows.safetensors"))
        fp = LlamaForCausalLM.from_pretrained(CAMEL, dtype=torch.float32).eval()
        results["rows"].append({"method": "fp16 (fp32 compute)", **measure(fp, fp, tok, texts, SEQ)})
        print(_fmt(results["rows"][-1]), flush=True)
        for name in rows_wanted:
            label, tool, extra = ROWS[name]
            out = work / name
            spec = {"tool": tool, "model": str(CAMEL), "out": str(out), "bits": 4, "group_size": 128,
                    "act_order": False, "batch": 16, "calib": None if name == "rtn" else str(work / "calib.safetensors"),
                    **extra}
            if tool == "llmc":
                spec["windows"] = str(work / "parity-windows.safetensors")
                cost = run_child(spec, [args.llmc_python, __file__, "--llmc-child"])
                model = LlamaForCausalLM.from_pretrained(out / "dense", dtype=torch.float32).eval()
                row = {"method": label, **cost, **measure(model, fp, tok, texts, SEQ),
                       "dense_vs_checkpoint_max_abs_logit": parity(model, work / "parity-windows.safetensors",
                                                                   out / "parity.safetensors", load_file)}
            else:
                cost = run_child(spec)
                row = {"method": label, **cost, **evaluate(out, fp, tok, texts, SEQ)}
            results["rows"].append(row)
            print(_fmt(row), flush=True)
            shutil.rmtree(out, ignore_errors=True)
            results["targets"] = targets(results["rows"])
            write_json(Path(args.out), results)  # after every row: a long run's finished rows survive
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out = write_json(Path(args.out), results)
    print()
    print(results["machine"])
    print(table(results["rows"]))
    print(json.dumps(results["targets"], indent=2))
    print(f"wrote {out}")
    return 0


# row name -> (label, quantize.py child tool or "llmc", extra spec)
ROWS = {
    "rtn": ("camelid RTN (sym)", "rtn", {}),
    "gptq": ("camelid GPTQ", "gptq", {}),
    "awq": ("camelid AWQ (bf16 search, clip)", "awq", {}),
    "awq-fp32": ("camelid AWQ (fp32, clip)", "awq", {"compute": "float32"}),
    "awq-fp32-noclip": ("camelid AWQ (fp32, no clip)", "awq", {"compute": "float32", "awq": {"clip": False}}),
    "llmc-awq": ("llm-compressor AWQ (fp32)", "llmc", {"awq": True, "n_grid": N_GRID}),
    "llmc-rtn": ("llm-compressor RTN (asym)", "llmc", {"awq": False}),
}


def write_json(out: Path, results: dict) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    tmp.replace(out)
    return out


def parity(model, windows_file: Path, logits_file: Path, load_file) -> float:
    """Max |logit| difference between the dense copy (here) and llm-compressor's checkpoint run by its own
    Transformers (there) on the same windows: the dense copy is what the checkpoint computes."""
    import torch

    windows, logits = load_file(str(windows_file))["ids"], load_file(str(logits_file))["logits"]
    with torch.inference_mode():
        mine = model(input_ids=windows, use_cache=False).logits.float()
    return float((mine - logits).abs().max())


def targets(rows: list[dict]) -> dict:
    """Issue 11: camelid AWQ's KL below RTN's and within 5 % of llm-compressor's AWQ (or better)."""
    by = {r["method"]: r for r in rows}
    llmc, rtn = by.get(ROWS["llmc-awq"][0]), by.get(ROWS["rtn"][0])
    out = {}
    for name in ("awq", "awq-fp32", "awq-fp32-noclip"):
        r = by.get(ROWS[name][0])
        if r is None:
            continue
        t = {}
        if rtn:
            t.update(kl_vs_rtn=r["kl_mean"] / rtn["kl_mean"], below_rtn=r["kl_mean"] < rtn["kl_mean"])
        if llmc:
            t.update(kl_vs_llmc=r["kl_mean"] / llmc["kl_mean"], within_5pct=r["kl_mean"] <= 1.05 * llmc["kl_mean"])
        out[r["method"]] = t
    return out


COLS = [("method", 34), ("kl_mean", 9), ("top1_agreement_pct", 8), ("ppl", 9), ("wall_s", 8), ("cpu_s", 8),
        ("peak_rss_mb", 9)]


def _fmt(row: dict) -> str:
    cells = []
    for k, w in COLS:
        v = row.get("top1_pct" if k == "top1_agreement_pct" else k, "")
        cells.append((f"{v:.5f}" if k == "kl_mean" else f"{v:.2f}" if isinstance(v, float) else str(v)).ljust(w))
    return " ".join(cells)


def table(rows: list[dict]) -> str:
    return "\n".join([" ".join(("top1 %" if k == "top1_agreement_pct" else k).ljust(w) for k, w in COLS)]
                     + [_fmt(r) for r in rows])


if __name__ == "__main__":
    sys.exit(main())
