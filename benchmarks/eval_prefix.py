"""Shared-prefix KV reuse in the Tulu eval: MMLU 5-shot scoring and GSM8K 8-shot generation.

`--task mmlu` (default): both score the same prompts (open-instruct's MMLU 5-shot chat prompts,
`camelid.eval.tasks.mmlu`) with the same model; the baseline runs each full prompt alone (LM head at the
last position only), camelid's `next_token_logprobs` runs a subject's common prefix once and the question
suffixes in length-sorted batches on the broadcast KV cache.

`--task gsm8k`: both generate greedily for the same GSM8K CoT chat prompts (the eight exemplars are every
prompt's first ~780 tokens) in the same batches of `camelid.eval.backends.GENERATION_BATCH`; the baseline
prefills each full prompt (`camelid.runtime.batch.prefill`, the path before the prefix cache), camelid's
`LocalBackend.generate` runs the exemplars once and prefills only the questions (`eval.prefix.prefill_after`).

Predictions (MMLU) or completions (GSM8K) must be identical; the script fails otherwise. Timings are
process CPU seconds (robust to other load on a shared machine) and wall seconds, best of `--rounds`.

    PYTHONPATH=src python benchmarks/eval_prefix.py [--model PATH] [--subjects 4] [--per-subject 32] [--threads 1]
    PYTHONPATH=src python benchmarks/eval_prefix.py --task gsm8k [--questions 16] [--max-new-tokens 64]

Prints a table and writes benchmarks/results/eval_prefix[_gsm8k].json.
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


def report(args, rows: list[dict], best: dict, same: bool, detail: str, extra: dict, suffix: str) -> None:
    speedup_cpu = best["baseline"]["cpu_s"] / best["prefix"]["cpu_s"]
    speedup_wall = best["baseline"]["wall_s"] / best["prefix"]["wall_s"]
    print(f"CPU: {cpu_features().describe()}; threads {args.threads}; {detail}; model {args.model}")
    print(f"{'method':<10} {'cpu s':>8} {'wall s':>8} {'q/cpu-s':>8} {'q/wall-s':>9}")
    for r in rows:
        print(f"{r['method']:<10} {r['cpu_s']:>8.2f} {r['wall_s']:>8.2f} {r['q_per_cpu_s']:>8.2f} {r['q_per_wall_s']:>9.2f}")
    print(f"speedup: {speedup_cpu:.2f}x CPU time, {speedup_wall:.2f}x wall; identical outputs: {same}")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = {"cpu": cpu_kernels.status(), "threads": args.threads, "model": args.model, "task": args.task, "rows": rows,
           "speedup_cpu": speedup_cpu, "speedup_wall": speedup_wall, "identical_predictions": same, **extra}
    (RESULTS_DIR / f"eval_prefix{suffix}.json").write_text(json.dumps(out, indent=2))
    if not same:
        raise SystemExit("outputs differ between the prefix-cached and the baseline path")


def best_of(args, contenders: dict, n: int) -> tuple[list[dict], dict]:
    best: dict = {}
    for _ in range(args.rounds):
        for name, fn in contenders.items():
            out, cpu, wall = timed(fn)
            if name not in best or cpu < best[name]["cpu_s"]:
                best[name] = {"cpu_s": cpu, "wall_s": wall, "out": out}
    rows = []
    for name in contenders:
        b = best[name]
        rows.append({"method": name, "questions": n, "cpu_s": round(b["cpu_s"], 3), "wall_s": round(b["wall_s"], 3),
                     "q_per_cpu_s": round(n / b["cpu_s"], 2), "q_per_wall_s": round(n / b["wall_s"], 2)})
    return rows, best


def mmlu_main(args, model, tok) -> None:
    import torch

    from camelid.eval.prefix import next_token_logprobs, next_token_logprobs_baseline
    from camelid.eval.settings import EvalSettings
    from camelid.eval.tasks import mmlu

    names = mmlu.subjects(Path(args.data))[: args.subjects]
    settings = EvalSettings("mmlu", shots=5, limit=args.per_subject, subsets=tuple(names))
    items, _ = mmlu.load_items(Path(args.data), settings, tok, model.config.max_position_embeddings)
    cand = [c.token_id for c in mmlu.candidates(tok)]
    groups = [[tok(it["prompt"])["input_ids"] for it in items if it["group"] == s] for s in names]
    n_tokens = sum(len(ids) for g in groups for ids in g)

    def run(fn):
        return torch.cat([fn(model, g, cand) for g in groups])

    rows, best = best_of(args, {"baseline": lambda: run(next_token_logprobs_baseline),
                                "prefix": lambda: run(next_token_logprobs)}, len(items))
    same = best["baseline"]["out"].argmax(-1).tolist() == best["prefix"]["out"].argmax(-1).tolist()
    max_diff = (best["baseline"]["out"] - best["prefix"]["out"]).abs().max().item()
    detail = (f"{len(items)} questions, {len(names)} subjects, {n_tokens / len(items):.0f} prompt tokens/question "
              f"(max |logprob diff| {max_diff:.2e})")
    report(args, rows, best, same, detail, {"subjects": names, "max_logprob_diff": max_diff}, "")


def gsm8k_main(args, model, tok) -> None:
    from camelid.eval.backends import LocalBackend, _generate_local, prompt_ids
    from camelid.eval.settings import EvalSettings
    from camelid.eval.tasks import gsm8k

    settings = EvalSettings("gsm8k", limit=args.questions, max_new_tokens=args.max_new_tokens)
    items, _ = gsm8k.load_items(Path(args.data), settings, tok, model.config.max_position_embeddings)
    prompts = [it["prompt"] for it in items]
    gen = gsm8k.generation(settings)
    ids = [prompt_ids(tok, p) for p in prompts]

    def cached():
        backend = LocalBackend(model, tok)  # fresh: the exemplars' cache is computed inside the timing
        return backend.generate(prompts, gen, [settings.seed] * len(prompts)), len(backend._prefix.ids)

    def full():
        return _generate_local(model, tok, ids, gen, settings.seed, LocalBackend(model, tok).eos), 0

    rows, best = best_of(args, {"baseline": full, "prefix": cached}, len(items))
    same = best["baseline"]["out"][0] == best["prefix"]["out"][0]
    shared = best["prefix"]["out"][1]
    detail = (f"{len(items)} GSM8K CoT questions, {sum(map(len, ids)) / len(ids):.0f} prompt tokens/question of "
              f"which {shared} shared, greedy, at most {args.max_new_tokens} new tokens")
    report(args, rows, best, same, detail, {"questions": len(items), "shared_prefix_tokens": shared,
                                            "max_new_tokens": args.max_new_tokens}, "_gsm8k")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--task", choices=("mmlu", "gsm8k"), default="mmlu")
    ap.add_argument("--model", default=str(shared_data() / "models" / "camel45m"))
    ap.add_argument("--data", default=None, help="the task's data folder (default: shared data)")
    ap.add_argument("--subjects", type=int, default=4, help="MMLU: the first N subjects (sorted)")
    ap.add_argument("--per-subject", type=int, default=32, help="MMLU: questions per subject")
    ap.add_argument("--questions", type=int, default=16, help="GSM8K: questions (the protocol's sample order)")
    ap.add_argument("--max-new-tokens", type=int, default=64, help="GSM8K: new tokens per question at most")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    args.data = args.data or str(shared_data() / "eval" / args.task)

    import torch

    import camelid

    torch.set_num_threads(args.threads)
    model, tok = camelid.load(args.model, device="cpu", dtype="float32")
    (mmlu_main if args.task == "mmlu" else gsm8k_main)(args, model, tok)


if __name__ == "__main__":
    main()
