"""Evaluating through a served endpoint gives the local scores: camel45m behind a live `camelid serve`
(TGI /generate and OpenAI /v1/completions on loopback), and AlpacaFarm against a fake judge endpoint."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from serve_helpers import STORIES, live_server, request

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
