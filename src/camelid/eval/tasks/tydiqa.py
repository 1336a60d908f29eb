"""TyDiQA GoldP as open-instruct's `eval/tydiqa/run_eval.py` (late 2023) scores it.

- Files: `tydiqa-goldp-v1.1-dev.json` (scored) and `tydiqa-goldp-v1.1-train.json` (shots), SQuAD layout
  (data -> paragraphs -> qas with id, question, answers); the language is `id.split("-")[0]`.
- `random.seed(42)`; per language in sorted order (upstream's fix for the June-2023 `set()` order),
  `random.sample` 100 dev questions, then one train example per language for the 1-shot demo.
- Passages (test and shot) longer than 512 tokens are cut: `decode(encode(ctx)[:512])` with the
  tokenizer's defaults, so the BOS counts and a cut passage starts with the BOS text, as upstream.
- Prompt: per-language instruction + "\\n\\n" + demo + "\\n\\n" + "Passage: ...\\nQuestion: ...\\n" then
  "Answer:" (in the language); closed-book drops the Passage lines and uses the no-context instruction.
  Chat format: that text unstripped as the user turn (so a blank line precedes the assistant header).
- Greedy, 50 new tokens, stop at "\\n" without the chat format only; output stripped.
- Metric: the SQuAD v1.1 F1 and exact match (0-100) per language, then the mean over languages.
"""

from __future__ import annotations

import random
from pathlib import Path

from camelid.errors import CamelidError
from camelid.eval.backends import GenerationSettings
from camelid.eval.data import read_json
from camelid.eval.metrics import squad_exact, squad_f1
from camelid.eval.prompting import chat_prompt, is_chat, task_template
from camelid.eval.tasks.common import greedy

FORMAT = ('TyDiQA GoldP v1.1 JSON: {"data": [{"paragraphs": [{"context": ..., "qas": [{"id": "LANG-...", '
          '"question": ..., "answers": [{"text": ..., "answer_start": N}]}]}]}]}')
PER_LANGUAGE = 100
MAX_CONTEXT_TOKENS = 512

WITH_CONTEXT = {
    "english": ("Answer the following question based on the information in the given passage.", "Passage:", "Question:", "Answer:"),
    "arabic": ("أجب على السؤال التالي بناءً على المعلومات في المقطع المعطى.", "المقطع:", "السؤال:", "الإجابة:"),
    "bengali": ("প্রদত্ত অধ্যায়ের তথ্যের উপর ভিত্তি করে নিম্নলিখিত প্রশ্নের উত্তর দিন।", "অধ্যায়:", "প্রশ্ন:", "উত্তর:"),
    "finnish": ("Vastaa seuraavaan kysymykseen annetun kappaleen tiedon perusteella.", "Kappale:", "Kysymys:", "Vastaus:"),
    "indonesian": ("Jawab pertanyaan berikut berdasarkan informasi di bagian yang diberikan.", "Bagian:", "Pertanyaan:", "Jawaban:"),
    "korean": ("주어진 문단의 정보에 기반하여 다음 질문에 답하십시오.", "문단:", "질문:", "답변:"),
    "russian": ("Ответьте на следующий вопрос на основе информации в данном отрывке.", "Отрывок:", "Вопрос:", "Ответ:"),
    "swahili": ("Jibu swali lifuatalo kulingana na habari kwenye kifungu kilichotolewa.", "Kifungu:", "Swali:", "Jibu:"),
    "telugu": ("ఇచ్చిన పేరాలోని సమాచారం ఆధారంగా కింది ప్రశ్నకు సమాధానం ఇవ్వండి.", "పేరా:", "ప్రశ్న:", "సమాధానం:"),
}
WITHOUT_CONTEXT = {
    "english": ("Answer the following question.", "Question:", "Answer:"),
    "arabic": ("أجب على السؤال التالي.", "السؤال:", "الإجابة:"),
    "bengali": ("নিম্নলিখিত প্রশ্নের উত্তর দিন।", "প্রশ্ন:", "উত্তর:"),
    "finnish": ("Vastaa seuraavaan kysymykseen.", "Kysymys:", "Vastaus:"),
    "indonesian": ("Jawab pertanyaan berikut.", "Pertanyaan:", "Jawaban:"),
    "korean": ("다음 질문에 답하십시오.", "질문:", "답변:"),
    "russian": ("Ответьте на следующий вопрос.", "Вопрос:", "Ответ:"),
    "swahili": ("Jibu swali lifuatalo.", "Swali:", "Jibu:"),
    "telugu": ("క్రింది ప్రశ్నకు సమాధానం ఇవ్వండి.", "ప్రశ్న:", "సమాధానం:"),
}


def setting(settings) -> str:
    return "tydiqa-" + ("closedbook" if settings.closed_book else "goldp")


