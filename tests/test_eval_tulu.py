"""The Tulu-paper benchmarks: prompts and token ids as open-instruct builds them, answer extraction, the
metrics, data formats and errors, records and resume (camelid.eval.tasks, runner, records)."""

import json
import math
from pathlib import Path

import pytest

from camelid.errors import CamelidError
from camelid.eval.metrics import exact_match, pass_at_k, squad_exact, squad_f1, squad_normalize
from camelid.eval.settings import EvalSettings
from camelid.eval.suite import card_average, format_row
from camelid.eval.tasks import bbh, codex, gsm8k, mmlu, tydiqa

STORIES = Path(__file__).resolve().parents[1] / "examples" / "stories260K"


@pytest.fixture(scope="module")
def llama_tok(shared_data):
    from camelid.tokenizer import load_tokenizer

    return load_tokenizer(shared_data / "tokenizers" / "llama2")


@pytest.fixture(scope="module")
def sp(shared_data):
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_file=str(shared_data / "tokenizers" / "llama2" / "tokenizer.model"))


def ids(tok, text):
    return tok(text, add_special_tokens=True)["input_ids"]


# --- MMLU --------------------------------------------------------------------------------------------------

MMLU_Q0 = ("The following are multiple choice questions (with answers) about  abstract algebra.\n\n"
           "Find the degree for the given field extension Q(sqrt(2), sqrt(3), sqrt(18)) over Q.\n"
           "A. 0\nB. 4\nC. 2\nD. 6\nAnswer:")
# The slow LLaMA tokenizer's ids (open-instruct tokenizes with BOS since 52ed964c).
MMLU_Q0_IDS = [1, 450, 1494, 526, 2999, 7348, 5155, 313, 2541, 6089, 29897, 1048, 29871, 9846, 9623, 29889, 13, 13,
               12542, 278, 7426, 363, 278, 2183, 1746, 6081, 660, 29898, 3676, 29898, 29906, 511, 18074, 2273, 29898,
               29941, 511, 18074, 2273, 29898, 29896, 29947, 876, 975, 660, 29889, 13, 29909, 29889, 29871, 29900, 13,
               29933, 29889, 29871, 29946, 13, 29907, 29889, 29871, 29906, 13, 29928, 29889, 29871, 29953, 13, 22550,
               29901]


def mmlu_items(shared_data, tok, **kw):
    settings = EvalSettings("mmlu", subsets=("abstract_algebra",), limit=1, **kw)
    return mmlu.load_items(shared_data / "eval" / "mmlu", settings, tok)[0]


def test_mmlu_prompts_and_ids(shared_data, llama_tok, sp):
    plain = mmlu_items(shared_data, llama_tok, shots=0, template="none")[0]
    assert plain["prompt"] == MMLU_Q0 and plain["gold"] == "B"
    assert ids(llama_tok, plain["prompt"]) == MMLU_Q0_IDS
    chat = mmlu_items(shared_data, llama_tok, shots=0)[0]  # the paper's default: Tulu chat format
    assert chat["prompt"] == "<|user|>\n" + MMLU_Q0 + "\n<|assistant|>\nThe answer is:"
    assert ids(llama_tok, chat["prompt"]) == [1] + sp.encode(chat["prompt"])
    assert ids(llama_tok, chat["prompt"])[-10:] == [29966, 29989, 465, 22137, 29989, 29958, 13, 1576, 1234, 338, 29901][1:]
    # " A".." D" are the SentencePiece pieces "▁A".."▁D".
    assert [c.token_id for c in mmlu.candidates(llama_tok)] == [319, 350, 315, 360]


def test_mmlu_five_shot_uses_first_dev_rows(shared_data, llama_tok):
    five = mmlu_items(shared_data, llama_tok, shots=5, template="none")[0]
    dev = mmlu.read_mmlu_csv(shared_data / "eval" / "mmlu" / "dev" / "abstract_algebra_dev.csv")
    shots = "".join(mmlu.format_example(r) for r in dev[:5])
    assert five["prompt"] == MMLU_Q0.split("\n\n", 1)[0] + "\n\n" + shots + MMLU_Q0.split("\n\n", 1)[1]
    assert five["shots"] == 5 and shots.startswith("Find all c in Z_3") and "\nAnswer: B\n\n" in shots


