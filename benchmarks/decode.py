"""Batch-1 CPU decode and prefill speed: camelid 4-bit vs Transformers (fp32, bf16, + GPTQModel) and llama.cpp.

The model is a Llama with two Llama-7B-shaped layers (hidden 4096, intermediate 11008, 32 heads, vocab
32000, untied head) and random weights. From one fp16 checkpoint the script writes
- a GPTQ checkpoint, 4-bit, group 128, symmetric, v1 format, RTN (round-to-nearest: speed does not depend
  on how the codes were chosen), lm_head quantized as well (GPTQModel's `lm_head: true`), and
- a llama.cpp GGUF with every matrix in Q4_0 (output.weight included), written by `camelid export gguf`
  (tokenizer from the LLaMA-2 tokenizer.model in shared data, never copied into the repo),
so every quantized contender runs the same weights at ~4.5 bits. Each contender runs in its own
subprocess (peak RSS is that process' own VmHWM) with 2 threads, `--rounds` times in rotating order; decode is
the median per-token step of 128 greedy tokens after a `--context`-token prompt (default 12; 512 and 1,920
measure the KV cache at long contexts) (HF: `generate()`, timed per step by a logits processor; camelid: its
own `generate_ids` loop; llama.cpp: `eval` + argmax), and the round with the fastest decode is reported.
camelid runs three ways: `camelid` (the kernel `choose_kernel` picks on this CPU), `camelid-int4` (torch's
int4 tinygemm forced, the round-one path) and `camelid-avx2` (CAMELID_CPU_ISA=avx2: the kernels an
AVX2-only CPU gets, run on this one).
llama-cpp-python must be built for the host's features, not -march=native (camelid.runtime.llamacpp_build
says why; `make test` builds it so); `--llamacpp-cmake-args` prints the CMAKE_ARGS for this host:

    CMAKE_ARGS="$(python benchmarks/decode.py --llamacpp-cmake-args)" pip install --no-binary llama-cpp-python llama-cpp-python
    PYTHONPATH=src python benchmarks/decode.py [--workdir /tmp/camelid-bench-decode] [--only camelid,llamacpp-q4_0] [--rounds 2]

Prints the CPU model and features, a table, and writes benchmarks/results/decode.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "benchmarks" / "results"
CONTENDERS = ("hf-fp32", "hf-bf16", "hf-gptqmodel", "llamacpp-q4_0", "camelid", "camelid-int4", "camelid-avx2")
THREADS = 2
PROMPT_LEN, NEW_TOKENS, PREFILL_LEN = 12, 128, 512  # PROMPT_LEN is --context
CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu", "hidden_size": 4096,
    "intermediate_size": 11008, "num_hidden_layers": 2, "num_attention_heads": 32, "num_key_value_heads": 32,
    "vocab_size": 32000, "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
    "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "float16",
}
BITS, GROUP = 4, 128


def shared_data() -> Path:
    return Path(os.environ.get("CAMELID_SHARED_DATA") or REPO.parent / "shared" / "data")


# --- preparing the three checkpoints --------------------------------------------------------------------


def write_hf(out: Path) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**CONFIG)).to(torch.float16)  # init std 0.02, norms 1
    model.save_pretrained(out)
    sp = shared_data() / "tokenizers" / "llama2" / "tokenizer.model"
    (out / "tokenizer.model").write_bytes(sp.read_bytes())
    (out / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "LlamaTokenizer", "legacy": True}))


def write_gptq(hf: Path, out: Path) -> None:
    import torch
    from safetensors.torch import save_file

    from camelid.checkpoint import open_checkpoint
    from camelid.formats.gptq.layout import pack_linear
    from camelid.quant.gptq import rtn
    from camelid.quant.settings import QuantParams

    ckpt = open_checkpoint(hf)
    tensors = {}
    for name, t in ckpt.iter_tensors():
        if t.ndim == 2 and "embed_tokens" not in name:
            prefix = name.removesuffix(".weight")
            res = rtn(t, QuantParams(BITS, GROUP, sym=True, method="rtn"))
            tensors.update(pack_linear(prefix, res.q, res.scales, res.zeros, res.g_idx, BITS))
        else:
            tensors[name] = t
    out.mkdir(parents=True)
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    qcfg = {"bits": BITS, "group_size": GROUP, "desc_act": False, "sym": True, "lm_head": True,
            "quant_method": "gptq", "checkpoint_format": "gptq", "pack_dtype": "int32",
            "meta": {"quantizer": ["camelid-bench-rtn"], "damp_percent": 0.01, "static_groups": False,
                     "true_sequential": True, "mse": 0.0}}
    cfg = json.loads((hf / "config.json").read_text())
    cfg["quantization_config"] = qcfg
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    (out / "quantize_config.json").write_text(json.dumps(qcfg, indent=2))
    for f in ("tokenizer.model", "tokenizer_config.json", "generation_config.json"):
        (out / f).write_bytes((hf / f).read_bytes())
    del torch


def write_gguf(hf: Path, out: Path) -> None:
    from camelid.export import GGUFExport, export_gguf

    # camelid's Q4_0 export writes every matrix (output.weight included) in Q4_0, Q/K permuted as llama.cpp's
    # converter does, the vocabulary from the checkpoint's tokenizer.model.
    folder = out.with_name(out.name + ".d")
    (path,) = export_gguf(hf, folder, GGUFExport(types=("q4_0",), name="camelid-bench-2x7b-layers", overwrite=True))
    path.rename(out)
    folder.rmdir()


def prepare(workdir: Path) -> dict[str, Path]:
    paths = {"hf": workdir / "hf", "gptq": workdir / "gptq-4bit-g128", "gguf": workdir / "model-q4_0.gguf"}
    workdir.mkdir(parents=True, exist_ok=True)
    steps = [("hf", lambda tmp: write_hf(tmp)), ("gptq", lambda tmp: write_gptq(paths["hf"], tmp)),
             ("gguf", lambda tmp: write_gguf(paths["hf"], tmp))]
    for key, write in steps:
        if not paths[key].exists():
            t0 = time.time()
            tmp = paths[key].with_name(paths[key].name + ".partial")
            subprocess.run(["rm", "-rf", str(tmp)], check=True)
            write(tmp)
            tmp.rename(paths[key])
            print(f"wrote {paths[key]} in {time.time() - t0:.0f}s", file=sys.stderr)
    return paths


# --- one contender, in its own process ------------------------------------------------------------------


def _prompt(n: int) -> list[int]:
    import random

    rnd = random.Random(n)
    return [1] + [rnd.randrange(3, 32000) for _ in range(n - 1)]


def _now() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _gaps(ticks: list[tuple[float, float]]) -> list[tuple[float, float]]:
    return [(b[0] - a[0], b[1] - a[1]) for a, b in zip(ticks[:-1], ticks[1:], strict=True)]


def _summary(steps: list[tuple[float, float]], prefill: list[tuple[float, float]]) -> dict:
    # Other agents share this machine's 2 cores: the median step and the best prefill are the numbers
    # least disturbed by them (the mean is reported too). CPU time (all of the process' threads) is less
    # disturbed than wall time; with --threads 1 it is the work itself (with more threads it includes
    # OpenMP spin-waiting, which llama.cpp does a lot of).
    wall, cpu = sorted(w for w, _ in steps), sorted(c for _, c in steps)
    return {"decode_ms_per_token": wall[len(wall) // 2] * 1e3,
            "decode_ms_per_token_mean": sum(wall) / len(wall) * 1e3,
            "decode_ms_per_token_min": wall[0] * 1e3,
            "decode_cpu_ms_per_token": cpu[len(cpu) // 2] * 1e3,
            "prefill_tokens_per_s": PREFILL_LEN / min(w for w, _ in prefill),
            "prefill_tokens_per_cpu_s": PREFILL_LEN / min(c for _, c in prefill)}


def peak_rss_mb() -> float:
    """This process' own peak RSS. Not ru_maxrss: Linux carries the forking parent's high-water mark over
    exec into it, so every contender reported at least the driver's RSS (3,149 MB after writing the
    checkpoints); VmHWM belongs to the process' own address space."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _time_steps_and_prefill(model, generate) -> dict:
    """`generate(n)` -> n-1 decode step times, after a warm-up; then the best of two 512-token prefills."""
    import torch

    generate(8)  # warm-up (allocations, first-call paths)
    steps = generate(NEW_TOKENS)
    ids = torch.tensor([_prompt(PREFILL_LEN)])
    prefill = []
    with torch.inference_mode():
        model(ids[:, :64])
        for _ in range(2):
            t0 = _now()
            model(ids, logits_to_keep=1)
            prefill.append(_gaps([t0, _now()])[0])
    return _summary(steps, prefill)


