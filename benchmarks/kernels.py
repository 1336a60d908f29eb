"""Micro-benchmark of the CPU matmuls for 4-bit GPTQ weights, at decode (1 row), serving (2-32) and prefill rows.

For Llama-7B's MLP shapes (11008x4096 and 4096x11008, 4-bit, group 128) it times
- `int4`: torch's int4 tinygemm with bf16 activations (`_weight_int4pack_mm_for_cpu`),
- `q4x8@ISA`: camelid's C++ kernel, integer path, for the host's ISA and for each lower level the host
  can run (so the AVX2 path is measured on an AVX-512 machine too, as `CAMELID_CPU_ISA=avx2` would run it),
- `dequant+gemm`: camelid's prefill path, q4x8 dequantizing into a scratch matrix + one dense GEMM
  (bf16 where the CPU has AVX512-BF16/AMX, else fp32),
- `int8pack`: torch's `_weight_int8pack_mm` (8-bit weights, bf16 activations: twice the bytes),
- `dense-bf16`: F.linear on already dequantized bf16 weights (4x the bytes; the GEMM alone),
- `inductor` (with --compile): torch.compile of dequantize-and-multiply from the q4x8 layout.
q4x8 weights sit on 2 MB huge pages as a loaded model's do (`runtime/hugepages.py`); `q4x8@ISA 4k-pages` is
the same kernel on ordinary pages. With --copies N each call uses the next of N copies of the weights, so they
stream from DRAM as in a decode step (one copy stays in the last-level cache after the first call).
Each cell is the best (min) and median wall time over --reps calls with --threads threads, and the
CPU time of the same call on one thread (`time.thread_time`, the work itself, less disturbed by other
processes on a shared machine than wall time).

    PYTHONPATH=src python benchmarks/kernels.py [--threads 2] [--reps 7] [--rows 1,4,16,32,64,128,512] [--copies 16] [--compile]

Prints a table and writes benchmarks/results/kernels.json (with the CPU model, flags and kernel path).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from camelid.runtime import cpu_kernels
from camelid.runtime import kernels as K
from camelid.runtime.cpu_features import ISA_FLAGS, ISA_LEVELS, cpu_features
from camelid.runtime.hugepages import huge_page_copy

RESULTS = Path(__file__).resolve().parent / "results" / "kernels.json"
SHAPES = ((11008, 4096), (4096, 11008))  # (out, in): gate/up and down of Llama-7B
GROUP = 128


def make_weights(n_out: int, n_in: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(0, 16, (n_in, n_out), generator=g, dtype=torch.int32)
    scales = torch.rand(n_in // GROUP, n_out, generator=g) * 0.02 + 0.005
    zeros = torch.full((n_in // GROUP, n_out), 8, dtype=torch.int32)
    w = K.GPTQWeight(q=q, zeros=zeros, scales=scales, g=torch.arange(n_in) // GROUP, perm=None, bits=4)
    q4x8 = K.prepare_q4x8(w, torch.device("cpu"))
    return {"int4": K.prepare_int4(w, torch.device("cpu")), "q4x8-4k-pages": q4x8,
            "q4x8": {**q4x8, "weight": huge_page_copy(q4x8["weight"])},  # as GPTQLinear holds it
            "dense": K.dequantize_sorted(w).to(torch.bfloat16).contiguous(),
            "int8": K.prepare_int8(K.GPTQWeight(q=q * 16, zeros=zeros[:1] * 16, scales=scales[:1] / 16,
                                                g=torch.zeros(n_in, dtype=torch.long), perm=None, bits=8),
                                   torch.device("cpu"), torch.bfloat16)}


def q4x8_call(ext, p: dict):
    return lambda x: ext.q4x8_mm(x.float(), p["weight"], p["scales"], p["scaled_zeros"], p["block"])


def contenders(weights: dict, compile_inductor: bool) -> dict:
    p4, p8, pq = weights["int4"], weights["int8"], weights["q4x8"]
    out = {
        "int4": lambda x: K.int4_mm(x, p4["weight"], p4["group_size"], p4["scales_and_zeros"]),
        "int8pack": lambda x: torch._weight_int8pack_mm(x, p8["weight"], p8["scales"]),
        "dense-bf16": lambda x: F.linear(x, weights["dense"]),
    }
    if cpu_kernels.load_extension() is not None:
        host = cpu_features().isa
        for isa in ISA_LEVELS[ISA_LEVELS.index(host):]:
            if isa != "generic" and ISA_FLAGS[isa] <= cpu_features().flags and cpu_kernels.load_extension(isa):
                ext = cpu_kernels.load_extension(isa)
                out[f"q4x8@{isa}"] = q4x8_call(ext, pq)
                if isa == host:  # the same kernel on ordinary 4 KB pages: what hugepages.huge_page_copy gains
                    out[f"q4x8@{isa} 4k-pages"] = q4x8_call(ext, weights["q4x8-4k-pages"])
        dense = K.q4x8_route(dense_from=1)
        out["dequant+gemm"] = lambda x: K.q4x8_mm(x, pq["weight"], pq["scales"], pq["scaled_zeros"], pq["block"], dense)
    if compile_inductor:
        n_out, half = pq["weight"].shape

        def dequant_mm(x, w, s, sz):  # the q4x8 layout: 32 bytes per 64 inputs, low nibbles first
            chunks = w.view(n_out, -1, 32)
            codes = torch.cat([chunks & 15, chunks >> 4], dim=2).view(n_out, -1, GROUP).to(torch.float32)
            return F.linear(x, (codes * s.unsqueeze(-1) - sz.unsqueeze(-1)).view(n_out, -1).to(x.dtype))

        compiled = torch.compile(dequant_mm, dynamic=False)
        out["inductor"] = lambda x: compiled(x, pq["weight"], pq["scales"], pq["scaled_zeros"])
    return out


def rotating(fns: list) -> object:
    """One call per weight copy in turn: with enough copies (--copies) the weights stream from DRAM, as in a
    decode step, rather than from the last-level cache."""
    turn = itertools.count()
    return lambda x: fns[next(turn) % len(fns)](x)


def time_call(f, x, reps: int, threads: int) -> dict:
    torch.set_num_threads(threads)
    f(x)  # warm-up: allocations, first-call paths, compilation
    wall = []
    for _ in range(reps):
        t0 = time.perf_counter()
        f(x)
        wall.append(time.perf_counter() - t0)
    torch.set_num_threads(1)
    cpu = []
    for _ in range(max(2, reps // 2)):
        t0 = time.thread_time()
        f(x)
        cpu.append(time.thread_time() - t0)
    return {"wall_ms_min": min(wall) * 1e3, "wall_ms_median": statistics.median(wall) * 1e3,
            "cpu_ms_1thread": min(cpu) * 1e3}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--rows", default="1,4,16,32,64,128,512")
    ap.add_argument("--copies", type=int, default=1,
                    help="weight copies used in turn (16: ~360 MB per shape, more than this Xeon's L3)")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile (inductor) dequant+matmul")
    args = ap.parse_args()
    status = cpu_kernels.status()
    feats = status["cpu"]
    print(f"CPU: {feats['model']}; flags: {' '.join(feats['flags'])}; ISA level {feats['isa']}; "
          f"C++ kernels: {status['cpp_kernels'] or status['cpp_kernels_unavailable']}; threads {args.threads}; "
          f"dense_rows {K.dense_rows()}; load average {os.getloadavg()[0]:.1f}")
    rows = [int(r) for r in args.rows.split(",")]
    results = []
    for n_out, n_in in SHAPES:
        per_copy = [contenders(make_weights(n_out, n_in, seed), args.compile) for seed in range(args.copies)]
        fns = {name: rotating([c[name] for c in per_copy]) for name in per_copy[0]}
        print(f"\n[{n_out} x {n_in}] wall ms min / median ({args.threads} threads), CPU ms (1 thread)")
        print(f"{'contender':<18}" + "".join(f"{'rows ' + str(m):>22}" for m in rows))
        for name, f in fns.items():
            cells = []
            for m in rows:
                x = torch.randn(m, n_in, generator=torch.Generator().manual_seed(m)).to(torch.bfloat16)
                r = time_call(f, x, args.reps, args.threads)
                results.append({"shape": [n_out, n_in], "contender": name, "rows": m, **r})
                cells.append(f"{r['wall_ms_min']:.2f}/{r['wall_ms_median']:.2f}/{r['cpu_ms_1thread']:.2f}")
            print(f"{name:<18}" + "".join(f"{c:>22}" for c in cells), flush=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS.with_suffix(".json.partial")
    tmp.write_text(json.dumps({"cpu": status, "threads": args.threads, "reps": args.reps, "group_size": GROUP,
                               "copies": args.copies,
                               "dense_rows": K.dense_rows(), "load_average_at_end": os.getloadavg(),
                               "torch": torch.__version__, "results": results}, indent=2))
    tmp.rename(RESULTS)
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