def test_mmlu_drops_shots_to_fit(shared_data, llama_tok):
    settings = EvalSettings("mmlu", shots=5, subsets=("abstract_algebra",), limit=1)
    items, _ = mmlu.load_items(shared_data / "eval" / "mmlu", settings, llama_tok, context_limit=300)
    assert items[0]["shots"] < 5
    assert len(llama_tok(items[0]["prompt"], add_special_tokens=False)["input_ids"]) <= 298
    longer = mmlu.build_prompt([r for r in mmlu.read_mmlu_csv(
        shared_data / "eval" / "mmlu" / "dev" / "abstract_algebra_dev.csv")], "abstract_algebra",
        mmlu.read_mmlu_csv(shared_data / "eval" / "mmlu" / "test" / "abstract_algebra_test.csv")[0],
        items[0]["shots"] + 1, "tulu", llama_tok)
    assert len(llama_tok(longer, add_special_tokens=False)["input_ids"]) > 298


def test_mmlu_both_csv_layouts_and_pandas_nan(tmp_path):
    header = tmp_path / "h.csv"
    header.write_text('question,choice0,choice1,choice2,choice3,answer\n"Q, one",None,b,c,d,2\n')
    plain = tmp_path / "p.csv"
    plain.write_text('"Q, one",None,b,c,d,C\n')
    assert mmlu.read_mmlu_csv(header) == mmlu.read_mmlu_csv(plain) == [["Q, one", "nan", "b", "c", "d", "C"]]
    bad = tmp_path / "bad.csv"
    bad.write_text("q,a,b,c,d,E\n")
    with pytest.raises(CamelidError, match=r"bad\.csv:1: answer 'E'"):
        mmlu.read_mmlu_csv(bad)
    with pytest.raises(CamelidError, match="missing.csv"):
        mmlu.read_mmlu_csv(tmp_path / "missing.csv")


def test_mmlu_prediction_and_aggregation():
    assert mmlu.predict([-3.0, -1.0, -1.0, -5.0]) == 1  # first on ties, as torch.argmax
    assert mmlu.predict([None, -4.0, None, -2.0]) == 3  # servers report only their top-n
    recs = [{"group": "abstract_algebra", "score": 1.0}, {"group": "abstract_algebra", "score": 0.0},
            {"group": "anatomy", "score": 1.0}]
    m = mmlu.summarize(recs, None)
    assert m["average_acc"] == pytest.approx(200 / 3)  # micro, not the mean of subject means (75)
    assert m["subject_acc"] == {"abstract_algebra": 50.0, "anatomy": 100.0}
    assert m["cat_acc"] == {"STEM": 50.0, "other (business, health, misc.)": 100.0}


# --- GSM8K -------------------------------------------------------------------------------------------------


def test_gsm8k_sample_and_prompts(shared_data, llama_tok):
    data = shared_data / "eval" / "gsm8k"
    items, _ = gsm8k.load_items(data, EvalSettings("gsm8k", template="none"), llama_tok)
    assert len(items) == 200 and [it["id"] for it in items[:3]] == ["gsm8k/1309", "gsm8k/228", "gsm8k/51"]
    q = json.loads((data / "test.jsonl").read_text().splitlines()[1309])
    assert items[0]["gold"] == "2280" and q["answer"].endswith("#### 2280")
    cot = items[0]["prompt"]
    assert cot.startswith("Answer the following questions.\n\nQuestion: There are 15 trees in the grove.")
    assert cot.endswith("So the answer is 8.\n\nQuestion: " + q["question"].strip() + "\nAnswer:")
    assert cot.count("Question: ") == 9 and "Let's think" not in cot
    assert ids(llama_tok, cot)[-20:] == [29900, 29900, 29889, 1128, 1568, 6909, 29892, 297, 17208, 29892, 1258, 896,
                                         599, 12020, 297, 3001, 29973, 13, 22550, 29901]
    direct = gsm8k.load_items(data, EvalSettings("gsm8k", cot=False, limit=1), llama_tok)[0][0]["prompt"]
    # The upstream typo: "Quesion:" in all eight demos, "Question:" for the test question.
    assert direct.count("Quesion: ") == 8 and direct.count("Question: ") == 1
    assert direct.startswith("<|user|>\nAnswer the following questions.\n\nQuesion: There are 15 trees")
    assert "\nAnswer: 6\n\nQuesion: If there are 3 cars" in direct
    assert direct.endswith(q["question"].strip() + "\n<|assistant|>\nAnswer:")