def _time_hf(model) -> dict:
    import torch
    from transformers import LogitsProcessor, LogitsProcessorList

    class Clock(LogitsProcessor):  # called once per generated token: the gaps are the decode steps
        def __init__(self):
            self.ticks = []

        def __call__(self, input_ids, scores):
            self.ticks.append(_now())
            return scores

    def generate(n_new: int) -> list[tuple[float, float]]:
        ids = torch.tensor([_prompt(PROMPT_LEN)])
        clock = Clock()
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n_new, min_new_tokens=n_new,
                                 do_sample=False, pad_token_id=0, logits_processor=LogitsProcessorList([clock]))
        assert out.shape[1] == PROMPT_LEN + n_new
        return _gaps(clock.ticks)

    return _time_steps_and_prefill(model, generate)


def _time_camelid(model) -> dict:
    """camelid's own loop (`generate_ids`: preallocated KV cache, greedy `Sampler`), timed between yielded ids."""
    from camelid.runtime.generate import generate_ids
    from camelid.runtime.sampling import Sampler, SamplingParams

    def generate(n_new: int) -> list[tuple[float, float]]:
        ticks = []
        for _ in generate_ids(model, _prompt(PROMPT_LEN), n_new, Sampler(SamplingParams(temperature=0))):
            ticks.append(_now())
        assert len(ticks) == n_new
        return _gaps(ticks)

    return _time_steps_and_prefill(model, generate)


