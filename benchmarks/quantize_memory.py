"""Bounded memory: GPTQ-quantize a generated Llama far larger than one layer, measure peak RSS.

Writes a random-weight Llama with Llama-7B shapes (hidden 4096, MLP 11008, 32 heads, vocab 32000,
untied head) of `--layers` layers in fp16 to a temp folder, streaming it with camelid's checkpoint
writer (never more than one tensor in memory), then quantizes it (4-bit g128, few calibration
samples) in a subprocess and reports that process's peak RSS (VmHWM) against the model's size.
Everything is deleted afterwards. Heavy: ~1 minute per layer on 2 cores.

    PYTHONPATH=src python benchmarks/quantize_memory.py --layers 20
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

ROOT = Path(__file__).resolve().parents[1]
SHAPES = {"hidden_size": 4096, "intermediate_size": 11008, "num_attention_heads": 32, "num_key_value_heads": 32,
          "vocab_size": 32000}


def generate(path: Path, layers: int, seed: int = 0) -> int:
    """Random fp16 Llama (std 0.02, norms 1) written tensor by tensor; returns its size in bytes."""
    import torch

    from camelid.checkpoint import TensorSpec, save_sharded, write_json

    h, m, v = SHAPES["hidden_size"], SHAPES["intermediate_size"], SHAPES["vocab_size"]
    shapes = {"model.embed_tokens.weight": (v, h)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes.update({p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,)})
        for n in ("q_proj", "k_proj", "v_proj", "o_proj"):
            shapes[p + f"self_attn.{n}.weight"] = (h, h)
        shapes.update({p + "mlp.gate_proj.weight": (m, h), p + "mlp.up_proj.weight": (m, h),
                       p + "mlp.down_proj.weight": (h, m)})
    shapes.update({"model.norm.weight": (h,), "lm_head.weight": (v, h)})
    specs = [TensorSpec(n, torch.float16, s) for n, s in shapes.items()]
    gen = torch.Generator().manual_seed(seed)

    def tensors():
        for spec in specs:
            if len(spec.shape) == 1:
                yield spec.name, torch.ones(spec.shape, dtype=torch.float16)
                continue
            for r in range(0, spec.shape[0], 1024):  # row chunks: bounded memory while generating
                rows = min(1024, spec.shape[0] - r)
                yield spec.name, (torch.randn(rows, spec.shape[1], generator=gen) * 0.02).to(torch.float16)

    path.mkdir(parents=True)
    save_sharded(path, specs, tensors(), max_shard_size="2GB")
    write_json(path / "config.json", {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "num_hidden_layers": layers,
        "hidden_act": "silu", "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "tie_word_embeddings": False, "torch_dtype": "float16", "bos_token_id": 1, "eos_token_id": 2, **SHAPES})
    return sum(s.nbytes for s in specs)


def child(model: str, out: str, nsamples: int, seq_len: int) -> None:
    import torch

    from camelid.quant import QuantParams, RunOptions, quantize

    torch.set_num_threads(2)
    ids = torch.randint(3, SHAPES["vocab_size"], (nsamples, seq_len), generator=torch.Generator().manual_seed(0))
    t0 = time.perf_counter()
    quantize(model, out, QuantParams(bits=4, group_size=128), options=RunOptions(device="cpu"), calibration=ids)
    peak = next(int(x.split()[1]) for x in Path("/proc/self/status").read_text().splitlines()
                if x.startswith("VmHWM:"))
    print("RESULT " + json.dumps({"quant_s": time.perf_counter() - t0, "peak_rss_bytes": peak * 1024}), flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=20)
    ap.add_argument("--nsamples", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--tmp", default=tempfile.gettempdir())
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "quantize_memory.json"))
    args = ap.parse_args()
    if args.child:
        child(*args.child, args.nsamples, args.seq_len)
        return 0
    work = Path(tempfile.mkdtemp(prefix="camelid-quant-memory-", dir=args.tmp))
    try:
        t0 = time.perf_counter()
        size = generate(work / "model", args.layers)
        gen_s = time.perf_counter() - t0
        print(f"generated {size / 1e9:.2f} GB in {gen_s:.0f} s", flush=True)
        env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, __file__, "--child", str(work / "model"), str(work / "q"),
                               "--nsamples", str(args.nsamples), "--seq-len", str(args.seq_len)],
                              env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode or not lines:
            print(proc.stderr[-4000:], file=sys.stderr)
            return 1
        r = json.loads(lines[-1][7:])
        qsize = sum(f.stat().st_size for f in (work / "q").glob("*.safetensors"))
        res = {"layers": args.layers, "shapes": SHAPES, "model_bytes_fp16": size, "quantized_bytes": qsize,
               "calibration": f"{args.nsamples} x {args.seq_len} random tokens", "settings": "4-bit g128 GPTQ",
               "peak_rss_bytes": r["peak_rss_bytes"], "peak_rss_fraction": r["peak_rss_bytes"] / size,
               "target_fraction": 0.25, "ok": r["peak_rss_bytes"] < 0.25 * size, "quant_s": r["quant_s"],
               "wall_s": wall}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    from camelid.runtime.cpu_features import cpu_features

    res["cpu"] = cpu_features().summary()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"model {size / 1e9:.2f} GB fp16 ({args.layers} layers, Llama-7B shapes) -> {qsize / 1e9:.2f} GB 4-bit; "
          f"peak RSS {r['peak_rss_bytes'] / 1e9:.2f} GB = {100 * res['peak_rss_fraction']:.1f}% of the model "
          f"(target < 25%: {'ok' if res['ok'] else 'MISSED'}); quantization {r['quant_s']:.0f} s")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