@pytest.mark.parametrize("output,expected", [
    (" She has 1,234 dollars. So the answer is 1,234.", "1234"),
    ("The temperature is -5 degrees", "5"),  # the integer branch has no sign
    ("It costs $18.0", "18.0"),
    ("no number here", "no number here"),
    ("3 * 15 + 3.5.5.", ".5"),
])
def test_gsm8k_last_number(output, expected):
    assert gsm8k.extract_answer(output) == expected


def test_gsm8k_exact_match_quirks():
    assert exact_match(["5"], ["-5"]) == 1.0  # punctuation stripping removes the minus from the gold too
    assert exact_match(["18.0"], ["18"]) == 0.0  # "180" vs "18"
    assert exact_match(["", "A"], ["a", "a"]) == 0.5  # empty is wrong; case ignored


# --- BBH ---------------------------------------------------------------------------------------------------


def test_bbh_prompts(shared_data, llama_tok):
    data = shared_data / "eval" / "bbh"
    s = dict(subsets=("date_understanding",), limit=1)
    direct = bbh.load_items(data, EvalSettings("bbh", cot=False, template="none", **s), llama_tok)[0][0]
    cot = bbh.load_items(data, EvalSettings("bbh", template="none", **s), llama_tok)[0][0]
    chat = bbh.load_items(data, EvalSettings("bbh", **s), llama_tok)[0][0]
    example = json.loads((data / "bbh" / "date_understanding.json").read_text())["examples"][41]
    assert direct["id"] == cot["id"] == "date_understanding/41" and cot["gold"] == example["target"]
    assert direct["prompt"].startswith("Infer the date from context.\n\nQ: Today is Christmas Eve of 1937.")
    assert "\n(F) 12/14/1988\nA: (D).\n\nQ: Tomorrow is 11/12/2019." in direct["prompt"]  # the period stays
    assert "Let's think step by step." in cot["prompt"] and "Let's think" not in direct["prompt"]
    assert cot["prompt"].endswith("So the answer is (B).\n\nQ: " + example["input"] + "\nA:")
    assert chat["prompt"].startswith("<|user|>\nInfer the date") and chat["prompt"].endswith(
        "\n\nQ: " + example["input"] + "\n<|assistant|>\nA:")
    assert ids(llama_tok, cot["prompt"])[:6] == [1, 512, 571, 278, 2635, 515]


def test_bbh_subset_scores_the_full_runs_sample(shared_data, llama_tok):
    data = shared_data / "eval" / "bbh"
    full = {it["id"] for it in bbh.load_items(data, EvalSettings("bbh", template="none"), llama_tok)[0]}
    sub = {it["id"] for it in bbh.load_items(data, EvalSettings("bbh", subsets=("navigate",), template="none"),
                                             llama_tok)[0]}
    assert len(full) == 27 * 40 and len(sub) == 40 and sub <= full


@pytest.mark.parametrize("output,expected", [
    ("Let's think step by step. ... So the answer is (A).", "(A)"),
    ("so the answer is 3.5.", "3"),  # lazy up to the first period
    ("The answer is Yes. And more.", "Yes"),
    ("  no marker  ", "no marker"),
])
def test_bbh_extraction(output, expected):
    assert bbh.extract_answer(output) == expected


def test_bbh_dyck_punctuation_quirk():
    assert exact_match(["} ) >"], ["] ] >"]) == 1.0  # only spaces survive punctuation stripping


# --- TyDiQA (fixtures in the GoldP v1.1 layout) ------------------------------------------------------------