def read_goldp(path: Path) -> list[dict]:
    data = read_json(path, FORMAT)
    out = []
    try:
        for article in data["data"]:
            for paragraph in article["paragraphs"]:
                for qa in paragraph["qas"]:
                    out.append({"id": qa["id"], "lang": qa["id"].split("-")[0], "context": paragraph["context"],
                                "question": qa["question"], "answers": [a["text"] for a in qa["answers"]]})
    except (KeyError, TypeError) as e:
        raise CamelidError(f"{path}: missing {e}; expected {FORMAT}") from None
    if not out:
        raise CamelidError(f"{path}: no questions; expected {FORMAT}")
    return out


def truncate(tokenizer, context: str) -> str:
    ids = tokenizer.encode(context)
    return tokenizer.decode(ids[:MAX_CONTEXT_TOKENS]) if len(ids) > MAX_CONTEXT_TOKENS else context


def build_prompt(example: dict, demos: list[dict], closed_book: bool, template: str, tokenizer) -> str:
    lang = example["lang"]
    if closed_book:
        prompt, q, a = WITHOUT_CONTEXT[lang]
        shot = [q + " " + d["question"] + "\n" + a + " " + d["answers"][0] for d in demos]
        body = q + " " + example["question"] + "\n"
    else:
        prompt, p, q, a = WITH_CONTEXT[lang]
        shot = [p + " " + d["context"] + "\n" + q + " " + d["question"] + "\n" + a + " " + d["answers"][0]
                for d in demos]
        body = p + " " + example["context"] + "\n" + q + " " + example["question"] + "\n"
    prompt += "\n\n" + ("\n\n".join(shot) + "\n\n" if demos else "") + body
    return chat_prompt(tokenizer, template, prompt, a) if is_chat(template) else prompt + a


def load_items(data_dir: Path, settings, tokenizer, context_limit=None):
    dev_file = data_dir / "tydiqa-goldp-v1.1-dev.json"
    train_file = data_dir / "tydiqa-goldp-v1.1-train.json"
    test = read_goldp(dev_file)
    langs = sorted({e["lang"] for e in test})
    unknown = [lang for lang in langs if lang not in WITH_CONTEXT]
    if unknown:
        raise CamelidError(f"{dev_file}: no prompt template for languages {unknown}; known: {', '.join(WITH_CONTEXT)}")
    rng = random.Random(42)
    sampled = []
    for lang in langs:
        mine = [e for e in test if e["lang"] == lang]
        sampled += rng.sample(mine, PER_LANGUAGE) if len(mine) > PER_LANGUAGE else mine
    shots = 1 if settings.shots is None else settings.shots
    demos: dict[str, list[dict]] = {lang: [] for lang in langs}
    files = [dev_file]
    if shots:
        files.append(train_file)
        for e in read_goldp(train_file):
            if e["lang"] in demos:
                demos[e["lang"]].append(e)
        for lang in langs:
            if len(demos[lang]) < shots:
                raise CamelidError(f"{train_file}: {len(demos[lang])} {lang} examples, fewer than {shots} shots")
            demos[lang] = rng.sample(demos[lang], shots)
    for e in sampled + [d for ds in demos.values() for d in ds]:
        e["context"] = truncate(tokenizer, e["context"])
    template = task_template(settings)
    per_lang: dict[str, int] = {}
    items = []
    for e in sampled:
        per_lang[e["lang"]] = per_lang.get(e["lang"], 0) + 1
        if settings.subsets and e["lang"] not in settings.subsets:
            continue
        if settings.limit is not None and per_lang[e["lang"]] > settings.limit:
            continue
        items.append({"id": e["id"], "group": e["lang"], "gold": e["answers"],
                      "prompt": build_prompt(e, demos[e["lang"]], settings.closed_book, template, tokenizer)})
    return items, files


def generation(settings) -> GenerationSettings:
    return greedy(settings, 50, ("\n",))


def score(backend, items, settings) -> list[dict]:
    outputs = backend.generate([it["prompt"] for it in items], generation(settings), [settings.seed] * len(items))
    out = []
    for it, text in zip(items, outputs, strict=True):
        pred = text.strip()
        out.append({**it, "output": text, "prediction": pred, "f1": 100.0 * squad_f1(pred, it["gold"]),
                    "exact_match": 100.0 * squad_exact(pred, it["gold"])})
        out[-1]["score"] = out[-1]["f1"]
    return out


def summarize(records, settings) -> dict:
    by_lang: dict[str, list[dict]] = {}
    for r in records:
        by_lang.setdefault(r["group"], []).append(r)
    per = {lang: {"f1": sum(r["f1"] for r in rs) / len(rs), "exact_match": sum(r["exact_match"] for r in rs) / len(rs)}
           for lang, rs in sorted(by_lang.items())}
    f1 = sum(v["f1"] for v in per.values()) / len(per)
    em = sum(v["exact_match"] for v in per.values()) / len(per)
    return {"score": f1, "f1": f1, "exact_match": em, "per_language": per, "n": len(records)}
