"""MMLU as open-instruct's `eval/mmlu/run_eval.py` (Hendrycks' prompt code) scores it.

- Subjects: the sorted `test/*_test.csv`; shots: the first k rows of `dev/{subject}_dev.csv`.
- Header "The following are multiple choice questions (with answers) about {subject}.\\n\\n" where
  `format_subject` prefixes every word with a space, hence the double space after "about".
- Example: question + "\\nA. …\\nB. …\\nC. …\\nD. …" + "\\nAnswer:", shots add " {gold}\\n\\n".
- Chat format: the whole prompt as one user turn, then "The answer is:".
- Shots are dropped from the end until the prompt has at most 2048 tokens (no special tokens), checked on
  the chat-wrapped prompt (open-instruct cd54d085). camelid also keeps the prompt and one answer token
  inside the model's context (limit - 2 with BOS), which the paper's 2048-token LLaMA never needed.
  Upstream's k=-1 edge (a prompt still too long at 0 shots re-adds every dev row) is not reproduced: 0 stays 0.
- Prediction: argmax of the next-token distribution over the ids of " A".." D" (`encode(" " + c)[-1]`,
  open-instruct ad2385f8); micro accuracy over all questions, per subject, subcategory and category.
- Files: Hendrycks' header-less CSVs (answer a letter) or the header-row variant (answer an index 0-3).
  Cells pandas reads as missing ("None", "NA", "", ...) appear as "nan", as in upstream's prompts
  (`pd.read_csv(header=None)`): seven MMLU test choices are the word "None".
"""

from __future__ import annotations

from pathlib import Path

from camelid.errors import CamelidError
from camelid.eval.backends import Candidate
from camelid.eval.data import read_csv
from camelid.eval.prompting import chat_prompt, is_chat, task_template

CHOICES = ("A", "B", "C", "D")
MAX_PROMPT_TOKENS = 2048
FORMAT = "MMLU CSV: question, 4 choices, answer (letter A-D, or index 0-3 under a header row)"
HEADER = ["question", "choice0", "choice1", "choice2", "choice3", "answer"]
# pandas `read_csv` default na_values (pandas/_libs/parsers.pyx STR_NA_VALUES).
PANDAS_NA = {"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
             "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"}

# open-instruct eval/mmlu/categories.py (from Hendrycks' test repo).
SUBCATEGORY = {
    "abstract_algebra": "math", "anatomy": "health", "astronomy": "physics", "business_ethics": "business",
    "clinical_knowledge": "health", "college_biology": "biology", "college_chemistry": "chemistry",
    "college_computer_science": "computer science", "college_mathematics": "math", "college_medicine": "health",
    "college_physics": "physics", "computer_security": "computer science", "conceptual_physics": "physics",
    "econometrics": "economics", "electrical_engineering": "engineering", "elementary_mathematics": "math",
    "formal_logic": "philosophy", "global_facts": "other", "high_school_biology": "biology",
    "high_school_chemistry": "chemistry", "high_school_computer_science": "computer science",
    "high_school_european_history": "history", "high_school_geography": "geography",
    "high_school_government_and_politics": "politics", "high_school_macroeconomics": "economics",
    "high_school_mathematics": "math", "high_school_microeconomics": "economics", "high_school_physics": "physics",
    "high_school_psychology": "psychology", "high_school_statistics": "math", "high_school_us_history": "history",
    "high_school_world_history": "history", "human_aging": "health", "human_sexuality": "culture",
    "international_law": "law", "jurisprudence": "law", "logical_fallacies": "philosophy",
    "machine_learning": "computer science", "management": "business", "marketing": "business",
    "medical_genetics": "health", "miscellaneous": "other", "moral_disputes": "philosophy",
    "moral_scenarios": "philosophy", "nutrition": "health", "philosophy": "philosophy", "prehistory": "history",
    "professional_accounting": "other", "professional_law": "law", "professional_medicine": "health",
    "professional_psychology": "psychology", "public_relations": "politics", "security_studies": "politics",
    "sociology": "culture", "us_foreign_policy": "politics", "virology": "health", "world_religions": "philosophy",
}
CATEGORIES = {
    "STEM": ("physics", "chemistry", "biology", "computer science", "math", "engineering"),
    "humanities": ("history", "philosophy", "law"),
    "social sciences": ("politics", "culture", "economics", "geography", "psychology"),
    "other (business, health, misc.)": ("other", "business", "health"),
}


def read_mmlu_csv(path: Path) -> list[list[str]]:
    """Rows [question, a, b, c, d, letter] of either published layout."""
    rows = read_csv(path, FORMAT)
    index_answers = rows[0] == HEADER
    if index_answers:
        rows = rows[1:]
    out = []
    for n, row in enumerate(rows, 2 if index_answers else 1):
        if len(row) != 6:
            raise CamelidError(f"{path}:{n}: {len(row)} columns; expected {FORMAT}")
        answer = row[5].strip()
        if index_answers and answer in ("0", "1", "2", "3"):
            answer = CHOICES[int(answer)]
        if answer not in CHOICES:
            raise CamelidError(f"{path}:{n}: answer {row[5]!r}; expected {FORMAT}")
        out.append([("nan" if c in PANDAS_NA else c) for c in row[:5]] + [answer])
    if not out:
        raise CamelidError(f"{path}: no questions; expected {FORMAT}")
    return out