def goldp(qas_by_lang: dict[str, list[tuple[str, str, str]]]) -> dict:
    data = []
    for lang, rows in qas_by_lang.items():
        paragraphs = [{"context": ctx, "qas": [{"id": f"{lang}-{i}", "question": q,
                                                "answers": [{"text": a, "answer_start": ctx.find(a)}]}]}
                      for i, (ctx, q, a) in enumerate(rows)]
        data.append({"title": lang, "paragraphs": paragraphs})
    return {"version": "TyDiQA-GoldP-1.1-for-SQuAD-1.1", "data": data}


@pytest.fixture
def tydiqa_dir(tmp_path):
    dev = {"english": [("Paris is the capital of France.", "What is the capital of France?", "Paris")],
           "korean": [("서울은 한국의 수도이다.", "한국의 수도는?", "서울")]}
    train = {"english": [("The Nile is a river in Africa.", "Where is the Nile?", "Africa")],
             "korean": [("부산은 항구 도시이다.", "부산은 어떤 도시인가?", "항구 도시")]}
    (tmp_path / "tydiqa-goldp-v1.1-dev.json").write_text(json.dumps(goldp(dev), ensure_ascii=False))
    (tmp_path / "tydiqa-goldp-v1.1-train.json").write_text(json.dumps(goldp(train), ensure_ascii=False))
    return tmp_path


def test_tydiqa_prompts(tydiqa_dir, llama_tok):
    gp = tydiqa.load_items(tydiqa_dir, EvalSettings("tydiqa", template="none"), llama_tok)[0]
    assert [it["group"] for it in gp] == ["english", "korean"]
    assert gp[0]["prompt"] == (
        "Answer the following question based on the information in the given passage.\n\n"
        "Passage: The Nile is a river in Africa.\nQuestion: Where is the Nile?\nAnswer: Africa\n\n"
        "Passage: Paris is the capital of France.\nQuestion: What is the capital of France?\nAnswer:")
    assert gp[1]["prompt"].endswith("문단: 서울은 한국의 수도이다.\n질문: 한국의 수도는?\n답변:")
    cb = tydiqa.load_items(tydiqa_dir, EvalSettings("tydiqa", closed_book=True), llama_tok)[0]
    # Late-2023 chat format: the content is not stripped, so a blank line precedes the assistant header.
    assert cb[0]["prompt"] == ("<|user|>\nAnswer the following question.\n\nQuestion: Where is the Nile?\n"
                               "Answer: Africa\n\nQuestion: What is the capital of France?\n\n<|assistant|>\nAnswer:")
    assert ids(llama_tok, cb[0]["prompt"])[-4:] == [29958, 13, 22550, 29901]


def test_tydiqa_truncates_long_passages_with_bos(llama_tok):
    ctx = "word " * 600
    cut = tydiqa.truncate(llama_tok, ctx)
    # encode() adds BOS, so 511 words survive, and decode() (skip_special_tokens=False) writes the BOS text.
    assert cut == "<s> " + " ".join(["word"] * 511)
    assert tydiqa.truncate(llama_tok, "short passage") == "short passage"


def test_tydiqa_errors(tmp_path, llama_tok):
    (tmp_path / "tydiqa-goldp-v1.1-dev.json").write_text('{"data": [{"paragraphs": [{"qas": [{"id": "english-1"}]}]}]}')
    with pytest.raises(CamelidError, match=r"tydiqa-goldp-v1\.1-dev\.json: missing 'context'"):
        tydiqa.load_items(tmp_path, EvalSettings("tydiqa"), llama_tok)
    (tmp_path / "tydiqa-goldp-v1.1-dev.json").write_text(json.dumps(goldp({"klingon": [("a b", "q", "a")]})))
    with pytest.raises(CamelidError, match="no prompt template for languages"):
        tydiqa.load_items(tmp_path, EvalSettings("tydiqa"), llama_tok)


def test_squad_normalisation_and_scores():
    assert squad_normalize("The  Cat, an Apple!") == "cat apple"
    assert squad_exact("the Paris.", ["Paris"]) == 1.0
    assert squad_f1("in Paris France", ["Paris", "the city of Paris France"]) == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))
    assert squad_f1("London", ["Paris"]) == 0.0
    recs = [{"group": "english", "f1": 100.0, "exact_match": 100.0}, {"group": "english", "f1": 0.0, "exact_match": 0.0},
            {"group": "korean", "f1": 50.0, "exact_match": 0.0}]
    m = tydiqa.summarize(recs, None)
    assert m["f1"] == 50.0 and m["exact_match"] == 25.0  # mean over languages, not over questions


