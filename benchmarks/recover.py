"""Peak memory and wall time of `camelid recover` on a generated Llama model, against copying the inputs.

Targets (issue 2): peak RSS below 25% of the fp16 model size; wall time within 2x of copying the input
files (base + diff). The model has random weights (fp16, sharded); the "tuned" model is base + small noise,
the diff is made with `camelid make-diff` (fp32, as open-instruct diffs are). Everything is generated under
--workdir (default: a fresh folder in /tmp) and deleted afterwards.

    PYTHONPATH=src python benchmarks/recover.py            # ~1.7 GB model, needs ~15 GB free in /tmp
    PYTHONPATH=src python benchmarks/recover.py --layers 2 # quick smoke run (not a valid measurement)

Both sides run warm (inputs read once beforehand, so they sit in the page cache); each is timed --reps
times, alternating, and the best run is compared. The copy is `cp` of the input files followed by `sync`
of the copies, since recover fsyncs its shards.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "recover.json"


def llama_specs(hidden: int, inter: int, layers: int, vocab: int):
    from camelid.checkpoint import TensorSpec

    f16 = torch.float16
    specs = [TensorSpec("model.embed_tokens.weight", f16, (vocab, hidden))]
    for i in range(layers):
        p = f"model.layers.{i}."
        specs += [TensorSpec(p + f"self_attn.{n}_proj.weight", f16, (hidden, hidden)) for n in "qkvo"]
        specs += [TensorSpec(p + "mlp.gate_proj.weight", f16, (inter, hidden)),
                  TensorSpec(p + "mlp.up_proj.weight", f16, (inter, hidden)),
                  TensorSpec(p + "mlp.down_proj.weight", f16, (hidden, inter)),
                  TensorSpec(p + "input_layernorm.weight", f16, (hidden,)),
                  TensorSpec(p + "post_attention_layernorm.weight", f16, (hidden,))]
    specs += [TensorSpec("model.norm.weight", f16, (hidden,)), TensorSpec("lm_head.weight", f16, (vocab, hidden))]
    return specs


def write_random_model(out: Path, specs, config: dict, seed: int, base: Path | None = None) -> None:
    """Random fp16 weights streamed to sharded safetensors; with `base`, base + N(0, 1e-3) noise instead."""
    from camelid.checkpoint import Checkpoint, row_slices, save_sharded

    gen = torch.Generator().manual_seed(seed)
    src = Checkpoint(base) if base else None

    def chunks():
        for spec in specs:
            for rows in row_slices(spec.shape):
                if src is not None:
                    b = src.read(spec.name, rows=rows).float()
                    yield spec.name, (b + 1e-3 * torch.randn(b.shape, generator=gen)).half()
                elif len(spec.shape) == 1:
                    yield spec.name, torch.ones(spec.shape, dtype=torch.float16)
                else:
                    n = (rows.stop - rows.start,) + spec.shape[1:]
                    yield spec.name, (0.02 * torch.randn(n, generator=gen)).half()

    out.mkdir(parents=True)
    save_sharded(out, specs, chunks(), max_shard_size="1GB")
    (out / "config.json").write_text(json.dumps(config, indent=2))


def run_measured(cmd: list[str], env: dict | None = None) -> tuple[float, int]:
    """Wall seconds and peak RSS (bytes) of one child process, from wait4's rusage for that child only."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}")
    return wall, usage.ru_maxrss * 1024  # Linux reports KiB


def files_of(*folders: Path) -> list[Path]:
    return [p for f in folders for p in sorted(f.iterdir()) if p.is_file()]