def format_subject(subject: str) -> str:
    return "".join(" " + word for word in subject.split("_"))


def format_example(row: list[str], include_answer: bool = True) -> str:
    prompt = row[0] + "".join(f"\n{c}. {text}" for c, text in zip(CHOICES, row[1:5], strict=True)) + "\nAnswer:"
    return prompt + f" {row[5]}\n\n" if include_answer else prompt


def gen_prompt(dev: list[list[str]], subject: str, k: int) -> str:
    header = f"The following are multiple choice questions (with answers) about {format_subject(subject)}.\n\n"
    return header + "".join(format_example(row) for row in dev[:k])


def build_prompt(dev, subject: str, row, k: int, template: str | None, tokenizer) -> str:
    prompt = gen_prompt(dev, subject, k) + format_example(row, include_answer=False)
    return chat_prompt(tokenizer, template, prompt, "The answer is:") if is_chat(template) else prompt


def fit_prompt(dev, subject, row, shots: int, template, tokenizer, max_tokens: int) -> tuple[str, int]:
    k = shots
    while True:
        prompt = build_prompt(dev, subject, row, k, template, tokenizer)
        if k == 0 or len(tokenizer(prompt, add_special_tokens=False)["input_ids"]) <= max_tokens:
            return prompt, k
        k -= 1


def setting(settings) -> str:
    return f"mmlu-{settings.shots or 0}shot"


def subjects(data_dir: Path) -> list[str]:
    test_dir = data_dir / "test"
    names = sorted(p.name.removesuffix("_test.csv") for p in test_dir.glob("*_test.csv"))
    if not names:
        raise CamelidError(f"no MMLU subjects in {test_dir} (expected {{subject}}_test.csv files: {FORMAT})")
    return names


def load_items(data_dir: Path, settings, tokenizer, context_limit: int | None = None):
    shots = settings.shots or 0
    max_tokens = MAX_PROMPT_TOKENS if context_limit is None else min(MAX_PROMPT_TOKENS, context_limit - 2)
    items, files = [], []
    names = subjects(data_dir)
    unknown = sorted(set(settings.subsets) - set(names))
    if unknown:
        raise CamelidError(f"unknown MMLU subjects {unknown}; known: {', '.join(names)}")
    for subject in names:
        if settings.subsets and subject not in settings.subsets:
            continue
        test_file = data_dir / "test" / f"{subject}_test.csv"
        test = read_mmlu_csv(test_file)[: settings.limit]
        files.append(test_file)
        dev = []
        if shots:
            dev_file = data_dir / "dev" / f"{subject}_dev.csv"
            dev = read_mmlu_csv(dev_file)
            files.append(dev_file)
        for i, row in enumerate(test):
            prompt, k = fit_prompt(dev, subject, row, shots, task_template(settings), tokenizer, max_tokens)
            items.append({"id": f"{subject}/{i}", "group": subject, "prompt": prompt, "shots": k, "gold": row[5]})
    return items, files


def candidates(tokenizer) -> list[Candidate]:
    # open-instruct: `tokenizer.encode(" " + c, add_special_tokens=False)[-1]` (a prefix space, as after "Answer:").
    return [Candidate(" " + c, tokenizer.encode(" " + c, add_special_tokens=False)[-1]) for c in CHOICES]


def predict(logprobs: list[float | None]) -> int:
    """Index of the largest known logprob, the first on ties (torch.argmax)."""
    known = [(lp, -i) for i, lp in enumerate(logprobs) if lp is not None]
    return -max(known)[1]


def score(backend, items, settings) -> list[dict]:
    rows = backend.candidate_logprobs([it["prompt"] for it in items], candidates(backend.tokenizer))
    out = []
    for it, lps in zip(items, rows, strict=True):
        pred = CHOICES[predict(lps)]
        out.append({**it, "logprobs": lps, "prediction": pred, "score": float(pred == it["gold"])})
    return out


def _acc(records) -> float:
    return 100.0 * sum(r["score"] for r in records) / len(records)


def summarize(records, settings) -> dict:
    by_subject: dict[str, list] = {}
    for r in records:
        by_subject.setdefault(r["group"], []).append(r)
    by_sub: dict[str, list] = {}
    by_cat: dict[str, list] = {}
    for subject, recs in by_subject.items():
        sub = SUBCATEGORY.get(subject)
        if sub is None:
            continue
        by_sub.setdefault(sub, []).extend(recs)
        for cat, subs in CATEGORIES.items():
            if sub in subs:
                by_cat.setdefault(cat, []).extend(recs)
    return {"score": _acc(records), "average_acc": _acc(records), "n": len(records),
            "subject_acc": {s: _acc(r) for s, r in by_subject.items()},
            "subcat_acc": {s: _acc(r) for s, r in sorted(by_sub.items())},
            "cat_acc": {c: _acc(r) for c, r in by_cat.items()}}