# --- Codex-Eval --------------------------------------------------------------------------------------------


def test_codex_prompt_program_and_stops(shared_data, llama_tok):
    path = shared_data / "eval" / "humaneval"
    item = codex.load_items(path, EvalSettings("codex", limit=1), llama_tok)[0][0]
    assert item["id"] == "HumanEval/0" and item["prompt"].startswith("from typing import List\n\n\ndef has_close_elements")
    chat = codex.load_items(path, EvalSettings("codex", limit=1, template="tulu"), llama_tok)[0][0]
    assert chat["prompt"] == ("<|user|>\nComplete the following python function.\n\n\n" + item["prompt"] +
                              "\n<|assistant|>\nHere is the completed function:\n\n\n" + item["prompt"])
    assert codex.program(item, "    pass") == item["prompt"] + "    pass\n" + item["test"] + "\ncheck(has_close_elements)"
    gen = codex.generation(EvalSettings("codex", pass_at=10, samples=20))
    assert gen.stop == ("\nclass", "\ndef", "\n#", "\nif", "\nprint") and gen.temperature == 0.8 and gen.top_p == 0.95


def test_pass_at_k_exact():
    assert pass_at_k(20, 3, 1) == pytest.approx(0.15)
    assert pass_at_k(20, 3, 10) == pytest.approx(1 - math.comb(17, 10) / math.comb(20, 10))
    assert pass_at_k(20, 0, 10) == 0.0 and pass_at_k(20, 11, 10) == 1.0 and pass_at_k(5, 5, 1) == 1.0
    recs = [{"n": 20, "correct": 3}, {"n": 20, "correct": 0}]
    m = codex.summarize(recs, EvalSettings("codex", pass_at=10))
    assert m["pass@10"] == pytest.approx((1 - math.comb(17, 10) / math.comb(20, 10)) / 2)
    assert m["score"] == pytest.approx(100 * m["pass@10"]) and set(m) >= {"pass@1", "pass@5", "pass@20"}


# --- suite -------------------------------------------------------------------------------------------------


def test_card_average_reproduces_tulu_30b():
    # allenai/tulu-30b model card row; its Average is 44.7.
    row = dict(zip(["MMLU 0-shot", "MMLU 5-shot", "GSM Direct", "GSM CoT", "BBH Direct", "BBH CoT", "TydiQA GP",
                    "TydiQA CB", "Codex-Eval P@1", "Codex-Eval P@10", "AlpacaFarm vs Davinci-003"],
                   [57.7, 58.4, 6.0, 51.0, 45.8, 48.7, 58.2, 12.3, 25.4, 46.0, 63.5], strict=True))
    avg, missing = card_average(row)
    assert round(avg, 1) == 44.7 and missing == []
    partial = {**row, "TydiQA GP": None, "TydiQA CB": None}
    avg2, missing2 = card_average(partial)
    assert missing2 == ["TydiQA GP", "TydiQA CB"] and avg2 == pytest.approx(
        (58.05 + 28.5 + 47.25 + 35.7 + 63.5) / 5)
    suite = {"columns": list(row), "scores": partial, "average": avg2, "average_complete": False,
             "skipped": {"TydiQA GP": "no data", "TydiQA CB": "no data"}}
    text = format_row("m", suite)
    assert "| m | 57.7 | 58.4 | 6.0 | 51.0 | 45.8 | 48.7 | - | - | 25.4 | 46.0 | 63.5 | 46.6* |" in text


# --- runner: records, resume, errors (stories260K: plumbing only) ------------------------------------------


@pytest.fixture(scope="module")
def stories_backend():
    import torch

    import camelid
    from camelid.eval import LocalBackend

    torch.set_num_threads(1)
    model, tok = camelid.load(STORIES, device="cpu")
    return LocalBackend(model, tok, "stories260K")