def main() -> int:
    from camelid.runtime.cpu_features import cpu_features

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--intermediate", type=int, default=5632)
    ap.add_argument("--layers", type=int, default=14)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=None, help="scratch folder (deleted afterwards)")
    ap.add_argument("--keep", action="store_true", help="keep the generated models")
    args = ap.parse_args()
    torch.set_num_threads(2)

    work = Path(tempfile.mkdtemp(prefix="camelid-bench-", dir=args.workdir or "/tmp"))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    camelid = [sys.executable, "-m", "camelid.cli"]
    try:
        specs = llama_specs(args.hidden, args.intermediate, args.layers, args.vocab)
        config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": args.hidden,
                  "intermediate_size": args.intermediate, "num_hidden_layers": args.layers,
                  "num_attention_heads": args.hidden // 128, "num_key_value_heads": args.hidden // 128,
                  "vocab_size": args.vocab, "rms_norm_eps": 1e-5, "tie_word_embeddings": False,
                  "torch_dtype": "float16"}
        base, tuned, diff = work / "base", work / "tuned", work / "diff"
        t0 = time.perf_counter()
        write_random_model(base, specs, config, seed=0)
        write_random_model(tuned, specs, config, seed=1, base=base)
        gen_s = time.perf_counter() - t0
        model_bytes = sum(p.stat().st_size for p in base.glob("*.safetensors"))
        print(f"generated base + tuned ({model_bytes / 1e9:.2f} GB each, fp16) in {gen_s:.0f} s", flush=True)

        diff_s, diff_rss = run_measured(camelid + ["make-diff", "--base", str(base), "--tuned", str(tuned),
                                                    "--out", str(diff), "--max-shard-size", "1GB"], env)
        shutil.rmtree(tuned)
        inputs = files_of(base, diff)
        input_bytes = sum(p.stat().st_size for p in inputs)
        print(f"make-diff: {diff_s:.1f} s, peak RSS {diff_rss / 1e6:.0f} MB; inputs {input_bytes / 1e9:.2f} GB",
              flush=True)
        for p in inputs:  # warm the page cache for both contenders alike
            subprocess.run(["cat", str(p)], stdout=subprocess.DEVNULL, check=True)

        copy_runs, recover_runs = [], []
        for rep in range(args.reps):
            dest = work / "copy"
            dest.mkdir()
            t0 = time.perf_counter()
            subprocess.run(["cp", "-r", str(base), str(diff), str(dest)], check=True)
            cp_only = time.perf_counter() - t0
            subprocess.run(["sync", *map(str, files_of(dest / "base", dest / "diff"))], check=True)
            copy_runs.append({"cp_s": cp_only, "cp_sync_s": time.perf_counter() - t0})
            shutil.rmtree(dest)

            out = work / "recovered"
            wall, rss = run_measured(camelid + ["recover", "--base", str(base), "--diff", str(diff),
                                                "--out", str(out), "--dtype", "float16", "--overwrite",
                                                "--max-shard-size", "1GB"], env)
            out_bytes = sum(p.stat().st_size for p in out.glob("*.safetensors"))
            recover_runs.append({"wall_s": wall, "peak_rss_bytes": rss, "output_bytes": out_bytes})
            shutil.rmtree(out)
            print(f"rep {rep}: cp {cp_only:.1f} s (with sync {copy_runs[-1]['cp_sync_s']:.1f} s), "
                  f"recover {wall:.1f} s, peak RSS {rss / 1e6:.0f} MB", flush=True)

        best_cp = min(r["cp_s"] for r in copy_runs)
        best_cp_sync = min(r["cp_sync_s"] for r in copy_runs)
        best_rec = min(r["wall_s"] for r in recover_runs)
        peak = max(r["peak_rss_bytes"] for r in recover_runs)
        result = {
            "model": {**config, "parameters": sum(torch.Size(s.shape).numel() for s in specs),
                      "fp16_bytes": model_bytes},
            "diff_dtype": "float32", "input_bytes": input_bytes,
            "make_diff": {"wall_s": diff_s, "peak_rss_bytes": diff_rss},
            "copy_runs": copy_runs, "recover_runs": recover_runs,
            "peak_rss_fraction_of_model": peak / model_bytes,
            "recover_over_cp": best_rec / best_cp, "recover_over_cp_sync": best_rec / best_cp_sync,
            "targets": {"peak_rss_below_25pct": peak / model_bytes < 0.25,
                        "wall_within_2x_copy": best_rec / best_cp <= 2.0},
            "machine": {"cpus": os.cpu_count(), "cpu": cpu_features().summary(), "python": platform.python_version(),
                        "torch": torch.__version__,
                        "note": "shared 2-core machine; other agents were using the CPU during the run"},
        }
        rows = [
            ("model (fp16, random)", f"{model_bytes / 1e9:.2f} GB, {args.layers} layers, hidden {args.hidden}"),
            ("inputs: base fp16 + diff fp32", f"{input_bytes / 1e9:.2f} GB"),
            ("copy inputs: cp / cp+sync (best)", f"{best_cp:.1f} s / {best_cp_sync:.1f} s"),
            ("camelid recover (best)", f"{best_rec:.1f} s"),
            ("recover / cp, recover / cp+sync", f"{best_rec / best_cp:.2f}x, {best_rec / best_cp_sync:.2f}x"
                                                f"  (target <= 2x: {'PASS' if best_rec / best_cp <= 2 else 'FAIL'})"),
            ("recover peak RSS", f"{peak / 1e6:.0f} MB = {100 * peak / model_bytes:.1f}% of model"
                                 f"  (target < 25%: {'PASS' if peak / model_bytes < 0.25 else 'FAIL'})"),
            ("make-diff (not a target)", f"{diff_s:.1f} s, peak RSS {diff_rss / 1e6:.0f} MB"),
        ]
        width = max(len(r[0]) for r in rows)
        print()
        for k, v in rows:
            print(f"{k:<{width}}  {v}")
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nwrote {RESULTS}")
        return 0
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
