"""camelid serve against the real clients (TGI's `text_generation`, huggingface_hub, openai) on loopback."""

from __future__ import annotations

import dataclasses
import json
import socket
import threading
import time

import pytest
import torch

from camelid.chat import apply_template
from camelid.serve.engine import load_for_serving
from tests.serve_helpers import STORIES, TEMPLATE, live_server, metric, request

text_generation = pytest.importorskip("text_generation")
openai = pytest.importorskip("openai")
from huggingface_hub import InferenceClient  # noqa: E402
from huggingface_hub.errors import ValidationError as HubValidationError  # noqa: E402

PROMPT = "Once upon a time"
LIMITS = dict(max_input_tokens=64, max_total_tokens=256, max_concurrent_requests=4)


@pytest.fixture(scope="module")
def served():
    torch.set_num_threads(1)  # a 260K-parameter model gains nothing from more, and CI shares its 2 cores
    return load_for_serving(str(STORIES), template=TEMPLATE)


@pytest.fixture(scope="module")
def server(served):
    with live_server(served, **LIMITS) as (base, state):
        yield base, state


def greedy_reference(served, prompt: str, n: int) -> list[int]:
    ids = served.tokenizer(prompt)["input_ids"]
    out = served.model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False)
    return out[0, len(ids) :].tolist()


# --- TGI's own client -------------------------------------------------------------------------------------


def test_tgi_client_generate_matches_transformers(served, server):
    base, _ = server
    client = text_generation.Client(base)
    r = client.generate(PROMPT, max_new_tokens=12, decoder_input_details=True)
    ref = greedy_reference(served, PROMPT, 12)
    assert [t.id for t in r.details.tokens] == ref
    assert r.generated_text == served.tokenizer.decode(ref, skip_special_tokens=True)
    assert r.details.finish_reason == text_generation.types.FinishReason.Length
    assert r.details.generated_tokens == 12 and r.details.seed is None
    prompt_ids = served.tokenizer(PROMPT)["input_ids"]
    assert [t.id for t in r.details.prefill] == prompt_ids
    assert r.details.prefill[0].logprob is None and all(t.logprob < 0 for t in r.details.prefill[1:])
    assert all(t.logprob <= 0 for t in r.details.tokens)


def test_tgi_client_stream_has_no_done_marker(served, server):
    base, _ = server
    client = text_generation.Client(base)
    events = list(client.generate_stream(PROMPT, max_new_tokens=10))
    full = client.generate(PROMPT, max_new_tokens=10)
    assert len(events) == 10
    assert all(e.generated_text is None for e in events[:-1])
    assert events[-1].generated_text == full.generated_text == "".join(e.token.text for e in events)
    assert events[-1].details.finish_reason == text_generation.types.FinishReason.Length
    assert events[-1].details.generated_tokens == 10


def test_stop_sequence_and_eos(served, server):
    base, _ = server
    client = text_generation.Client(base)
    first = client.generate(PROMPT, max_new_tokens=20).generated_text
    stop = " " + first.split()[4]  # a word the greedy continuation is known to produce
    r = client.generate(PROMPT, max_new_tokens=20, stop_sequences=[stop])
    assert r.details.finish_reason == text_generation.types.FinishReason.StopSequence
    assert r.generated_text == first[: first.index(stop) + len(stop)]  # TGI keeps the stop sequence


def test_tgi_client_validation_errors(server):
    base, _ = server
    client = text_generation.Client(base)
    with pytest.raises(text_generation.errors.ValidationError, match="must have less than 64 tokens"):
        client.generate("Once upon a time " * 40, max_new_tokens=5)
    with pytest.raises(text_generation.errors.ValidationError, match="supports up to 4 stop sequences. Given: 5"):
        client.generate(PROMPT, max_new_tokens=5, stop_sequences=list("abcde"))
    with pytest.raises(text_generation.errors.ValidationError, match="`max_new_tokens` must be strictly positive"):
        client.generate(PROMPT, max_new_tokens=0)