def test_resume_after_kill_gives_the_same_results(shared_data, stories_backend, tmp_path, monkeypatch):
    from camelid.eval import evaluate

    settings = EvalSettings("mmlu", shots=1, limit=3, subsets=("anatomy", "astronomy"), batch_size=2)
    data = shared_data / "eval" / "mmlu"
    fresh = evaluate(stories_backend, settings, data, tmp_path / "fresh", progress=False)
    calls = {"n": 0}
    real = mmlu.score

    def dying(*args):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # killed after two chunks were recorded
        return real(*args)

    monkeypatch.setattr(mmlu, "score", dying)
    with pytest.raises(KeyboardInterrupt):
        evaluate(stories_backend, settings, data, tmp_path / "run", progress=False)
    records = tmp_path / "run" / "mmlu-1shot" / "records.jsonl"
    with open(records, "a") as f:
        f.write('{"id": "anatomy/2", "torn')  # a write cut short by the kill
    monkeypatch.setattr(mmlu, "score", real)
    resumed = evaluate(stories_backend, settings, data, tmp_path / "run", progress=False)
    assert resumed["resumed"] == 3 and resumed["metrics"] == fresh["metrics"]
    assert len(records.read_text().splitlines()) == 6
    saved = json.loads((tmp_path / "run" / "mmlu-1shot" / "results.json").read_text())
    assert saved["protocol"].startswith("camelid-tulu-eval/") and saved["template"] == "tulu"
    assert saved["data_files"][str(data / "test" / "anatomy_test.csv")] == fresh["data_files"][str(data / "test" / "anatomy_test.csv")]
    rec = json.loads(records.read_text().splitlines()[0])
    assert set(rec) >= {"prompt", "prediction", "gold", "score", "logprobs"}
    with pytest.raises(CamelidError, match="different run"):
        evaluate(stories_backend, EvalSettings("mmlu", shots=1, limit=2, subsets=("anatomy", "astronomy")),
                 data, tmp_path / "run", progress=False)


def test_generation_tasks_record_outputs(shared_data, stories_backend, tmp_path):
    from camelid.eval import evaluate

    res = evaluate(stories_backend, EvalSettings("gsm8k", limit=2, template="none", max_new_tokens=8),
                   shared_data / "eval" / "gsm8k", tmp_path, progress=False)
    recs = [json.loads(line) for line in (tmp_path / "gsm8k-cot" / "records.jsonl").read_text().splitlines()]
    assert [r["id"] for r in recs] == ["gsm8k/1309", "gsm8k/228"]
    assert all(r["prediction"] == gsm8k.extract_answer(r["output"]) and "\n" not in r["output"] for r in recs)
    assert res["metrics"]["n"] == 2


def test_generation_from_a_shared_prefix_equals_full_prefill(shared_data, stories_backend):
    # GSM8K 1-shot (stories260K holds 512 positions): every prompt starts with the chat header and the exemplar.
    import torch

    from camelid.eval import LocalBackend
    from camelid.eval.backends import _generate_local, prompt_ids
    from camelid.eval.prefix import prefill_after
    from camelid.runtime.batch import prefill

    model, tok = stories_backend.model, stories_backend.tokenizer
    settings = EvalSettings("gsm8k", shots=1, limit=8, max_new_tokens=24)
    items, _ = gsm8k.load_items(shared_data / "eval" / "gsm8k", settings, tok)
    prompts = [it["prompt"] for it in items]
    gen = gsm8k.generation(settings)
    backend = LocalBackend(model, tok)
    first = backend.generate(prompts[:5], gen, [42] * 5)
    prefix = backend._prefix
    second = backend.generate(prompts[5:], gen, [42] * 3)
    assert backend._prefix is prefix and len(prefix.ids) > 150  # computed once, reused by the next chunk
    ids = [prompt_ids(tok, p) for p in prompts]
    full = (_generate_local(model, tok, ids[:5], gen, 42, backend.eos)
            + _generate_local(model, tok, ids[5:], gen, 42, backend.eos))
    assert first + second == full and all(full)
    # The batch it hands the generator is batch.prefill's: same logits, positions and real-token count.
    batch, logits = prefill_after(model, ids[:3], prefix)
    ref_batch, ref_logits = prefill(model, ids[:3])
    torch.testing.assert_close(logits, ref_logits, rtol=1e-4, atol=1e-4)
    assert batch.positions.tolist() == ref_batch.positions.tolist() == [len(x) for x in ids[:3]]
    assert batch.mask.sum(1).tolist() == ref_batch.mask.sum(1).tolist() and batch.width == ref_batch.width


