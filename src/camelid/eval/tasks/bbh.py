"""BIG-Bench Hard as open-instruct's `eval/bbh/run_eval.py` scores it.

- Tasks: `bbh/*.json` ("examples": [{"input", "target"}]) and `cot-prompts/{task}.txt` (3 shots after a
  canary line and a "-----" line, dropped by `readlines()[2:]`).
- `random.seed(42)`, then 40 examples per task with `random.sample`. Upstream iterated `glob.glob` order,
  which depends on the filesystem, so its sample was not reproducible; camelid walks the tasks sorted
  (a documented choice), and samples every task before filtering by --subsets/--limit so that a subset
  scores the same examples as the full run.
- CoT prompt: task_prompt.strip() + "\\n\\nQ: " + input + "\\nA:". Direct: every "Q:" field of the prompt
  becomes question + "\\nA: " + the text after the last "So the answer is" (trailing period kept).
  Chat format: task_prompt.strip() + "\\n\\nQ: " + input as the user turn, then "A:".
- Greedy, 512 new tokens, stop at "\\n\\n" without the chat format only (open-instruct's vLLM path).
- Prediction: `re.search(r"[t|T]he answer is (.*?)\\.", output)` group 1 stripped (lazy: "3.5" -> "3"),
  else the stripped output; exact match (ignore case and punctuation) per task, mean over tasks.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

from camelid.errors import CamelidError
from camelid.eval.backends import GenerationSettings
from camelid.eval.data import read_json, require_file
from camelid.eval.prompting import chat_prompt, is_chat, task_template
from camelid.eval.tasks.common import greedy, score_exact_match

FORMAT = 'BBH task JSON: {"examples": [{"input": ..., "target": ...}, ...]}'
PROMPT_FORMAT = "BBH cot-prompts/{task}.txt: a canary line, a '-----' line, then the 3 CoT shots"
PER_TASK = 40


def setting(settings) -> str:
    return "bbh-" + ("cot" if settings.cot else "direct")


def direct_prompt(task_prompt: str, path: Path) -> str:
    fields = []
    for field in task_prompt.split("\n\n"):
        if field.startswith("Q:"):
            if "So the answer is" not in field or "\nA:" not in field:
                raise CamelidError(f"{path}: a shot lacks '\\nA:' or 'So the answer is'; expected {PROMPT_FORMAT}")
            answer = field.split("So the answer is")[-1].strip()
            fields.append(field.split("\nA:")[0].strip() + "\nA: " + answer)
        else:
            fields.append(field)
    return "\n\n".join(fields)


def read_task_prompt(path: Path, cot: bool) -> str:
    require_file(path, PROMPT_FORMAT)
    with open(path, encoding="utf-8") as f:
        text = "".join(f.readlines()[2:])
    return text if cot else direct_prompt(text, path)


def build_prompt(task_prompt: str, question: str, template: str | None, tokenizer) -> str:
    if is_chat(template):
        return chat_prompt(tokenizer, template, task_prompt.strip() + "\n\nQ: " + question, "A:")
    return task_prompt.strip() + "\n\nQ: " + question + "\nA:"


def load_items(data_dir: Path, settings, tokenizer, context_limit=None):
    task_files = sorted((data_dir / "bbh").glob("*.json"))
    if not task_files:
        raise CamelidError(f"no BBH tasks in {data_dir / 'bbh'} (expected {FORMAT})")
    names = [p.stem for p in task_files]
    unknown = sorted(set(settings.subsets) - set(names))
    if unknown:
        raise CamelidError(f"unknown BBH tasks {unknown}; known: {', '.join(names)}")
    rng = random.Random(42)
    items, files = [], []
    for path in task_files:
        data = read_json(path, FORMAT)
        examples = data.get("examples") if isinstance(data, dict) else None
        if not isinstance(examples, list) or not all(isinstance(e, dict) and "input" in e and "target" in e
                                                     for e in examples):
            raise CamelidError(f"{path}: expected {FORMAT}")
        indexed = list(enumerate(examples))
        sample = rng.sample(indexed, PER_TASK) if len(indexed) > PER_TASK else indexed
        if settings.subsets and path.stem not in settings.subsets:
            continue
        prompt_file = data_dir / "cot-prompts" / f"{path.stem}.txt"
        task_prompt = read_task_prompt(prompt_file, settings.cot)
        files += [path, prompt_file]
        for i, ex in sample[: settings.limit]:
            items.append({"id": f"{path.stem}/{i}", "group": path.stem, "gold": ex["target"],
                          "prompt": build_prompt(task_prompt, ex["input"], task_template(settings), tokenizer)})
    return items, files


def extract_answer(output: str) -> str:
    match = re.search(r"[t|T]he answer is (.*?)\.", output)
    return match.group(1).strip() if match else output.strip()


def generation(settings) -> GenerationSettings:
    return greedy(settings, 512, ("\n\n",))


def score(backend, items, settings) -> list[dict]:
    return score_exact_match(backend, items, settings, generation(settings), extract_answer)


def summarize(records, settings) -> dict:
    by_task: dict[str, list[float]] = {}
    for r in records:
        by_task.setdefault(r["group"], []).append(r["score"])
    per_task = {t: sum(s) / len(s) for t, s in by_task.items()}
    average = sum(per_task.values()) / len(per_task)
    return {"score": 100.0 * average, "average_exact_match": average, "per_task": per_task, "n": len(records)}