# --- huggingface_hub.InferenceClient ----------------------------------------------------------------------


CARD_PARAMS = dict(do_sample=True, temperature=0.7, top_p=0.95, top_k=40, repetition_penalty=1.1)


def test_inference_client_text_generation(server):
    base, _ = server
    client = InferenceClient(base)
    plain = client.text_generation(PROMPT, max_new_tokens=8)
    assert isinstance(plain, str) and plain
    a = client.text_generation(PROMPT, max_new_tokens=16, details=True, seed=7, **CARD_PARAMS)
    b = client.text_generation(PROMPT, max_new_tokens=16, details=True, seed=7, **CARD_PARAMS)
    assert a.details.seed == 7 and a.details.generated_tokens == 16
    assert [t.id for t in a.details.tokens] == [t.id for t in b.details.tokens]  # seeded -> reproducible
    stream = list(client.text_generation(PROMPT, max_new_tokens=16, details=True, stream=True, seed=7, **CARD_PARAMS))
    assert [e.token.id for e in stream] == [t.id for t in a.details.tokens]
    assert stream[-1].generated_text == a.generated_text
    assert stream[-1].details.finish_reason == "length"


@pytest.mark.parametrize(
    "params, message",
    [
        ({"top_p": 1.0}, "Input validation error: `top_p` must be > 0.0 and < 1.0"),
        ({"temperature": 0.0}, "Input validation error: `temperature` must be strictly positive"),
        ({"max_new_tokens": 0}, "Input validation error: `max_new_tokens` must be strictly positive"),
        ({"stop": list("abcde")}, "Input validation error: `stop` supports up to 4 stop sequences. Given: 5"),
    ],
)
def test_inference_client_validation_error(server, params, message):
    base, _ = server
    client = InferenceClient(base)
    kwargs = {"max_new_tokens": 5, **params}
    with pytest.raises(HubValidationError) as e:
        client.text_generation(PROMPT, **kwargs)
    assert message in str(e.value)
    with pytest.raises(HubValidationError):
        list(client.text_generation(PROMPT, stream=True, **kwargs))


def test_raw_422_bodies_match_tgi(server):
    base, _ = server
    cases = [
        ({"inputs": "x " * 80, "parameters": {"max_new_tokens": 5}}, "`inputs` must have less than 64 tokens. Given: "),
        (
            {"inputs": PROMPT, "parameters": {"max_new_tokens": 300}},
            "`inputs` tokens + `max_new_tokens` must be <= 256. Given: 5 `inputs` tokens and 300 `max_new_tokens`",
        ),
        ({"inputs": PROMPT, "parameters": {"top_p": 1.0}}, "`top_p` must be > 0.0 and < 1.0"),
        ({"inputs": PROMPT, "parameters": {"temperature": 0}}, "`temperature` must be strictly positive"),
        ({"inputs": PROMPT, "parameters": {"stop": ["a", "b", "c", "d", "e"]}}, "up to 4 stop sequences. Given: 5"),
        ({"inputs": PROMPT, "parameters": {"max_new_tokens": 0}}, "`max_new_tokens` must be strictly positive"),
        ({"inputs": "", "parameters": {"max_new_tokens": 3}}, "`inputs` cannot be empty"),
    ]
    for route in ("/generate", "/generate_stream", "/"):
        for body, message in cases:
            status, out = request(base + route, body)
            assert status == 422, (route, body, out)
            assert out["error_type"] == "validation"
            assert out["error"].startswith("Input validation error: ") and message in out["error"]


@pytest.mark.parametrize(
    "body",
    [
        b'{"inputs": "Once',  # malformed JSON
        b"[1, 2]",
        b'{"inputs": 5}',  # wrong type
        b'{"inputs": "x", "parameters": {"max_new_tokens": "5"}}',
        b'{"inputs": "x", "parameters": {"max_new_tokens": -1}}',
        b'{"inputs": "x", "parameters": {"frobnicate": true}}',  # unknown field
        b'{"inputs": "x", "extra": 1}',
        b"",
    ],
)
def test_bad_bodies_are_422_not_crashes(server, body):
    base, _ = server
    status, out = request(base + "/generate", body)
    assert status == 422 and out["error_type"] == "validation", out
    assert request(base + "/health")[0] == 200


