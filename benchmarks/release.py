"""Wall and CPU time of a whole release, per branch, and the card's measured columns.

camel45m with the default (`llama`, TheBloke's Tulu 7B table) matrix: 8 branches, calibration
--nsamples windows of --seq-len tokens of wikitext-2-v1 valid (tokenized once for all rows), measured
on wikitext-2 test (which camel45m never saw), both models in float32. Prints a table and writes JSON.

    CAMELID_SHARED_DATA=/work/shared/data PYTHONPATH=src python benchmarks/release.py --seq-len 256 --nsamples 16

With `--formats gptq,awq,gguf,fp16` (and e.g. `--only main`) it builds every repository of the release and
adds one line per AWQ/fp16 model and GGUF file (build seconds of the repository, KL, top-1).
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

from camelid.runtime import cpu_kernels

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CAMELID_SHARED_DATA") or ROOT.parent / "shared" / "data")
CAMEL = SHARED / "models" / "camel45m"
CALIB = SHARED / "eval" / "wikitext2" / "wikitext-2-v1.valid.tokens.txt"
HELD_OUT = SHARED / "eval" / "wikitext2" / "wiki.test.raw"
RESULTS = ROOT / "benchmarks" / "results" / "release.json"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--nsamples", type=int, default=16)
    ap.add_argument("--eval-windows", type=int, default=16)
    ap.add_argument("--out", type=Path, default=None, help="keep the release here (default: a temp folder)")
    ap.add_argument("--formats", default="gptq", help="repositories to build (camelid release --formats)")
    ap.add_argument("--gguf-types", default="q4_0,q8_0,q4_k_m")
    ap.add_argument("--only", nargs="+", default=None, help="matrix rows to build (default: all 8)")
    args = ap.parse_args()

    import torch

    from camelid.quant import RunOptions
    from camelid.release import CardInfo, EvalSpec, load_matrix, resolve_rows
    from camelid.release.repos import ReleaseRun, build_repositories
    from camelid.release.siblings import ReleaseFormats

    work = args.out or Path(tempfile.mkdtemp(prefix="camelid-release-bench-")) / "camel45m-GPTQ"
    config = json.loads((CAMEL / "config.json").read_text())
    rows = resolve_rows(load_matrix("llama"), config["max_position_embeddings"], seq_len=args.seq_len,
                        nsamples=args.nsamples, dataset="wikitext2", dataset_path=str(CALIB), only=args.only)
    spec = ReleaseFormats(tuple(args.formats.split(",")), gguf_types=tuple(args.gguf_types.split(",")))
    if not spec.single:
        work = work.parent / "out"
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        records = build_repositories(CAMEL, work, rows, CardInfo(name="Camel 45M", template="tulu"), spec, ReleaseRun(
            RunOptions(device="cpu", progress=False),
            EvalSpec(data=str(HELD_OUT), seq_len=args.seq_len, windows=args.eval_windows)))
        total, total_cpu = time.perf_counter() - t0, time.process_time() - c0
        record = records["gptq"]
        branches = list(record["branches"].values())
        head = (f"{'branch':32s} {'size (bytes)':>12s} {'quant s':>8s} {'cpu s':>7s} {'measure s':>9s} "
                f"{'KL':>8s} {'top-1 %':>7s} {'ppl':>8s}")
        print(head)
        for b in branches:
            m = b["measured"]
            print(f"{b['branch']:32s} {b['size_bytes']:12,d} {b['quantize_seconds']:8.1f} "
                  f"{b['quantize_cpu_seconds']:7.1f} {b['measure_seconds']:9.1f} {m['kld_mean']:8.4f} "
                  f"{m['top1_agreement_pct']:7.1f} {m['ppl']:8.3f}")
        others = [(f"{fmt} main", r, r) for fmt, r in records.items() if fmt in ("awq", "fp16")] + [
            (f"gguf {f['type']}", f, records["gguf"]) for f in records.get("gguf", {}).get("files", [])]
        for name, entry, repo in others:
            m = entry["measured"]
            print(f"{name:32s} {entry['size_bytes']:12,d} {repo['build_seconds']:8.1f} {'':>7s} {'':>9s} "
                  f"{m['kld_mean']:8.4f} {m['top1_agreement_pct']:7.1f} {m['ppl']:8.3f}")
        print(f"source ppl {branches[0]['measured']['ppl_reference']:.3f}; whole release {total:.1f} s wall, "
              f"{total_cpu:.1f} s CPU (this process); cards under {work}")
        result = {"model": "camel45m", "matrix": "llama", "seq_len": args.seq_len, "nsamples": args.nsamples,
                  "eval": record["evaluation"], "total_wall_s": round(total, 1), "total_cpu_s": round(total_cpu, 1),
                  "branches": [{k: b[k] for k in ("branch", "params", "size_bytes", "quantize_seconds",
                                                  "quantize_cpu_seconds", "measure_seconds", "measured")}
                               for b in branches],
                  "formats": list(spec.formats),
                  "others": [{"name": n, "size_bytes": e["size_bytes"], "build_seconds": r["build_seconds"],
                              "measured": e["measured"]} for n, e, r in others],
                  "machine": {"cpu": cpu_kernels.status(), "torch": torch.__version__, "threads": torch.get_num_threads(),
                              "python": platform.python_version(),
                              "note": "shared machine; other jobs were using the CPU: wall times are noisy"}}
        path = RESULTS if spec.single else RESULTS.with_name("release_formats.json")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {path}")
    finally:
        if args.out is None:
            shutil.rmtree(work.parent, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
