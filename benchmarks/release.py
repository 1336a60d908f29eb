"""Wall and CPU time of a whole release, per branch, and the card's measured columns.

camel45m with the default (`llama`, TheBloke's Tulu 7B table) matrix: 8 branches, calibration
--nsamples windows of --seq-len tokens of wikitext-2-v1 valid (tokenized once for all rows), measured
on wikitext-2 test (which camel45m never saw), both models in float32. Prints a table and writes JSON.

    CAMELID_SHARED_DATA=/work/shared/data PYTHONPATH=src python benchmarks/release.py --seq-len 256 --nsamples 16
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
    args = ap.parse_args()

    import torch

    from camelid.quant import RunOptions
    from camelid.release import CardInfo, EvalSpec, build_release, load_matrix, resolve_rows

    work = args.out or Path(tempfile.mkdtemp(prefix="camelid-release-bench-")) / "camel45m-GPTQ"
    config = json.loads((CAMEL / "config.json").read_text())
    rows = resolve_rows(load_matrix("llama"), config["max_position_embeddings"], seq_len=args.seq_len,
                        nsamples=args.nsamples, dataset="wikitext2", dataset_path=str(CALIB))
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        record = build_release(CAMEL, work, rows, CardInfo(name="Camel 45M", template="tulu"),
                               RunOptions(device="cpu", progress=False),
                               EvalSpec(data=str(HELD_OUT), seq_len=args.seq_len, windows=args.eval_windows))
        total, total_cpu = time.perf_counter() - t0, time.process_time() - c0
        branches = list(record["branches"].values())
        head = (f"{'branch':32s} {'size (bytes)':>12s} {'quant s':>8s} {'cpu s':>7s} {'measure s':>9s} "
                f"{'KL':>8s} {'top-1 %':>7s} {'ppl':>8s}")
        print(head)
        for b in branches:
            m = b["measured"]
            print(f"{b['branch']:32s} {b['size_bytes']:12,d} {b['quantize_seconds']:8.1f} "
                  f"{b['quantize_cpu_seconds']:7.1f} {b['measure_seconds']:9.1f} {m['kld_mean']:8.4f} "
                  f"{m['top1_agreement_pct']:7.1f} {m['ppl']:8.3f}")
        print(f"source ppl {branches[0]['measured']['ppl_reference']:.3f}; whole release {total:.1f} s wall, "
              f"{total_cpu:.1f} s CPU (this process); card: {work / branches[0]['branch'] / 'README.md'}")
        result = {"model": "camel45m", "matrix": "llama", "seq_len": args.seq_len, "nsamples": args.nsamples,
                  "eval": record["evaluation"], "total_wall_s": round(total, 1), "total_cpu_s": round(total_cpu, 1),
                  "branches": [{k: b[k] for k in ("branch", "params", "size_bytes", "quantize_seconds",
                                                  "quantize_cpu_seconds", "measure_seconds", "measured")}
                               for b in branches],
                  "machine": {"cpu": cpu_kernels.status(), "torch": torch.__version__, "threads": torch.get_num_threads(),
                              "python": platform.python_version(),
                              "note": "shared machine; other jobs were using the CPU: wall times are noisy"}}
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {RESULTS}")
    finally:
        if args.out is None:
            shutil.rmtree(work.parent, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
