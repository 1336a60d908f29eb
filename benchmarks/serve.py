"""Load test of `camelid serve`: 1, 4 and 16 concurrent streaming clients, then a soak with disconnects.

    CAMELID_SHARED_DATA=/work/shared/data PYTHONPATH=src python benchmarks/serve.py [MODEL] [--threads 1]

Starts the server as a subprocess on a free loopback port, drives it over raw HTTP (one thread per
client, reading TGI's SSE stream), and reports total tokens/s, p50/p95 time to first token and errors
per concurrency level. The soak sends 300 requests of random length, a third of them abandoned by their
client mid-stream, then checks /health, `camelid_sequences_in_batch` == 0 and the server's RSS against
its post-warm-up level. With --hf-cb it also times Transformers' own continuous batching
(`generate_batch`, attn "paged|sdpa") on the same model for comparison. Prints a table and writes
benchmarks/results/serve.json.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = [
    "Once upon a time, there was a little",
    "The old man walked to the river and",
    "Question: What is 12 plus 7? Answer:",
    "def fibonacci(n):",
    "In the middle of the night, the cat",
    "The history of the city begins in",
    "Write a function that returns the sum of a list.",
    "She opened the box and found",
]


def shared_data() -> Path:
    env = os.environ.get("CAMELID_SHARED_DATA")
    return Path(env) if env else ROOT.parent / "shared" / "data"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str, port: int, threads: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    cmd = [sys.executable, "-m", "camelid.cli", "serve", model, "--port", str(port), "--threads", str(threads),
           "--max-total-tokens", "1024", "--max-input-tokens", "512", "--max-concurrent-requests", "128"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            if get(port, "/health")[0] == 200:
                return proc
        except OSError:
            time.sleep(0.3)
    raise SystemExit("server did not come up in 120 s")


def get(port: int, path: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read().decode()
    finally:
        conn.close()


def metric(port: int, name: str) -> float:
    for line in get(port, "/metrics")[1].splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise KeyError(name)


def stream_request(port: int, prompt: str, max_new_tokens: int, abandon_after: int | None = None) -> dict:
    """One /generate_stream call; `abandon_after` tokens then hang up (a disconnecting client)."""
    body = json.dumps({"inputs": prompt, "parameters": {"max_new_tokens": max_new_tokens}})
    start = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    out = {"tokens": 0, "ttft": None, "error": None, "abandoned": False}
    try:
        conn.request("POST", "/generate_stream", body, {"Content-Type": "application/json"})
        r = conn.getresponse()
        if r.status != 200:
            out["error"] = f"{r.status} {r.read()[:200]!r}"
            return out
        for raw in r:
            line = raw.strip()
            if not line.startswith(b"data:"):
                continue
            event = json.loads(line[5:])
            if "error" in event:
                out["error"] = event["error"]
                break
            out["tokens"] += 1
            if out["ttft"] is None:
                out["ttft"] = time.perf_counter() - start
            if abandon_after is not None and out["tokens"] >= abandon_after:
                out["abandoned"] = True
                break
            if event["details"] is not None:
                break
    except OSError as e:
        out["error"] = repr(e)
    finally:
        conn.close()
        out["seconds"] = time.perf_counter() - start
    return out


def load_level(port: int, clients: int, rounds: int, new_tokens: int) -> dict:
    """`clients` concurrent streaming clients, each sending `rounds` requests back to back."""

    def client(i: int) -> list[dict]:
        return [stream_request(port, PROMPTS[(i + r) % len(PROMPTS)], new_tokens) for r in range(rounds)]

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = [r for rs in pool.map(client, range(clients)) for r in rs]
    wall = time.perf_counter() - start
    ttfts = sorted(r["ttft"] for r in results if r["ttft"] is not None)
    tokens = sum(r["tokens"] for r in results)
    return {
        "clients": clients,
        "requests": len(results),
        "tokens": tokens,
        "seconds": round(wall, 3),
        "tokens_per_s": round(tokens / wall, 1),
        "ttft_p50_s": round(statistics.median(ttfts), 4) if ttfts else None,
        "ttft_p95_s": round(ttfts[min(len(ttfts) - 1, int(0.95 * len(ttfts)))], 4) if ttfts else None,
        "errors": sum(r["error"] is not None for r in results),
    }


def soak(port: int, proc: psutil.Process, requests: int, clients: int, seed: int) -> dict:
    rng = random.Random(seed)
    plans = []
    for i in range(requests):
        n = rng.randint(8, 64)
        plans.append((PROMPTS[i % len(PROMPTS)], n, rng.randint(1, n - 1) if rng.random() < 1 / 3 else None))
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(lambda p: stream_request(port, *p), plans))
    wall = time.perf_counter() - start
    deadline = time.monotonic() + 10
    while metric(port, "camelid_sequences_in_batch") != 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    return {
        "requests": requests,
        "abandoned": sum(r["abandoned"] for r in results),
        "errors": sum(r["error"] is not None for r in results),
        "seconds": round(wall, 2),
        "sequences_in_batch_after": metric(port, "camelid_sequences_in_batch"),
        "requests_in_flight_after": metric(port, "camelid_requests_in_flight"),
        "cancelled_total": metric(port, "camelid_request_cancelled_total"),
        "health_after": get(port, "/health")[0],
        "rss_after_mb": round(proc.memory_info().rss / 2**20, 1),
    }


def hf_continuous_batching(model: str, levels: list[int], new_tokens: int, threads: int) -> list[dict]:
    """Transformers' ContinuousBatchingManager via generate_batch, same prompts and token counts."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    torch.set_num_threads(threads)
    tok = AutoTokenizer.from_pretrained(model, use_fast=(Path(model) / "tokenizer.json").exists())
    lm = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32, attn_implementation="paged|sdpa").eval()
    config = GenerationConfig(max_new_tokens=new_tokens, do_sample=False, eos_token_id=-1, pad_token_id=0)
    lm.generate_batch(inputs=[tok(PROMPTS[0])["input_ids"]], generation_config=config)  # warm-up
    rows = []
    for n in levels:
        inputs = [tok(PROMPTS[i % len(PROMPTS)])["input_ids"] for i in range(n)]
        start = time.perf_counter()
        out = lm.generate_batch(inputs=inputs, generation_config=config)
        wall = time.perf_counter() - start
        tokens = sum(len(r.generated_tokens) for r in out.values())
        rows.append({"clients": n, "tokens": tokens, "seconds": round(wall, 3), "tokens_per_s": round(tokens / wall, 1)})
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?", default=str(shared_data() / "models" / "camel45m"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2, help="requests per client at each level")
    ap.add_argument("--levels", default="1,4,16")
    ap.add_argument("--soak", type=int, default=300)
    ap.add_argument("--hf-cb", action="store_true", help="also time Transformers' continuous batching")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "serve.json"))
    args = ap.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    from camelid.runtime import cpu_kernels, plan_kernels

    # The server runs on this host: its CPU, ISA level, C++ path and per-layer kernels are these.
    kernels = {**cpu_kernels.status(), "plan": plan_kernels(args.model, device="cpu").get("kernels")}
    print(f"CPU: {kernels['cpu']['model']}; flags: {' '.join(kernels['cpu']['flags'])}; kernels {kernels['plan']}; "
          f"C++: {kernels['cpp_kernels'] or kernels['cpp_kernels_unavailable']}", file=sys.stderr)

    port = free_port()
    server = start_server(args.model, port, args.threads)
    proc = psutil.Process(server.pid)
    try:
        load_level(port, 4, 1, 16)  # warm-up
        rss_warm = proc.memory_info().rss / 2**20
        rows = [load_level(port, n, args.rounds, args.new_tokens) for n in levels]
        soak_row = soak(port, proc, args.soak, 16, seed=0) if args.soak else None
    finally:
        server.terminate()
        server.wait(60)
    hf_rows = hf_continuous_batching(args.model, levels, args.new_tokens, args.threads) if args.hf_cb else None

    print(f"\ncamelid serve, {Path(args.model).name}, {args.new_tokens} new tokens, threads={args.threads}")
    print(f"{'clients':>7} {'requests':>8} {'tokens/s':>9} {'TTFT p50':>9} {'TTFT p95':>9} {'errors':>6}")
    for r in rows:
        print(f"{r['clients']:>7} {r['requests']:>8} {r['tokens_per_s']:>9.1f} {r['ttft_p50_s']:>8.3f}s "
              f"{r['ttft_p95_s']:>8.3f}s {r['errors']:>6}")
    speedup = rows[-1]["tokens_per_s"] / rows[0]["tokens_per_s"]
    print(f"throughput at {levels[-1]} clients = {speedup:.2f}x one client (target >= 4x)")
    if hf_rows:
        print("\nTransformers generate_batch (paged|sdpa), same prompts, in-process, no HTTP")
        for r in hf_rows:
            print(f"{r['clients']:>7} {r['tokens_per_s']:>9.1f} tokens/s")
    if soak_row:
        s = soak_row
        rss_ok = abs(s["rss_after_mb"] - rss_warm) <= 0.10 * rss_warm
        print(f"\nsoak: {s['requests']} requests, {s['abandoned']} abandoned mid-stream, {s['errors']} errors, "
              f"health {s['health_after']}, sequences left {s['sequences_in_batch_after']:.0f}, "
              f"RSS {rss_warm:.0f} -> {s['rss_after_mb']:.0f} MB ({'within' if rss_ok else 'OUTSIDE'} 10%)")
        soak_row.update(rss_warm_mb=round(rss_warm, 1), rss_within_10pct=rss_ok)
    result = {
        "model": args.model,
        "threads": args.threads,
        "new_tokens": args.new_tokens,
        "levels": rows,
        "speedup_max_vs_1": round(speedup, 2),
        "soak": soak_row,
        "hf_generate_batch": hf_rows,
        "kernels": kernels,
        "cpu_count": os.cpu_count(),
        "load_average_at_end": os.getloadavg(),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(args.out).with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
