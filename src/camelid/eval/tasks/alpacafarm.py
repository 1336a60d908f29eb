"""AlpacaFarm / AlpacaEval win rate against the reference (Davinci-003) outputs, judged pairwise.

- Data: `alpaca_farm_evaluation.json` (AlpacaFarm: instruction, input, output = Davinci-003's answer) or
  `alpaca_eval.json` (AlpacaEval: instruction, output); a JSON list, or JSON lines.
- Prompt: the instruction (+ "\\n\\n" + input when present, open-instruct `eval/alpaca_farm_eval.py`) as one
  user turn in the Tulu chat format. Greedy; 2048 new tokens (the June-2023 runs' limit), capped by the
  model's context.
- Judge: any OpenAI-compatible chat endpoint (`--judge URL` ending in /v1, `--judge-model`), temperature 0.
  The prompt is a file with {instruction}, {output_1}, {output_2} (default `alpacafarm_judge.txt`, replace it
  with `--judge-prompt`); the paper's judge was alpaca_farm's GPT-4 annotator, whose prompt is not shipped.
  The two outputs are shown in an order that alternates by a hash of the example id (the annotators
  randomise it too). The reply's first "Output (a)"/"Output (b)"/"tie" is the preference.
- Records carry the judge's raw reply, its parsed verdict ("a", "b", "tie" or null) and the score.
- Win rate (alpaca_farm `analysis.head2head_to_metrics`): model win 1, reference win 0, draw 0.5,
  unparseable judgements dropped; mean x 100.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
import zlib
from pathlib import Path

from camelid.errors import CamelidError
from camelid.eval.backends import GenerationSettings
from camelid.eval.data import read_json, read_jsonl
from camelid.eval.prompting import chat_prompt, is_chat, task_template
from camelid.eval.tasks.common import greedy

FORMAT = "AlpacaFarm/AlpacaEval JSON: a list of {instruction, [input], output (the reference answer)}"
FILES = ("alpaca_farm_evaluation.json", "alpaca_eval.json", "alpaca_eval.jsonl")
DEFAULT_JUDGE_PROMPT = Path(__file__).with_name("alpacafarm_judge.txt")


def setting(settings) -> str:
    return "alpacafarm"


def data_file(data_dir: Path) -> Path:
    for name in FILES:
        if (data_dir / name).exists():
            return data_dir / name
    raise CamelidError(f"no AlpacaFarm data in {data_dir}: expected one of {', '.join(FILES)} ({FORMAT})")


def read_examples(path: Path) -> list[dict]:
    rows = read_jsonl(path, FORMAT, keys=("instruction", "output")) if path.suffix == ".jsonl" else read_json(path, FORMAT)
    if not isinstance(rows, list) or not all(isinstance(r, dict) and "instruction" in r and "output" in r for r in rows):
        raise CamelidError(f"{path}: expected {FORMAT}")
    return rows


def user_turn(example: dict) -> str:
    return example["instruction"] + ("\n\n" + example["input"] if example.get("input") else "")


def load_items(data_dir: Path, settings, tokenizer, context_limit=None):
    path = data_file(data_dir)
    template = task_template(settings)
    items = []
    for i, ex in enumerate(read_examples(path)[: settings.limit]):
        text = user_turn(ex)
        prompt = chat_prompt(tokenizer, template, text) if is_chat(template) else text
        items.append({"id": f"alpacafarm/{i}", "group": "alpacafarm", "instruction": text, "prompt": prompt,
                      "reference": ex["output"]})
    return items, [path]


def judge_prompt_text(settings) -> str:
    path = Path(settings.judge_prompt) if settings.judge_prompt else DEFAULT_JUDGE_PROMPT
    if not path.is_file():
        raise CamelidError(f"judge prompt not found: {path} (a text file with {{instruction}}, {{output_1}}, {{output_2}})")
    text = path.read_text(encoding="utf-8")
    missing = [k for k in ("{instruction}", "{output_1}", "{output_2}") if k not in text]
    if missing:
        raise CamelidError(f"{path}: judge prompt lacks {missing}")
    return text


def parse_preference(reply: str) -> str | None:
    """"a", "b", "tie", or None for an unparseable judgement."""
    match = re.search(r"output\s*\(([ab])\)|\b(tie|draw)\b", reply, re.IGNORECASE)
    if not match:
        return None
    return match.group(1).lower() if match.group(1) else "tie"


def ask_judge(settings, prompt: str) -> str:
    if not settings.judge_url:
        raise CamelidError("alpacafarm needs a judge: --judge URL (OpenAI-compatible, ending in /v1) and --judge-model")
    body = {"messages": [{"role": "user", "content": prompt}], "temperature": 0, "max_tokens": 100}
    if settings.judge_model:
        body["model"] = settings.judge_model
    url = settings.judge_url.rstrip("/") + "/chat/completions"
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=300) as r:
            return json.loads(r.read())["choices"][0]["message"]["content"]
    except (urllib.error.URLError, OSError, ValueError, KeyError, IndexError, TypeError) as e:
        raise CamelidError(f"judge {url}: {e}") from None


def generation(settings) -> GenerationSettings:
    return greedy(settings, 2048, ())  # no stop strings: the output ends at EOS or 2048 tokens


def score(backend, items, settings) -> list[dict]:
    template = judge_prompt_text(settings)
    outputs = backend.generate([it["prompt"] for it in items], generation(settings), [settings.seed] * len(items))
    out = []
    for it, text in zip(items, outputs, strict=True):
        model_first = zlib.crc32(it["id"].encode()) % 2 == 0
        pair = (text, it["reference"]) if model_first else (it["reference"], text)
        reply = ask_judge(settings, template.format(instruction=it["instruction"], output_1=pair[0], output_2=pair[1]))
        pref = parse_preference(reply)
        win = None if pref is None else 0.5 if pref == "tie" else float((pref == "a") == model_first)
        out.append({**it, "output": text, "judge_reply": reply, "verdict": pref, "model_first": model_first,
                    "score": win})
    return out


def summarize(records, settings) -> dict:
    valid = [r["score"] for r in records if r["score"] is not None]
    if not valid:
        raise CamelidError("no parseable judgement: check the judge endpoint and prompt")
    rate = 100.0 * sum(valid) / len(valid)
    return {"score": rate, "win_rate": rate, "n": len(records), "judged": len(valid),
            "wins": sum(v == 1.0 for v in valid), "draws": sum(v == 0.5 for v in valid),
            "losses": sum(v == 0.0 for v in valid)}
