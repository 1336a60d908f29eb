"""GGUF export: quality per type measured in llama.cpp, and peak memory of the export of a big model.

Quality: camel45m (and stories260K) exported by `camelid.export.export_gguf` to each type; each file is run
by llama.cpp (llama-cpp-python, all positions' logits) and compared with the fp16 source run by
Transformers in fp32 through `camelid.eval.kl_divergence`: mean KL(source || GGUF), top-1 agreement and
perplexity on GSM8K test text (question, newline, answer, blank line; the first `--kl-windows` 256-token
windows, as benchmarks/quantize.py), plus file size, bits per weight and export time. The F16 file's
greedy continuation is compared with the source's (same ids expected).

Memory (`--rss`): a generated random fp16 Llama with Llama-7B shapes (benchmarks/quantize_memory.py's
generator, `--layers` layers, 3 = 1.74 GB) with the LLaMA-2 tokenizer.model, exported to the types of
`--rss-types` in a child process whose peak RSS (VmHWM) is compared with the model size (target < 25%).
The peaks of its anonymous (heap) and file-backed resident memory are sampled apart: llama.cpp's
quantizer mmaps its F16 input and unmaps each tensor after quantizing it, so the file-backed part is
clean page cache of the largest input tensor (the 262 MB embedding here), reclaimable by the kernel.
The export never imports torch (checked: the child reports it), whose import alone is ~225 MB of RSS.

    CAMELID_SHARED_DATA=/work/shared/data PYTHONPATH=src python benchmarks/gguf_export.py [--rss]

Prints tables and writes benchmarks/results/gguf.json (and gguf_memory.json). (Not named gguf.py: a script of that name
would shadow the gguf package for everything it imports.).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from camelid.runtime import cpu_kernels
from camelid.runtime.cpu_features import cpu_features

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CAMELID_SHARED_DATA") or ROOT.parent / "shared" / "data")
RESULTS = ROOT / "benchmarks" / "results"
TYPES = "f16,q8_0,q6_k,q5_k_m,q5_0,q4_k_m,q4_0,q3_k_m,q2_k"
THREADS = 2
SEQ = 256


def quality(model_dir: Path, text: str, types: str, work: Path) -> list[dict]:
    import torch

    from camelid.eval import kl_divergence, perplexity
    from camelid.export import GGUFExport, export_gguf
    from camelid.runtime.llamacpp import load_gguf
    from camelid.runtime.load import load

    torch.set_num_threads(THREADS)
    ref, tok = load(model_dir, device="cpu", dtype="float32")
    params = sum(p.numel() for p in ref.parameters())
    rows = [{"type": "source fp16 (Transformers fp32)", "file_mb": None, "bpw": None, "export_s": None,
             "kl_mean": 0.0, "top1_pct": 100.0,
             "ppl": perplexity(ref, tok, text, seq_len=SEQ)["ppl"]}]
    print(_row(rows[-1]), flush=True)
    prompt = tok("Question: Tom has 3 apples and buys 4 more. How many apples does he have?\nAnswer:")["input_ids"]
    with torch.no_grad():
        want = ref.generate(torch.tensor([prompt]), max_new_tokens=32, do_sample=False)[0, len(prompt):].tolist()
    for t in types.split(","):
        t0 = time.perf_counter()
        (path,) = export_gguf(model_dir, work, GGUFExport(types=(t,), threads=THREADS, overwrite=True))
        export_s = time.perf_counter() - t0
        lm, _ = load_gguf(path, n_ctx=SEQ, threads=THREADS)
        r = kl_divergence(lm, ref, tok, text, seq_len=SEQ)
        size = path.stat().st_size
        row = {"type": path.name.split(".")[-2], "file": path.name, "file_mb": size / 1e6,
               "bpw": 8 * size / params, "export_s": export_s, "kl_mean": r["kld_mean"],
               "kl_p99": r["kld_p99"], "top1_pct": r["top1_agreement_pct"], "ppl": r["ppl"],
               "windows": r["windows"]}
        if t == "f16":
            row["greedy_32_equal_to_source"] = lm.greedy(prompt, 32) == want
        rows.append(row)
        print(_row(row), flush=True)
        del lm
        path.unlink()
    return rows


def _row(r: dict) -> str:
    def f(key: str, fmt: str) -> str:
        return format(r[key], fmt) if r.get(key) is not None else "-"

    return (f"{r['type']:<32} {f('file_mb', '9.2f'):>9} {f('bpw', '6.2f'):>6} {f('export_s', '7.1f'):>7} "
            f"{f('kl_mean', '10.5f'):>10} {f('top1_pct', '7.2f'):>7} {f('ppl', '9.3f'):>9}"
            + ("  greedy = source" if r.get("greedy_32_equal_to_source") else
               "  greedy DIFFERS" if "greedy_32_equal_to_source" in r else ""))


HEADER = f"{'type':<32} {'file MB':>9} {'bpw':>6} {'export':>7} {'KL mean':>10} {'top-1 %':>7} {'ppl':>9}"


def gsm_text(tok, windows: int) -> str:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from quantize import prefix_tokens

    gsm = [json.loads(x) for x in (SHARED / "eval" / "gsm8k" / "test.jsonl").read_text().splitlines() if x.strip()]
    return prefix_tokens(tok, "".join(f"{r['question']}\n{r['answer']}\n\n" for r in gsm), windows * SEQ)


def run_quality(args) -> None:
    from camelid.tokenizer import load_tokenizer

    work = Path(tempfile.mkdtemp(prefix="camelid-bench-gguf-"))
    results = {"cpu": cpu_kernels.status(), "threads": THREADS, "seq_len": SEQ, "models": {}}
    try:
        camel = SHARED / "models" / "camel45m"
        print(f"camel45m, GSM8K test text, {args.kl_windows} x {SEQ}-token windows; {cpu_features().describe()}\n{HEADER}")
        results["models"]["camel45m"] = {
            "text": f"GSM8K test, first {args.kl_windows} x {SEQ}-token windows",
            "rows": quality(camel, gsm_text(load_tokenizer(camel), args.kl_windows), args.types, work)}
        stories = ROOT / "examples" / "stories260K"
        text = (SHARED / "eval" / "tinystories" / "tinystories_sample.txt").read_text()
        print(f"\nstories260K, TinyStories sample\n{HEADER}")
        results["models"]["stories260K"] = {"text": "TinyStories sample (shared data)", "rows": quality(
            stories, text, "f16,q8_0,q4_0,q4_k_m", work)}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "gguf.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS / 'gguf.json'}")


def child(model: str, out: str, types: str) -> None:
    import threading

    from camelid.export import GGUFExport, export_gguf

    # VmHWM counts file-backed pages too; llama.cpp's quantizer maps its input GGUF, so the peak anonymous
    # (heap) and file-backed resident sizes are sampled apart as well.
    peaks = {"RssAnon": 0, "RssFile": 0}
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.05):
            for line in Path("/proc/self/status").read_text().splitlines():
                key = line.split(":")[0]
                if key in peaks:
                    peaks[key] = max(peaks[key], int(line.split()[1]) * 1024)

    threading.Thread(target=sample, daemon=True).start()
    t0 = time.perf_counter()
    paths = export_gguf(model, out, GGUFExport(types=tuple(types.split(",")), threads=THREADS))
    done.set()
    peak = next(int(x.split()[1]) for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmHWM:"))
    print("RESULT " + json.dumps({"export_s": time.perf_counter() - t0, "peak_rss_bytes": peak * 1024,
                                  "torch_imported": "torch" in sys.modules,
                                  "peak_anon_bytes_sampled": peaks["RssAnon"], "peak_file_bytes_sampled": peaks["RssFile"],
                                  "files": {p.name: p.stat().st_size for p in paths}}), flush=True)


def run_memory(args) -> int:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from quantize_memory import generate

    work = Path(tempfile.mkdtemp(prefix="camelid-gguf-memory-", dir=args.tmp))
    rows = []
    try:
        size = generate(work / "model", args.layers)
        shutil.copyfile(SHARED / "tokenizers" / "llama2" / "tokenizer.model", work / "model" / "tokenizer.model")
        print(f"generated {size / 1e9:.2f} GB fp16 ({args.layers} Llama-7B-shaped layers); {cpu_features().describe()}", flush=True)
        for types in args.rss_types.split(";"):
            env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
            proc = subprocess.run([sys.executable, __file__, "--child", str(work / "model"), str(work / "out"), types],
                                  env=env, capture_output=True, text=True)
            lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
            if proc.returncode or not lines:
                print(proc.stderr[-4000:], file=sys.stderr)
                return 1
            r = json.loads(lines[-1][7:])
            rows.append({"types": types, **r, "peak_rss_fraction": r["peak_rss_bytes"] / size,
                         "peak_anon_fraction": r["peak_anon_bytes_sampled"] / size})
            print(f"{types:<20} peak RSS {r['peak_rss_bytes'] / 1e6:7.0f} MB = {100 * rows[-1]['peak_rss_fraction']:5.1f}% "
                  f"of the model (sampled peaks: anonymous {r['peak_anon_bytes_sampled'] / 1e6:.0f} MB = "
                  f"{100 * rows[-1]['peak_anon_fraction']:.1f}%, file-backed "
                  f"{r['peak_file_bytes_sampled'] / 1e6:.0f} MB); {r['export_s']:.0f} s; files " +
                  ", ".join(f"{n} {s / 1e9:.2f} GB" for n, s in r["files"].items()), flush=True)
            shutil.rmtree(work / "out")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    res = {"cpu": cpu_kernels.status(), "layers": args.layers, "model_bytes_fp16": size, "target_fraction": 0.25,
           "rows": rows, "ok": all(r["peak_rss_fraction"] < 0.25 for r in rows)}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "gguf_memory.json").write_text(json.dumps(res, indent=2) + "\n")
    print(f"target < 25% of the model: {'ok' if res['ok'] else 'MISSED'}; wrote {RESULTS / 'gguf_memory.json'}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--types", default=TYPES)
    ap.add_argument("--kl-windows", type=int, default=16)
    ap.add_argument("--rss", action="store_true", help="measure the export's peak RSS on a generated model instead")
    ap.add_argument("--layers", type=int, default=3, help="layers of the generated model (3: 1.74 GB)")
    ap.add_argument("--rss-types", default="f16,q8_0;q4_0;q4_k_m", help="';'-separated runs of comma-separated types")
    ap.add_argument("--tmp", default=tempfile.gettempdir())
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return 0
    if args.rss:
        return run_memory(args)
    run_quality(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
