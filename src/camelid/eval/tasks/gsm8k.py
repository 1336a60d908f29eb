"""GSM8K as open-instruct's `eval/gsm/run_eval.py` (exemplars `eval/gsm/examplars.py`) scores it.

- Gold: the text after "####", stripped, thousands commas removed (`re.sub(r"(\\d),(\\d)", r"\\1\\2")`).
- `random.seed(42)`, then `random.sample(test, 200)` (the paper's `--max_num_examples 200`); with fewer
  than 8 shots the exemplars are then sampled from the same generator, as upstream.
- Prompt: "Answer the following questions.\\n\\n" + the demos joined by "\\n\\n" + "\\n\\n", then
  "Question: " + question.strip() + "\\nAnswer:". CoT demos "Question: q\\nAnswer: cot_answer"; direct demos
  "Quesion: q\\nAnswer: short_answer" — the "Quesion" typo is upstream's, kept from 2023 to the scripts'
  removal, so it is kept here. Chat format: prefix + question as the user turn, then "Answer:".
- Greedy, 512 new tokens, stop at "\\n" without the chat format only (open-instruct bb45970b); with it the
  model runs to EOS.
- Prediction: the last number (`[-+]?\\d*\\.\\d+|\\d+` after comma removal; the raw output if none); exact
  match with ignore_case and ignore_punctuation, so "-5" extracts as "5" and "18.0" fails against "18".
"""

from __future__ import annotations

import random
import re
from pathlib import Path

from camelid.errors import CamelidError
from camelid.eval.backends import GenerationSettings
from camelid.eval.data import read_jsonl
from camelid.eval.prompting import chat_prompt, is_chat, task_template
from camelid.eval.tasks.common import greedy, score_exact_match

FORMAT = 'GSM8K test.jsonl: one {"question": ..., "answer": "... #### N"} per line'
MAX_EXAMPLES = 200

# open-instruct eval/gsm/examplars.py: Table 20 of the chain-of-thought paper (arXiv 2201.11903).
EXEMPLARS = [
    {"question": "There are 15 trees in the grove. Grove workers will plant trees in the grove today. After they are done, there will be 21 trees. How many trees did the grove workers plant today?",
     "cot_answer": "There are 15 trees originally. Then there were 21 trees after some more were planted. So there must have been 21 - 15 = 6. So the answer is 6.",
     "short_answer": "6"},
    {"question": "If there are 3 cars in the parking lot and 2 more cars arrive, how many cars are in the parking lot?",
     "cot_answer": "There are originally 3 cars. 2 more cars arrive. 3 + 2 = 5. So the answer is 5.",
     "short_answer": "5"},
    {"question": "Leah had 32 chocolates and her sister had 42. If they ate 35, how many pieces do they have left in total?",
     "cot_answer": "Originally, Leah had 32 chocolates. Her sister had 42. So in total they had 32 + 42 = 74. After eating 35, they had 74 - 35 = 39. So the answer is 39.",
     "short_answer": "39"},
    {"question": "Jason had 20 lollipops. He gave Denny some lollipops. Now Jason has 12 lollipops. How many lollipops did Jason give to Denny?",
     "cot_answer": "Jason started with 20 lollipops. Then he had 12 after giving some to Denny. So he gave Denny 20 - 12 = 8. So the answer is 8.",
     "short_answer": "8"},
    {"question": "Shawn has five toys. For Christmas, he got two toys each from his mom and dad. How many toys does he have now?",
     "cot_answer": "Shawn started with 5 toys. If he got 2 toys each from his mom and dad, then that is 4 more toys. 5 + 4 = 9. So the answer is 9.",
     "short_answer": "9"},
    {"question": "There were nine computers in the server room. Five more computers were installed each day, from monday to thursday. How many computers are now in the server room?",
     "cot_answer": "There were originally 9 computers. For each of 4 days, 5 more computers were added. So 5 * 4 = 20 computers were added. 9 + 20 is 29. So the answer is 29.",
     "short_answer": "29"},
    {"question": "Michael had 58 golf balls. On tuesday, he lost 23 golf balls. On wednesday, he lost 2 more. How many golf balls did he have at the end of wednesday?",
     "cot_answer": "Michael started with 58 golf balls. After losing 23 on tuesday, he had 58 - 23 = 35. After losing 2 more, he had 35 - 2 = 33 golf balls. So the answer is 33.",
     "short_answer": "33"},
    {"question": "Olivia has $23. She bought five bagels for $3 each. How much money does she have left?",
     "cot_answer": "Olivia had 23 dollars. 5 bagels for 3 dollars each will be 5 x 3 = 15 dollars. So she has 23 - 15 dollars left. 23 - 15 is 8. So the answer is 8.",
     "short_answer": "8"},
]


def setting(settings) -> str:
    return "gsm8k-" + ("cot" if settings.cot else "direct")


def gold_answer(answer: str) -> str:
    return re.sub(r"(\d),(\d)", r"\1\2", answer.split("####")[1].strip())


def prompt_prefix(exemplars: list[dict], cot: bool) -> str:
    if not exemplars:
        return "Answer the following question.\n\n"
    if cot:
        demos = ["Question: " + e["question"] + "\n" + "Answer: " + e["cot_answer"] for e in exemplars]
    else:
        demos = ["Quesion: " + e["question"] + "\n" + "Answer: " + e["short_answer"] for e in exemplars]
    return "Answer the following questions.\n\n" + "\n\n".join(demos) + "\n\n"


def build_prompt(prefix: str, question: str, template: str | None, tokenizer) -> str:
    if is_chat(template):
        return chat_prompt(tokenizer, template, prefix + "Question: " + question.strip(), "Answer:")
    return prefix + "Question: " + question.strip() + "\nAnswer:"


def load_items(data_dir: Path, settings, tokenizer, context_limit=None):
    path = data_dir / "test.jsonl"
    rows = read_jsonl(path, FORMAT, keys=("question", "answer"))
    test = []
    for i, row in enumerate(rows):
        if "####" not in row["answer"]:
            raise CamelidError(f"{path}: row {i + 1} has no '#### N' answer; expected {FORMAT}")
        test.append({"id": f"gsm8k/{i}", "group": "gsm8k", "question": row["question"],
                     "gold": gold_answer(row["answer"])})
    rng = random.Random(42)
    if len(test) > MAX_EXAMPLES:
        test = rng.sample(test, MAX_EXAMPLES)
    shots = 8 if settings.shots is None else settings.shots
    exemplars = rng.sample(EXEMPLARS, shots) if len(EXEMPLARS) > shots else EXEMPLARS
    prefix = prompt_prefix(exemplars, settings.cot)
    items = [{**it, "prompt": build_prompt(prefix, it["question"], task_template(settings), tokenizer)}
             for it in test[: settings.limit]]
    return items, [path]


def extract_answer(output: str) -> str:
    output = re.sub(r"(\d),(\d)", r"\1\2", output)
    numbers = re.findall(r"[-+]?\d*\.\d+|\d+", output)
    return numbers[-1] if numbers else output


def generation(settings) -> GenerationSettings:
    return greedy(settings, 512, ("\n",))


def score(backend, items, settings) -> list[dict]:
    return score_exact_match(backend, items, settings, generation(settings), extract_answer)


def summarize(records, settings) -> dict:
    em = sum(r["score"] for r in records) / len(records)
    return {"score": 100.0 * em, "exact_match": em, "n": len(records)}