def _time_llamacpp(llm) -> dict:
    import numpy as np

    def generate(n_new: int) -> list[tuple[float, float]]:
        llm.reset()
        llm.eval(_prompt(PROMPT_LEN))
        ticks = [_now()]
        for _ in range(n_new - 1):  # greedy, as the HF contenders
            # logits_all=False keeps only the last row, as the HF contenders' logits_to_keep=1
            last = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),))
            llm.eval([int(np.argmax(last))])
            ticks.append(_now())
        return _gaps(ticks)

    generate(8)
    steps = generate(NEW_TOKENS)
    prefill = []
    for _ in range(2):
        llm.reset()
        t0 = _now()
        llm.eval(_prompt(PREFILL_LEN))
        prefill.append(_gaps([t0, _now()])[0])
    return _summary(steps, prefill)


def run_contender(name: str, paths: dict[str, Path]) -> dict:
    import torch

    torch.set_num_threads(THREADS)
    t0 = time.perf_counter()
    info: dict = {}
    if name in ("hf-fp32", "hf-bf16"):
        from transformers import AutoModelForCausalLM

        dtype = torch.float32 if name == "hf-fp32" else torch.bfloat16
        model = AutoModelForCausalLM.from_pretrained(paths["hf"], dtype=dtype).eval()
    elif name == "hf-gptqmodel":
        os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(THREADS))
        from gptqmodel import GPTQModel

        model = GPTQModel.load(str(paths["gptq"]), device="cpu").model.eval()
        info["kernel"] = type(model.model.layers[0].self_attn.q_proj).__name__
        info["lm_head"] = type(model.lm_head).__name__
    elif name.startswith("camelid"):
        import camelid
        from camelid.runtime import describe_kernels

        model, _ = camelid.load(paths["gptq"], kernel="int4" if name == "camelid-int4" else "auto")
        described = describe_kernels(model)
        info["kernels"], info["cpu_kernels"] = described["kernels"], described["cpu"]
    elif name == "llamacpp-q4_0":
        import llama_cpp
        from llama_cpp import Llama

        llm = Llama(model_path=str(paths["gguf"]), n_threads=THREADS, n_threads_batch=THREADS,
                    n_ctx=max(1024, PROMPT_LEN + NEW_TOKENS + 8),
                    n_batch=PREFILL_LEN, n_ubatch=PREFILL_LEN, logits_all=False, verbose=False)
        info["system_info"] = llama_cpp.llama_print_system_info().decode().strip()
    else:
        raise SystemExit(f"unknown contender {name}")
    load_s = time.perf_counter() - t0
    if name == "llamacpp-q4_0":
        timings = _time_llamacpp(llm)
    else:
        timings = _time_camelid(model) if name.startswith("camelid") else _time_hf(model)
    return {"contender": name, "load_s": load_s, **timings, "peak_rss_mb": peak_rss_mb(), **info}


