"""MMLU 5-shot scoring speed: shared-prefix KV reuse + length batching vs one question per forward pass.

Both score the same prompts (open-instruct's MMLU 5-shot chat prompts, `camelid.eval.tasks.mmlu`) with
the same model; the baseline runs each full prompt alone (LM head at the last position only), camelid's
`next_token_logprobs` runs a subject's common prefix once and the question suffixes in length-sorted
batches on the broadcast KV cache. Predictions must be identical; the script fails otherwise. Timings are
process CPU seconds (robust to other load on a shared machine) and wall seconds, best of `--rounds`.

    PYTHONPATH=src python benchmarks/eval_prefix.py [--model PATH] [--subjects 4] [--per-subject 32] [--threads 1]

Prints a table and writes benchmarks/results/eval_prefix.json.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from camelid.runtime import cpu_kernels
from camelid.runtime.cpu_features import cpu_features

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "benchmarks" / "results"


def shared_data() -> Path:
    return Path(os.environ.get("CAMELID_SHARED_DATA") or REPO.parent / "shared" / "data")


def timed(fn):
    c, w = time.process_time(), time.perf_counter()
    out = fn()
    return out, time.process_time() - c, time.perf_counter() - w


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(shared_data() / "models" / "camel45m"))
    ap.add_argument("--data", default=str(shared_data() / "eval" / "mmlu"))
    ap.add_argument("--subjects", type=int, default=4, help="the first N subjects (sorted)")
    ap.add_argument("--per-subject", type=int, default=32, help="questions per subject")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()

    import torch

    import camelid
    from camelid.eval.prefix import next_token_logprobs, next_token_logprobs_baseline
    from camelid.eval.settings import EvalSettings
    from camelid.eval.tasks import mmlu

    torch.set_num_threads(args.threads)
    model, tok = camelid.load(args.model, device="cpu", dtype="float32")
    names = mmlu.subjects(Path(args.data))[: args.subjects]
    settings = EvalSettings("mmlu", shots=5, limit=args.per_subject, subsets=tuple(names))
    items, _ = mmlu.load_items(Path(args.data), settings, tok, model.config.max_position_embeddings)
    cand = [c.token_id for c in mmlu.candidates(tok)]
    groups = [[tok(it["prompt"])["input_ids"] for it in items if it["group"] == s] for s in names]
    n_tokens = sum(len(ids) for g in groups for ids in g)

    def run(fn):
        return torch.cat([fn(model, g, cand) for g in groups])

    best = {}
    for _ in range(args.rounds):
        for name, fn in (("baseline", next_token_logprobs_baseline), ("prefix", next_token_logprobs)):
            lps, cpu, wall = timed(lambda fn=fn: run(fn))
            if name not in best or cpu < best[name]["cpu_s"]:
                best[name] = {"cpu_s": cpu, "wall_s": wall, "pred": lps.argmax(-1).tolist(), "lp": lps}
    same = best["baseline"]["pred"] == best["prefix"]["pred"]
    max_diff = (best["baseline"]["lp"] - best["prefix"]["lp"]).abs().max().item()
    n = len(items)
    rows = []
    for name in ("baseline", "prefix"):
        b = best[name]
        rows.append({"method": name, "questions": n, "cpu_s": round(b["cpu_s"], 3), "wall_s": round(b["wall_s"], 3),
                     "q_per_cpu_s": round(n / b["cpu_s"], 2), "q_per_wall_s": round(n / b["wall_s"], 2)})
    speedup_cpu = best["baseline"]["cpu_s"] / best["prefix"]["cpu_s"]
    speedup_wall = best["baseline"]["wall_s"] / best["prefix"]["wall_s"]
    print(f"CPU: {cpu_features().describe()}; threads {args.threads}; {n} questions, {len(names)} subjects, "
          f"{n_tokens / n:.0f} prompt tokens/question; model {args.model}")
    print(f"{'method':<10} {'cpu s':>8} {'wall s':>8} {'q/cpu-s':>8} {'q/wall-s':>9}")
    for r in rows:
        print(f"{r['method']:<10} {r['cpu_s']:>8.2f} {r['wall_s']:>8.2f} {r['q_per_cpu_s']:>8.2f} {r['q_per_wall_s']:>9.2f}")
    print(f"speedup: {speedup_cpu:.2f}x CPU time, {speedup_wall:.2f}x wall; identical predictions: {same} "
          f"(max |logprob diff| {max_diff:.2e})")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = {"cpu": cpu_kernels.status(), "threads": args.threads, "model": args.model, "subjects": names,
           "rows": rows, "speedup_cpu": speedup_cpu, "speedup_wall": speedup_wall,
           "identical_predictions": same, "max_logprob_diff": max_diff}
    (RESULTS_DIR / "eval_prefix.json").write_text(json.dumps(out, indent=2))
    if not same:
        raise SystemExit("predictions differ between the prefix-cached and the baseline scoring")


if __name__ == "__main__":
    main()
