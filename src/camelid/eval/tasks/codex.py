"""Codex-Eval (HumanEval) as open-instruct's `eval/codex_humaneval/` scores it.

- Problems: `HumanEval.jsonl.gz` (task_id, prompt, test, entry_point), all 164 in file order (--limit N:
  the first N).
- No chat format (the paper's jobs; "it's not a chat dataset"): the prompt is the raw `prompt`. With a
  template: user turn "Complete the following python function.\\n\\n\\n" + prompt, then
  "Here is the completed function:\\n\\n\\n" + prompt after the assistant header, as upstream's option.
- Sampling: n = 20 per problem, top_p 0.95, temperature 0.1 for the pass@1 run and 0.8 for pass@10,
  512 new tokens, stopped at the Codex paper's ["\\nclass", "\\ndef", "\\n#", "\\nif", "\\nprint"].
  Sample j of every problem is drawn with seed (seed + j), as upstream's 20 passes over all prompts, so a
  batch shares one seed and a resumed run draws the same.
- Execution: prompt + completion + "\\n" + test + "\\n" + f"check({entry_point})" in `camelid.eval.sandbox`
  (3 s timeout); pass@k per problem by the unbiased estimator, mean over problems, every k <= n reported.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from camelid.eval.backends import GenerationSettings
from camelid.eval.data import read_jsonl
from camelid.eval.metrics import pass_at_k
from camelid.eval.prompting import chat_prompt, is_chat, task_template
from camelid.eval.sandbox import containment, run_program

DEFAULT_TEMPLATE = "none"
FORMAT = "HumanEval.jsonl.gz: one {task_id, prompt, test, entry_point, ...} per line (gzip or plain)"
STOP = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")
TEMPERATURE = {1: 0.1, 10: 0.8}
KS = (1, 5, 10, 20)


def setting(settings) -> str:
    return f"codex-pass{settings.pass_at}"


def data_file(data_dir: Path) -> Path:
    for name in ("HumanEval.jsonl.gz", "HumanEval.jsonl"):
        if (data_dir / name).exists():
            return data_dir / name
    return data_dir / "HumanEval.jsonl.gz"


def build_prompt(problem: dict, template: str, tokenizer) -> str:
    if not is_chat(template):
        return problem["prompt"]
    return chat_prompt(tokenizer, template, "Complete the following python function.\n\n\n" + problem["prompt"],
                       "Here is the completed function:\n\n\n" + problem["prompt"])


def load_items(data_dir: Path, settings, tokenizer, context_limit=None):
    path = data_file(data_dir)
    problems = read_jsonl(path, FORMAT, keys=("task_id", "prompt", "test", "entry_point"))
    template = task_template(settings, DEFAULT_TEMPLATE)
    items = [{"id": p["task_id"], "group": "humaneval", "prompt": build_prompt(p, template, tokenizer),
              "program_prompt": p["prompt"], "test": p["test"], "entry_point": p["entry_point"]}
             for p in problems[: settings.limit]]
    return items, [path]


def generation(settings) -> GenerationSettings:
    temperature = settings.temperature if settings.temperature is not None else TEMPERATURE.get(settings.pass_at, 0.8)
    return GenerationSettings(max_new_tokens=settings.max_new_tokens or 512, temperature=temperature,
                              top_p=0.95, stop=STOP)


def sample_seed(seed: int, j: int) -> int:
    return seed + j


def program(item: dict, completion: str) -> str:
    return item["program_prompt"] + completion + "\n" + item["test"] + "\n" + f"check({item['entry_point']})"


def score(backend, items, settings) -> list[dict]:
    n = settings.samples
    prompts = [it["prompt"] for it in items for _ in range(n)]
    seeds = [sample_seed(settings.seed, j) for _ in items for j in range(n)]
    outputs = backend.generate(prompts, generation(settings), seeds)
    programs = [program(it, outputs[i * n + j]) for i, it in enumerate(items) for j in range(n)]
    with ThreadPoolExecutor(max(1, min(4, os.cpu_count() or 1))) as pool:
        verdicts = list(pool.map(run_program, programs))
    out = []
    for i, it in enumerate(items):
        mine = verdicts[i * n:(i + 1) * n]
        correct = sum(v == "passed" for v in mine)
        rec = {k: it[k] for k in ("id", "group", "prompt")}
        out.append({**rec, "outputs": outputs[i * n:(i + 1) * n], "verdicts": mine, "n": n, "correct": correct,
                    "score": pass_at_k(n, correct, settings.pass_at)})
    return out


def summarize(records, settings) -> dict:
    n = min(r["n"] for r in records)
    passk = {f"pass@{k}": sum(pass_at_k(r["n"], r["correct"], k) for r in records) / len(records)
             for k in KS if k <= n}
    return {"score": 100.0 * passk[f"pass@{settings.pass_at}"], **passk, "n_problems": len(records),
            "samples_per_problem": n, "sandbox": containment()}
