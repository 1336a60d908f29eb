"""Evaluating through a served endpoint gives the local scores: camel45m behind a live `camelid serve`
(TGI /generate and OpenAI /v1/completions on loopback), and AlpacaFarm against a fake judge endpoint."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from serve_helpers import STORIES, live_server, request

from camelid.errors import CamelidError
from camelid.eval import EvalSettings, LocalBackend, RemoteBackend, evaluate
from camelid.eval.tasks import alpacafarm


@pytest.fixture(scope="module")
def camel(shared_data):
    import torch

    import camelid

    torch.set_num_threads(2)
    model, tok = camelid.load(shared_data / "models" / "camel45m", device="cpu", dtype="float32")
    return model, tok


@pytest.fixture(scope="module")
def camel_server(camel):
    from camelid.runtime.stops import eos_token_ids
    from camelid.serve.engine import ServedModel

    model, tok = camel
    served = ServedModel(model=model, tokenizer=tok, model_id="camel45m", revision=None,
                         eos_token_ids=eos_token_ids(model, tok),
                         max_position_embeddings=model.config.max_position_embeddings)
    with live_server(served) as (base, _):
        yield base


# (data folder, settings): small limits, short generations; Codex greedy so both sides draw the same.
CASES = [
    ("mmlu", EvalSettings("mmlu", shots=0, limit=2, subsets=("anatomy", "virology"))),
    ("gsm8k", EvalSettings("gsm8k", limit=1, template="none", max_new_tokens=16)),
    ("bbh", EvalSettings("bbh", limit=1, subsets=("boolean_expressions", "navigate"), template="none",
                         max_new_tokens=16)),
    ("humaneval", EvalSettings("codex", limit=1, samples=2, temperature=0.0, max_new_tokens=32)),
]


def test_served_scores_equal_local(shared_data, camel, camel_server, tmp_path):
    model, tok = camel
    local = LocalBackend(model, tok, "camel45m")
    tgi = RemoteBackend(camel_server, tok)
    for folder, settings in CASES:
        data = shared_data / "eval" / folder
        here = evaluate(local, settings, data, tmp_path / "local", progress=False)
        there = evaluate(tgi, settings, data, tmp_path / "tgi", progress=False)
        assert there["metrics"] == here["metrics"], folder
        name = here["setting"]
        a = [json.loads(x) for x in (tmp_path / "local" / name / "records.jsonl").read_text().splitlines()]
        b = [json.loads(x) for x in (tmp_path / "tgi" / name / "records.jsonl").read_text().splitlines()]
        key = "prediction" if folder == "mmlu" else ("outputs" if folder == "humaneval" else "output")
        assert [r[key] for r in a] == [r[key] for r in b], folder
    assert there["backend"] == "remote" and there["api"] == "tgi"


def test_openai_route_generates_and_scores_the_same(shared_data, camel, camel_server, tmp_path):
    model, tok = camel
    data = shared_data / "eval" / "gsm8k"
    settings = EvalSettings("gsm8k", limit=2, template="none", max_new_tokens=16)
    here = evaluate(LocalBackend(model, tok, "camel45m"), settings, data, tmp_path / "a", progress=False)
    there = evaluate(RemoteBackend(camel_server + "/v1", tok), settings, data, tmp_path / "b", progress=False)
    assert there["api"] == "openai" and there["metrics"] == here["metrics"]
    records = [(tmp_path / d / "gsm8k-cot" / "records.jsonl").read_text().splitlines() for d in "ab"]
    assert records[0] == records[1] and len(records[0]) == 2
    # MMLU 0-shot through /v1/completions logprobs: the same predictions locally, via TGI and via OpenAI.
    # camel45m never ranks " A".." D" among its top 5 here, so the scores come from `echo` prompt logprobs.
    mmlu0 = EvalSettings("mmlu", shots=0, limit=3, subsets=("anatomy", "virology"))
    runs = {}
    for name, backend in (("local", LocalBackend(model, tok, "camel45m")), ("tgi", RemoteBackend(camel_server, tok)),
                          ("openai", RemoteBackend(camel_server + "/v1", tok))):
        res = evaluate(backend, mmlu0, shared_data / "eval" / "mmlu", tmp_path / name, progress=False)
        recs = [json.loads(x) for x in (tmp_path / name / "mmlu-0shot" / "records.jsonl").read_text().splitlines()]
        runs[name] = (res["metrics"], [r["prediction"] for r in recs], [r["logprobs"] for r in recs])
    assert len(runs["local"][1]) == 6
    for name in ("tgi", "openai"):
        assert runs[name][:2] == runs["local"][:2], name
        flat = [lp for row in runs[name][2] for lp in row]
        assert flat == pytest.approx([lp for row in runs["local"][2] for lp in row], abs=1e-4), name


def test_completions_logprobs_in_openai_legacy_format(camel, camel_server):
    import torch

    model, tok = camel
    prompt = "Once upon a time, there was a little"
    body = {"prompt": prompt, "max_tokens": 2, "temperature": 0, "logprobs": 3}
    status, reply = request(camel_server + "/v1/completions", body)
    assert status == 200, reply
    lp = reply["choices"][0]["logprobs"]
    assert set(lp) == {"tokens", "token_logprobs", "top_logprobs", "text_offset"} and len(lp["tokens"]) == 2
    assert "".join(lp["tokens"]) == reply["choices"][0]["text"] and lp["text_offset"][0] == len(prompt)
    ids = tok(prompt)["input_ids"]
    with torch.inference_mode():
        local = model(input_ids=torch.tensor([ids])).logits[0, -1].float().log_softmax(-1)
    values, top = local.topk(3)
    expected = {tok.decode([ids[-1], int(i)])[len(tok.decode([ids[-1]])):]: float(v) for i, v in zip(top, values, strict=True)}
    assert all(k.startswith(" ") for k in expected)  # the token's text after the prompt, not its piece
    assert lp["top_logprobs"][0] == pytest.approx(expected, abs=1e-4)
    assert lp["token_logprobs"][0] == pytest.approx(float(values[0]), abs=1e-4)
    # echo: the prompt's tokens first (the first without a logprob), then the generated one.
    status, echo = request(camel_server + "/v1/completions", {**body, "max_tokens": 1, "logprobs": 0, "echo": True})
    assert status == 200, echo
    choice = echo["choices"][0]
    assert choice["text"].startswith(prompt) and echo["usage"]["prompt_tokens"] == len(ids)
    assert len(choice["logprobs"]["tokens"]) == len(ids) + 1 and choice["logprobs"]["token_logprobs"][0] is None
    with torch.inference_mode():
        full = model(input_ids=torch.tensor([ids])).logits[0, :-1].float().log_softmax(-1)
    prompt_lps = full.gather(1, torch.tensor(ids[1:])[:, None])[:, 0].tolist()
    assert choice["logprobs"]["token_logprobs"][1:len(ids)] == pytest.approx(prompt_lps, abs=1e-4)


# --- AlpacaFarm with a fake judge --------------------------------------------------------------------------


class FakeJudge(BaseHTTPRequestHandler):
    """An OpenAI-compatible /v1/chat/completions that prefers Output (a), calls a tie or talks nonsense
    according to the instruction, and remembers what it was asked."""

    prompts: list[str] = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        prompt = body["messages"][0]["content"]
        FakeJudge.prompts.append(prompt)
        reply = "Tie." if "TIE" in prompt else "I cannot say." if "NONSENSE" in prompt else "Output (a) is better."
        out = json.dumps({"choices": [{"message": {"role": "assistant", "content": reply}}]}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args):
        pass


@pytest.fixture
def judge():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeJudge)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    FakeJudge.prompts = []
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    thread.join(5)


def test_alpacafarm_win_rate_with_a_judge(tmp_path, judge):
    import camelid

    model, tok = camelid.load(STORIES, device="cpu")
    rows = [{"instruction": f"Tell a story number {i}.", "output": f"Reference story {i}."} for i in range(5)]
    rows += [{"instruction": "TIE please", "output": "ref"}, {"instruction": "NONSENSE", "output": "ref"}]
    (tmp_path / "alpaca_eval.json").write_text(json.dumps(rows))
    prompt_file = tmp_path / "judge.txt"
    prompt_file.write_text("MY JUDGE\n{instruction}\n(a) {output_1}\n(b) {output_2}\n")
    settings = EvalSettings("alpacafarm", max_new_tokens=8, judge_url=judge, judge_model="fake",
                            judge_prompt=str(prompt_file))
    res = evaluate(LocalBackend(model, tok, "stories260K"), settings, tmp_path, tmp_path / "out", progress=False)
    recs = [json.loads(x) for x in (tmp_path / "out" / "alpacafarm" / "records.jsonl").read_text().splitlines()]
    assert recs[0]["prompt"] == "<|user|>\nTell a story number 0.\n<|assistant|>\n"
    assert all(p.startswith("MY JUDGE\n") for p in FakeJudge.prompts) and len(FakeJudge.prompts) == 7
    # "Output (a)" wins for the model exactly when it was shown first; the tie is half; nonsense is dropped.
    wins = sum(r["model_first"] for r in recs[:5])
    assert res["metrics"]["judged"] == 6 and res["metrics"]["draws"] == 1
    assert res["metrics"]["win_rate"] == pytest.approx(100 * (wins + 0.5) / 6)
    assert alpacafarm.parse_preference("output (B)") == "b" and alpacafarm.parse_preference("meh") is None


# --- AlpacaFarm with a live judge, TyDiQA through the served backends -------------------------------------


@pytest.fixture(scope="module")
def camel_judge(shared_data):
    """camel45m behind `camelid serve` as an OpenAI-compatible chat judge (the Tulu chat template)."""
    from camelid.serve.engine import load_for_serving

    served = load_for_serving(str(shared_data / "models" / "camel45m"), template="tulu", device="cpu", dtype="float32")
    with live_server(served) as (base, _):
        yield base + "/v1", served


def test_alpacafarm_with_a_live_judge(tmp_path, camel, camel_judge):
    # The test is of the path, not the verdicts: camel45m's replies are whatever a 45M model writes.
    from camelid.runtime.generate import generate
    from camelid.runtime.sampling import SamplingParams
    from camelid.runtime.stops import Stops
    from camelid.serve.engine import chat_stop_strings, render_chat

    judge_url, served = camel_judge
    rows = [{"instruction": "Name a primary color.", "input": "", "output": "Red.", "generator": "text-davinci-003",
             "dataset": "helpful_base", "datasplit": "eval"},
            {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5", "generator": "text-davinci-003",
             "dataset": "selfinstruct", "datasplit": "eval"}]
    (tmp_path / "alpaca_farm_evaluation.json").write_text(json.dumps(rows))
    model, tok = camel
    settings = EvalSettings("alpacafarm", max_new_tokens=8, judge_url=judge_url, judge_model="camel45m")
    try:
        res = evaluate(LocalBackend(model, tok, "camel45m"), settings, tmp_path, tmp_path / "out", progress=False)
    except CamelidError as e:  # every reply unparseable: the run says so, after recording them
        assert "no parseable judgement" in str(e)
        res = None
    recs = [json.loads(x) for x in (tmp_path / "out" / "alpacafarm" / "records.jsonl").read_text().splitlines()]
    assert recs[1]["prompt"] == "<|user|>\nAdd the numbers.\n\n2 and 3\n<|assistant|>\n"
    template = alpacafarm.judge_prompt_text(settings)
    for r in recs:
        pair = (r["output"], r["reference"]) if r["model_first"] else (r["reference"], r["output"])
        asked = template.format(instruction=r["instruction"], output_1=pair[0], output_2=pair[1])
        ids = render_chat(served, [{"role": "user", "content": asked}])
        local = generate(served.model, tok, [ids], SamplingParams(temperature=0.0),
                         Stops.of(served.eos_token_ids, chat_stop_strings(served)), 100)[0].text
        assert r["judge_reply"] == local  # the served judge's raw greedy reply, recorded as it came
        assert r["verdict"] == alpacafarm.parse_preference(r["judge_reply"])
        expected = None if r["verdict"] is None else 0.5 if r["verdict"] == "tie" else float(
            (r["verdict"] == "a") == r["model_first"])
        assert r["score"] == expected
    valid = [r["score"] for r in recs if r["score"] is not None]
    if res is not None:  # draws count half
        assert res["metrics"]["win_rate"] == pytest.approx(100 * sum(valid) / len(valid))
        assert res["metrics"]["draws"] == sum(v == 0.5 for v in valid)
    else:
        assert not valid


def tydiqa_goldp(entries: list[tuple[str, str, str, str]]) -> dict:
    """TyDiQA GoldP v1.1 (the SQuAD 1.1 layout): articles of paragraphs of questions; ids start with the language."""
    data = []
    for n, (lang, ctx, question, answer) in enumerate(entries):
        qa = {"answers": [{"answer_start": ctx.index(answer), "text": answer}], "id": f"{lang}-{7310893650716442 + n}-0",
              "question": question}
        data.append({"paragraphs": [{"context": ctx, "qas": [qa]}], "title": f"Article {n}"})
    return {"data": data, "version": "TyDiQA-GoldP-1.1-for-SQuAD-1.1"}


def test_tydiqa_served_scores_equal_local(tmp_path, camel, camel_server):
    dev = [("english", "Paris is the capital and largest city of France.", "What is the capital of France?", "Paris"),
           ("english", "The Nile flows north through Africa into the Mediterranean.", "Where does the Nile flow?",
            "into the Mediterranean"),
           ("finnish", "Helsinki on Suomen pääkaupunki.", "Mikä on Suomen pääkaupunki?", "Helsinki")]
    train = [("english", "Mount Everest is the highest mountain on Earth.", "What is the highest mountain?",
              "Mount Everest"),
             ("finnish", "Turku on Suomen vanhin kaupunki.", "Mikä on Suomen vanhin kaupunki?", "Turku")]
    data = tmp_path / "tydiqa"
    data.mkdir()
    (data / "tydiqa-goldp-v1.1-dev.json").write_text(json.dumps(tydiqa_goldp(dev), ensure_ascii=False))
    (data / "tydiqa-goldp-v1.1-train.json").write_text(json.dumps(tydiqa_goldp(train), ensure_ascii=False))
    model, tok = camel
    backends = {"local": LocalBackend(model, tok, "camel45m"), "tgi": RemoteBackend(camel_server, tok),
                "openai": RemoteBackend(camel_server + "/v1", tok)}
    for settings in (EvalSettings("tydiqa", max_new_tokens=12), EvalSettings("tydiqa", closed_book=True,
                                                                             max_new_tokens=12)):
        runs = {}
        for name, backend in backends.items():
            res = evaluate(backend, settings, data, tmp_path / name, progress=False)
            path = tmp_path / name / res["setting"] / "records.jsonl"
            runs[name] = (res["metrics"], [json.loads(x)["output"] for x in path.read_text().splitlines()])
        assert len(runs["local"][1]) == 3 and set(runs["local"][0]["per_language"]) == {"english", "finnish"}
        assert runs["tgi"] == runs["local"] and runs["openai"] == runs["local"], settings