# --- driver ---------------------------------------------------------------------------------------------


def main() -> None:
    global THREADS, PROMPT_LEN
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/camelid-bench-decode"))
    ap.add_argument("--only", default=",".join(CONTENDERS), help="comma-separated subset of " + ", ".join(CONTENDERS))
    ap.add_argument("--rounds", type=int, default=2, help="runs per contender (the fastest is reported)")
    ap.add_argument("--threads", type=int, default=THREADS, help="CPU threads per contender (the issue's setting: 2)")
    ap.add_argument("--context", type=int, default=PROMPT_LEN,
                    help=f"prompt tokens before the timed decode steps (default {PROMPT_LEN}); decode then runs at "
                         f"positions CONTEXT..CONTEXT+{NEW_TOKENS}, at most {CONFIG['max_position_embeddings']}")
    ap.add_argument("--contender", help=argparse.SUPPRESS)  # internal: run one contender and print JSON
    ap.add_argument("--llamacpp-cmake-args", action="store_true", help="print CMAKE_ARGS for a native llama.cpp build")
    args = ap.parse_args()
    THREADS, PROMPT_LEN = args.threads, args.context
    if not 0 < PROMPT_LEN <= CONFIG["max_position_embeddings"] - NEW_TOKENS:
        ap.error(f"--context must be in 1..{CONFIG['max_position_embeddings'] - NEW_TOKENS}")
    from camelid.runtime.cpu_features import cpu_features

    cpu = cpu_features()
    if args.llamacpp_cmake_args:
        from camelid.runtime.llamacpp_build import llamacpp_cmake_args

        print(llamacpp_cmake_args(cpu.flags))
        return
    if args.contender:
        paths = {"hf": args.workdir / "hf", "gptq": args.workdir / "gptq-4bit-g128", "gguf": args.workdir / "model-q4_0.gguf"}
        print("RESULT " + json.dumps(run_contender(args.contender, paths)))
        return
    print(f"CPU: {cpu.describe()}; {THREADS} threads; decode after {PROMPT_LEN} prompt tokens", file=sys.stderr)
    paths = prepare(args.workdir)
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS), "GPTQMODEL_CPU_WORKERS": str(THREADS),
           "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    names = args.only.split(",")
    runs: dict[str, list[dict]] = {n: [] for n in names}
    for rnd in range(args.rounds):
        # Rotate the order each round so no contender always runs in the same (busy or quiet) slot.
        for name in names[rnd % len(names):] + names[:rnd % len(names)]:
            proc = subprocess.run([sys.executable, __file__, "--workdir", str(args.workdir), "--contender", name,
                                   "--threads", str(THREADS), "--context", str(PROMPT_LEN)],
                                  env={**env, "CAMELID_CPU_ISA": "avx2"} if name == "camelid-avx2" else env,
                                  capture_output=True, text=True)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode or not lines:
                print(f"{name}: failed (exit {proc.returncode})\n{proc.stderr[-2000:]}", file=sys.stderr)
                runs[name].append({"contender": name, "round": rnd, "error": proc.stderr.strip().splitlines()[-1:] or ["?"]})
                continue
            runs[name].append({**json.loads(lines[-1][len("RESULT "):]), "round": rnd})
            print(json.dumps(runs[name][-1]), file=sys.stderr)
    # Per contender, the round with the fastest decode (the one least disturbed by other processes).
    rows = []
    for name in names:
        ok = [r for r in runs[name] if "error" not in r]
        rows.append(min(ok, key=lambda r: r["decode_ms_per_token"]) if ok else runs[name][-1])
    ref = {r["contender"]: r for r in rows if "error" not in r}
    print(f"\n{'contender':<16} {'decode ms/tok':>13} {'(min)':>7} {'(CPU ms)':>8} {'prefill tok/s':>13} "
          f"{'(per CPU s)':>11} {'load s':>7} {'peak RSS MB':>11}")
    for r in rows:
        if "error" in r:
            print(f"{r['contender']:<16} failed: {r['error'][0]}")
            continue
        print(f"{r['contender']:<16} {r['decode_ms_per_token']:>13.1f} {r['decode_ms_per_token_min']:>7.1f} "
              f"{r['decode_cpu_ms_per_token']:>8.1f} {r['prefill_tokens_per_s']:>13.1f} {r['prefill_tokens_per_cpu_s']:>11.1f} "
              f"{r['load_s']:>7.1f} {r['peak_rss_mb']:>11.0f}")
    ratios = {}
    if "camelid" in ref:
        c = ref["camelid"]
        for other, target in (("llamacpp-q4_0", 0.9), ("hf-fp32", 0.45)):
            if other in ref:
                ratios[f"camelid/{other}"] = {"ratio": c["decode_ms_per_token"] / ref[other]["decode_ms_per_token"],
                                              "target": target}
                print(f"camelid / {other} decode: {ratios[f'camelid/{other}']['ratio']:.2f} (target <= {target})")
        if "llamacpp-q4_0" in ref:
            ratios["camelid/llamacpp-q4_0 prefill tok/s"] = {
                "ratio": c["prefill_tokens_per_s"] / ref["llamacpp-q4_0"]["prefill_tokens_per_s"], "target": ">= 1.0"}
            print(f"camelid / llamacpp-q4_0 prefill tok/s: {ratios['camelid/llamacpp-q4_0 prefill tok/s']['ratio']:.2f}"
                  " (target >= 1.0)")
    stem = "decode" + ("" if THREADS == 2 else f"-{THREADS}threads") + ("" if args.context == 12 else f"-context{args.context}")
    results = RESULTS_DIR / f"{stem}.json"
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps({
        "setup": {"model": "Llama, 2 layers of Llama-7B shape, random weights, untied head", "threads": THREADS,
                  "prompt_tokens": PROMPT_LEN, "new_tokens": NEW_TOKENS, "prefill_tokens": PREFILL_LEN,
                  "quantized": f"{BITS}-bit g{GROUP} (GPTQ, lm_head too) / Q4_0 (all matrices)",
                  "rounds": args.rounds, "cpu_threads_available": os.cpu_count(), "cpu": cpu.summary(),
                  "context": PROMPT_LEN,
                  "load_average_at_end": os.getloadavg()},
        "results": rows, "ratios": ratios, "all_runs": runs}, indent=2))
    print(f"wrote {results}")


if __name__ == "__main__":
    main()