def test_body_size_limit(server):
    base, _ = server
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as s:
        # Refused from the declared length, before the 3 MB would be read.
        s.sendall(b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Length: 3000000\r\n\r\n{")
        reply = b""
        while b"}" not in reply and (chunk := s.recv(4096)):
            reply += chunk
        reply = reply.decode()
    assert reply.startswith("HTTP/1.1 413") and "Payload exceeds" in reply


def test_compat_route_wraps_in_list_and_streams(server):
    base, _ = server
    status, out = request(base + "/", {"inputs": PROMPT, "parameters": {"max_new_tokens": 4}})
    assert status == 200 and isinstance(out, list) and "generated_text" in out[0]
    status, text = request(base + "/", {"inputs": PROMPT, "parameters": {"max_new_tokens": 4}, "stream": True})
    lines = [ln for ln in text.splitlines() if ln]
    assert len(lines) == 4 and all(ln.startswith("data:") for ln in lines) and "[DONE]" not in text


def test_info_health_tokenize_metrics(served, server):
    base, _ = server
    status, info = request(base + "/info")
    assert status == 200 and info["max_input_tokens"] == 64 and info["max_total_tokens"] == 256
    assert info["max_concurrent_requests"] == 4 and info["max_stop_sequences"] == 4
    assert request(base + "/health")[0] == 200
    status, toks = request(base + "/tokenize", {"inputs": "Hello world"})
    assert [t["id"] for t in toks] == served.tokenizer("Hello world")["input_ids"]
    assert "".join(t["text"] for t in toks) == "Hello world"
    status, text = request(base + "/metrics")
    assert "tgi_request_count_total" in text and "camelid_sequences_in_batch" in text


# --- OpenAI client ----------------------------------------------------------------------------------------


def test_openai_chat_and_stream(served, server):
    base, _ = server
    client = openai.OpenAI(base_url=base + "/v1", api_key="unused")
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Tell a story."}]
    r = client.chat.completions.create(model="tgi", messages=messages, max_tokens=12, temperature=0)
    ids = apply_template(served.tokenizer, messages, TEMPLATE)
    ref = served.model.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False)[0, len(ids):].tolist()
    assert r.choices[0].message.content == served.tokenizer.decode(ref, skip_special_tokens=True)
    assert r.usage.prompt_tokens == len(ids) and r.usage.completion_tokens == len(ref)
    assert r.choices[0].finish_reason in ("length", "stop")
    chunks = list(client.chat.completions.create(model="tgi", messages=messages, max_tokens=12, temperature=0,
                                                 stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == r.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == r.choices[0].finish_reason
    assert [m.id for m in client.models.list()] == [served.model_id]


def test_openai_stream_ends_with_done(server):
    base, _ = server
    body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3, "stream": True}
    status, text = request(base + "/v1/chat/completions", body)
    events = [ln for ln in text.splitlines() if ln]
    assert status == 200 and events[-1] == "data: [DONE]"
    assert json.loads(events[0][len("data: ") :])["object"] == "chat.completion.chunk"


def test_openai_completions(served, server):
    base, _ = server
    client = openai.OpenAI(base_url=base + "/v1", api_key="unused")
    r = client.completions.create(model="tgi", prompt=PROMPT, max_tokens=6, temperature=0)
    ref = greedy_reference(served, PROMPT, 6)
    assert r.choices[0].text == served.tokenizer.decode(ref, skip_special_tokens=True)


def test_openai_validation_error_class(server):
    base, _ = server
    client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.UnprocessableEntityError, match="stop sequences"):
        client.chat.completions.create(model="tgi", messages=[{"role": "user", "content": "Hi"}], max_tokens=5,
                                       stop=list("abcde"))
    with pytest.raises(openai.UnprocessableEntityError, match="must have less than 64 tokens"):
        client.completions.create(model="tgi", prompt="Once upon a time " * 40, max_tokens=5)
    with pytest.raises(openai.UnprocessableEntityError):
        client.chat.completions.create(model="tgi", messages=[{"role": "user", "content": "Hi"}],
                                       extra_body={"frobnicate": 1})


@pytest.mark.parametrize("template", [None, "none"])
def test_chat_without_template_is_template_error(served, tmp_path, template):
    # stories260K has no chat_template; with one of its own, `--template none` still means none.
    import shutil

    shutil.copytree(STORIES, tmp_path / "m")
    if template == "none":
        (tmp_path / "m" / "chat_template.jinja").write_text("{{ messages[0]['content'] }}")
    bare = load_for_serving(str(tmp_path / "m"), template=template)
    bare.model = served.model  # share weights; only the template differs
    with live_server(bare, max_input_tokens=64, max_total_tokens=256) as (base, _):
        status, out = request(base + "/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}]})
        assert status == 422 and out["error"]["type"] == "template_error"
        assert "no chat_template" in out["error"]["message"]
        assert request(base + "/generate", {"inputs": "Hi", "parameters": {"max_new_tokens": 2}})[0] == 200


# --- concurrency, cancellation, auth ----------------------------------------------------------------------


def _open_stream(base: str, max_new_tokens: int) -> socket.socket:
    """A raw streaming request left open; returns once its first token has arrived."""
    host, port = base.removeprefix("http://").split(":")
    body = json.dumps({"inputs": PROMPT, "parameters": {"max_new_tokens": max_new_tokens}}).encode()
    s = socket.create_connection((host, int(port)))
    s.sendall(b"POST /generate_stream HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    s.settimeout(30)
    buf = b""
    while b"data:" not in buf:
        buf += s.recv(4096)
    return s


def _wait_for(pred, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def test_overload_429_and_disconnect_cancels(served, monkeypatch):
    # Without EOS the two long streams cannot end on their own before the clients leave; each step is slowed
    # to >= 5 ms so that 400 tokens take >= 2 s: on loaded CI cores the 260K model could otherwise finish a
    # sequence before its disconnect is seen, and count as finished, not cancelled (a flake seen twice).
    endless = dataclasses.replace(served, eos_token_ids=set())
    forward = served.model.forward

    def slow_forward(*args, **kwargs):
        time.sleep(0.005)
        return forward(*args, **kwargs)

    monkeypatch.setattr(served.model, "forward", slow_forward)
    with live_server(endless, max_input_tokens=64, max_total_tokens=512, max_concurrent_requests=2) as (base, state):
        streams = [_open_stream(base, 400) for _ in range(2)]
        _wait_for(lambda: metric(base, "tgi_batch_current_size") == 2)
        client = text_generation.Client(base)
        with pytest.raises(text_generation.errors.OverloadedError):
            client.generate(PROMPT, max_new_tokens=2)
        status, out = request(base + "/generate", {"inputs": PROMPT, "parameters": {"max_new_tokens": 2}})
        assert status == 429 and out == {"error": "Model is overloaded", "error_type": "overloaded"}
        for s in streams:
            s.close()  # the clients disconnect mid-generation
        _wait_for(lambda: state.scheduler.held() == 0)
        assert metric(base, "camelid_sequences_in_batch") == 0
        assert metric(base, "camelid_request_cancelled_total") == 2
        assert metric(base, "tgi_request_generated_tokens_total") < 2 * 400  # they did not run to the end
        assert client.generate(PROMPT, max_new_tokens=2).details.generated_tokens == 2  # slots were freed
        # A non-streaming client that hangs up is cancelled too, not run to its 400 tokens.
        host, port = base.removeprefix("http://").split(":")
        body = json.dumps({"inputs": PROMPT, "parameters": {"max_new_tokens": 400}}).encode()
        with socket.create_connection((host, int(port))) as s:
            s.sendall(b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            _wait_for(lambda: state.scheduler.held() == 1)
        _wait_for(lambda: state.scheduler.held() == 0)
        assert metric(base, "camelid_request_cancelled_total") == 3
        # Clients that hang up right after sending, before any byte comes back, leak no permit either.
        for route in ("/generate_stream", "/generate", "/v1/completions"):
            for _ in range(4):
                body = json.dumps({"inputs": PROMPT, "prompt": PROMPT, "parameters": {"max_new_tokens": 50}}
                                  if route != "/v1/completions" else {"prompt": PROMPT, "max_tokens": 50, "stream": True})
                with socket.create_connection((host, int(port))) as s:
                    s.sendall(f"POST {route} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                              f"Content-Length: {len(body)}\r\n\r\n{body}".encode())
        # A leaked permit never comes back, so "eventually all zero" is the check; asserting the gauge once
        # right after `state` reads zero raced with a hung-up request the server had not yet parsed.
        _wait_for(lambda: state.in_flight == 0 and state.scheduler.held() == 0
                  and metric(base, "camelid_requests_in_flight") == 0)
        assert client.generate(PROMPT, max_new_tokens=2).details.generated_tokens == 2


def test_concurrent_requests_share_the_batch_and_match_alone(served):
    prompts = [PROMPT, "The cat", "Lily and Tom went", "One day"]
    refs = {p: greedy_reference(served, p, 24) for p in prompts}
    with live_server(served, max_input_tokens=64, max_total_tokens=256) as (base, state):
        client = text_generation.Client(base)
        results, sizes = {}, []
        stop = threading.Event()

        def sample_batch_size():  # the scheduler's own gauge of its running batch
            while not stop.is_set():
                sizes.append(_gauge(state.metrics.render(), "tgi_batch_current_size"))
                time.sleep(0.002)

        def run(p):
            results[p] = [t.id for t in client.generate(p, max_new_tokens=24).details.tokens]

        sampler = threading.Thread(target=sample_batch_size)
        sampler.start()
        threads = [threading.Thread(target=run, args=(p,)) for p in prompts]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stop.set()
        sampler.join()
        assert results == refs
        assert max(sizes) >= 2  # they really were decoded together


def _gauge(text: bytes, name: str) -> float:
    line = next(ln for ln in text.decode().splitlines() if ln.startswith(name + " "))
    return float(line.split()[1])


def test_api_key(served):
    with live_server(served, api_key="s3cret", max_input_tokens=64, max_total_tokens=256) as (base, _):
        assert request(base + "/generate", {"inputs": PROMPT})[0] == 401
        assert request(base + "/health")[0] == 200  # open for load balancers
        assert request(base + "/metrics")[0] == 401 and request(base + "/info")[0] == 401
        assert request(base + "/metrics", headers={"Authorization": "Bearer s3cret"})[0] == 200
        ok = text_generation.Client(base, headers={"Authorization": "Bearer s3cret"})
        assert ok.generate(PROMPT, max_new_tokens=2).details.generated_tokens == 2
        oa = openai.OpenAI(base_url=base + "/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            oa.completions.create(model="m", prompt=PROMPT, max_tokens=2)


def test_seeded_sampling_is_reproducible_inside_a_busy_batch(served):
    params = dict(max_new_tokens=24, seed=1234, **CARD_PARAMS)
    with live_server(served, max_input_tokens=64, max_total_tokens=256) as (base, _):
        client = text_generation.Client(base)
        alone = [t.id for t in client.generate(PROMPT, **params).details.tokens]
        results = {}

        def run(key, prompt, kwargs):
            results[key] = [t.id for t in client.generate(prompt, **kwargs).details.tokens]

        jobs = [("seeded", PROMPT, params)] + [
            (f"other{i}", p, dict(max_new_tokens=24, do_sample=True, seed=i))
            for i, p in enumerate(["The cat", "Lily", "One day"])
        ]
        threads = [threading.Thread(target=run, args=job) for job in jobs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results["seeded"] == alone


def test_graceful_shutdown_finishes_in_flight_stream(served):
    # The server drains: a stream running when shutdown starts still gets every token and its details.
    with live_server(served, max_input_tokens=64, max_total_tokens=256) as (base, state):
        client = text_generation.Client(base)
        events = []

        def consume():
            events.extend(client.generate_stream(PROMPT, max_new_tokens=60))

        t = threading.Thread(target=consume)
        t.start()
        _wait_for(lambda: state.scheduler.held() == 1)  # leaving the block starts the shutdown mid-stream
    t.join(30)
    assert events and events[-1].details is not None
    assert events[-1].details.generated_tokens == len(events)
    assert not state.scheduler.alive()  # and the scheduler thread was stopped after the drain


def test_best_of_returns_the_likeliest_sample(server):
    base, _ = server
    r = InferenceClient(base).text_generation(PROMPT, max_new_tokens=8, best_of=2, do_sample=True, details=True)
    others = r.details.best_of_sequences
    assert len(others) == 1 and others[0].seed != r.details.seed
    assert sum(t.logprob for t in r.details.tokens) >= sum(t.logprob for t in others[0].tokens)
    for params, message in [
        ({"best_of": 3, "do_sample": True}, "`best_of` must be > 0 and <= 2. Given: 3"),
        ({"best_of": 2}, "you must use sampling when `best_of` is > 1"),
        ({"best_of": 2, "do_sample": True, "seed": 1}, "`seed` must not be set when `best_of` > 1"),
    ]:
        status, out = request(base + "/generate", {"inputs": PROMPT, "parameters": {"max_new_tokens": 4, **params}})
        assert status == 422 and message in out["error"], out
    status, out = request(base + "/generate_stream", {"inputs": PROMPT, "parameters": {"best_of": 2, "do_sample": True}})
    assert status == 422 and "`best_of` != 1 is not supported when streaming tokens" in out["error"]


def test_top_n_tokens_and_every_warper(served, server):
    base, _ = server
    body = {"inputs": PROMPT, "parameters": {"max_new_tokens": 6, "details": True, "top_n_tokens": 3}}
    status, out = request(base + "/generate", body)
    assert status == 200
    details = out["details"]
    assert [len(top) for top in details["top_tokens"]] == [3] * 6
    for token, top in zip(details["tokens"], details["top_tokens"], strict=True):
        assert top[0]["id"] == token["id"] and top[0]["logprob"] == pytest.approx(token["logprob"])  # greedy
    params = {"max_new_tokens": 6, "do_sample": True, "seed": 3, "temperature": 0.8, "top_k": 20, "top_p": 0.9,
              "typical_p": 0.9, "repetition_penalty": 1.2, "frequency_penalty": 0.5, "details": True}
    status, out = request(base + "/generate", {"inputs": PROMPT, "parameters": params})
    assert status == 200 and out["details"]["generated_tokens"] == 6 and out["details"]["seed"] == 3


def test_openai_chat_logprobs(server):
    base, _ = server
    client = openai.OpenAI(base_url=base + "/v1", api_key="unused")
    r = client.chat.completions.create(model="tgi", messages=[{"role": "user", "content": "Hi"}], max_tokens=5,
                                       temperature=0, logprobs=True, top_logprobs=2)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    assert all(len(c.top_logprobs) == 2 and c.top_logprobs[0].logprob == pytest.approx(c.logprob) for c in content)


def test_openai_stop_is_cut_the_same_in_stream_and_not(server):
    base, _ = server
    client = openai.OpenAI(base_url=base + "/v1", api_key="unused")
    kwargs = dict(model="tgi", messages=[{"role": "user", "content": "Tell a story."}], max_tokens=20, temperature=0)
    full = client.chat.completions.create(**kwargs).choices[0].message.content
    stop = " " + full.split()[3]
    r = client.chat.completions.create(stop=[stop], **kwargs)
    assert r.choices[0].message.content == full[: full.index(stop)] and r.choices[0].finish_reason == "stop"
    chunks = list(client.chat.completions.create(stop=[stop], stream=True, **kwargs))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == r.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == "stop"