def test_missing_data_errors_name_the_file(tmp_path, llama_tok):
    with pytest.raises(CamelidError, match=r"test\.jsonl.*GSM8K test\.jsonl"):
        gsm8k.load_items(tmp_path, EvalSettings("gsm8k"), llama_tok)
    (tmp_path / "test.jsonl").write_text('{"question": "q"}\n')
    with pytest.raises(CamelidError, match=r"test\.jsonl:1: missing \['answer'\]"):
        gsm8k.load_items(tmp_path, EvalSettings("gsm8k"), llama_tok)
    with pytest.raises(CamelidError, match="HumanEval.jsonl.gz"):
        codex.load_items(tmp_path, EvalSettings("codex"), llama_tok)
    with pytest.raises(CamelidError, match="no BBH tasks"):
        bbh.load_items(tmp_path, EvalSettings("bbh"), llama_tok)
    with pytest.raises(CamelidError, match="unknown eval task"):
        EvalSettings("hellaswag")


@pytest.mark.parametrize("template", ["none", "tulu"])
@pytest.mark.parametrize("task,folder,kw", [
    ("mmlu", "mmlu", {"shots": 5, "subsets": ("college_physics",)}),
    ("gsm8k", "gsm8k", {"cot": True}), ("gsm8k", "gsm8k", {"cot": False}),
    ("bbh", "bbh", {"cot": True, "subsets": ("navigate",)}), ("bbh", "bbh", {"cot": False, "subsets": ("navigate",)}),
    ("codex", "humaneval", {}),
])
def test_prompt_ids_are_the_slow_llama_tokenizers(shared_data, llama_tok, sp, task, folder, kw, template):
    # open-instruct tokenizes the prompt text with the (slow, legacy) LLaMA tokenizer and its BOS: the
    # ids are BOS + SentencePiece's pieces of the whole text, with no special token inside.
    from camelid.eval.tasks import task_module

    item = task_module(task).load_items(shared_data / "eval" / folder,
                                        EvalSettings(task, limit=1, template=template, **kw), llama_tok)[0][0]
    assert ids(llama_tok, item["prompt"]) == [1] + sp.encode(item["prompt"])
    assert item["prompt"].startswith("<|user|>\n") == (template == "tulu")


def test_suite_runs_the_columns_it_has_data_for(shared_data, stories_backend, tmp_path):
    from camelid.eval import evaluate, run_suite

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "mmlu").symlink_to(shared_data / "eval" / "mmlu")
    base = EvalSettings("mmlu", limit=1, subsets=("anatomy", "virology"))
    suite = run_suite(stories_backend, tmp_path / "data", base, tmp_path / "out", progress=False)
    five = evaluate(stories_backend, EvalSettings("mmlu", shots=5, limit=1, subsets=("anatomy", "virology")),
                    shared_data / "eval" / "mmlu", progress=False)
    assert suite["scores"]["MMLU 5-shot"] == five["metrics"]["score"]
    assert [c for c, v in suite["scores"].items() if v is not None] == ["MMLU 0-shot", "MMLU 5-shot"]
    assert suite["average"] == pytest.approx((suite["scores"]["MMLU 0-shot"] + five["metrics"]["score"]) / 2)
    assert not suite["average_complete"] and suite["skipped"]["AlpacaFarm vs Davinci-003"].startswith("no ")
    assert (tmp_path / "out" / "mmlu-0shot" / "results.json").exists()
    # what the result measured, for a card's row (camelid release --performance FILE labels it so)
    assert (suite["model"], suite["revision"], suite["backend"]["backend"]) == ("stories260K", None, "local")


def test_temperature_is_refused_where_the_protocol_decodes_greedily():
    with pytest.raises(CamelidError, match="--temperature applies to codex only"):
        EvalSettings("gsm8k", temperature=0.5)
    assert EvalSettings("codex", temperature=0.5, samples=2).temperature == 0.5
