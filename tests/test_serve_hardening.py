"""One request cannot harm another: a sequence whose sampling fails ends alone; responses carry only finite
numbers (TGI's null for -inf); NaN/Infinity and fp32-degenerate parameters are refused; the API key guards
every route but /health; a half-sent request is timed out."""

from __future__ import annotations

import json
import socket
import time

import pytest
import torch

from camelid.serve.engine import load_for_serving
from camelid.serve.metrics import Metrics
from camelid.serve.scheduler import Failed, Scheduler, Sequence, Token
from camelid.serve.validation import GenerationRequest, SamplingParams
from tests.serve_helpers import STORIES, TEMPLATE, live_server, request


@pytest.fixture(scope="module")
def served():
    torch.set_num_threads(1)
    return load_for_serving(str(STORIES), template=TEMPLATE)


def test_failing_sequence_ends_alone(served):
    """A sampling setting that breaks the step (1e-300 is 0 in fp32: logits / 0) fails only its own request."""
    sched = Scheduler(served, max_batch_prefill_tokens=4096, metrics=Metrics())
    events: dict = {}
    ids = served.tokenizer("Once upon a time")["input_ids"]
    good = Sequence(GenerationRequest(ids, SamplingParams(temperature=0), 8), lambda e: events.setdefault("good", []).append(e))
    # Validation refuses 1e-300 now; set past it, it stands for any step that fails for one row only
    bad_params = SamplingParams(temperature=0.5, seed=1)
    object.__setattr__(bad_params, "temperature", 1e-300)
    bad = Sequence(GenerationRequest(ids, bad_params, 8), lambda e: events.setdefault("bad", []).append(e))
    sched._waiting.extend([good, bad])
    sched._step()  # both prefilled together; the bad row fails while choosing its first token
    late = Sequence(GenerationRequest(ids, bad_params, 8), lambda e: events.setdefault("late", []).append(e))
    sched._waiting.append(late)  # fails in a decode step while `good` is in the batch
    while sched.held():
        sched._step()
    assert [type(e) for e in events["bad"]] == [Failed] and [type(e) for e in events["late"]] == [Failed]
    assert "not finite" in events["bad"][0].message
    tokens = [e for e in events["good"] if isinstance(e, Token)]
    assert len(tokens) == 8 and tokens[-1].done.finish_reason in ("length", "eos_token")
    ref = served.model.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False, eos_token_id=None)
    assert [t.id for t in tokens] == ref[0, len(ids):len(ids) + len(tokens)].tolist()


def _strict(text: str):
    def refuse(name):
        raise AssertionError(f"non-JSON number {name}")
    return json.loads(text, parse_constant=refuse)


def test_responses_carry_only_finite_numbers(served):
    body = {"inputs": "Once upon a time", "parameters": {"max_new_tokens": 6, "top_k": 3, "top_p": 0.5,
                                                         "top_n_tokens": 5, "details": True, "seed": 3}}
    chat = {"messages": [{"role": "user", "content": "Hi"}], "logprobs": True, "top_logprobs": 5, "top_p": 0.3,
            "max_tokens": 6, "seed": 1}
    import urllib.request

    with live_server(served) as (base, _):
        status, out = request(base + "/generate", body)
        assert status == 200, out
        tops = [t["logprob"] for step in out["details"]["top_tokens"] for t in step]
        assert None in tops  # top_k=3 masks tokens 4 and 5: -inf, written null as TGI's serde_json does
        assert all(lp is None or lp <= 0 for lp in tops)
        assert request(base + "/v1/chat/completions", chat)[0] == 200
        for route, payload in (("/generate_stream", body), ("/v1/chat/completions", {**chat, "stream": True})):
            req = urllib.request.Request(base + route, json.dumps(payload).encode(),
                                         {"content-type": "application/json"})
            with urllib.request.urlopen(req, timeout=60) as r:
                lines = [ln.decode().split(":", 1)[1] for ln in r if ln.startswith(b"data:")]
            assert all(_strict(ln) for ln in lines if ln.strip() != "[DONE]")


@pytest.mark.parametrize("route,params,culprit", [
    ("/generate", {"temperature": 1e-300}, "temperature"),
    ("/generate", {"repetition_penalty": 1e-300}, "repetition_penalty"),
    ("/generate", {"temperature": 1e300}, "temperature"),
    ("/v1/completions", {"frequency_penalty": 1e-300, "temperature": 1e-300}, "temperature"),
])
def test_degenerate_floats_refused(served, route, params, culprit):
    with live_server(served) as (base, _):
        body = {"inputs": "Hi", "parameters": params} if route == "/generate" else {"prompt": "Hi", **params}
        status, out = request(base + route, body)
        assert status == 422 and culprit in json.dumps(out)
        for raw in (b'{"inputs": "Hi", "parameters": {"temperature": NaN}}',
                    b'{"inputs": "Hi", "parameters": {"repetition_penalty": Infinity}}'):
            assert request(base + "/generate", raw)[0] == 422


def test_api_key_on_every_route_but_health(served):
    with live_server(served, api_key="k") as (base, _):
        for path in ("/openapi.json", "/docs", "/redoc", "/info", "/metrics", "/v1/models"):
            assert request(base + path, method="GET")[0] == 401, path
        assert request(base + "/openapi.json", headers={"authorization": "Bearer k"}, method="GET")[0] == 200
        assert request(base + "/health", method="GET")[0] == 200


def test_half_sent_request_is_timed_out(served):
    """Slowloris: a client that sends part of the headers (or of the body) and then nothing is disconnected."""
    with live_server(served, read_timeout=2.0) as (base, state):
        host, port = base.removeprefix("http://").split(":")
        for partial in (b"POST /generate HTTP/1.1\r\nHost: x\r\n",
                        b"POST /generate HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
                        b"content-length: 100\r\n\r\n{\"inputs\":"):
            s = socket.create_connection((host, int(port)))
            s.sendall(partial)
            s.settimeout(state.read_timeout + 10)
            t0 = time.monotonic()
            data = s.recv(65536)  # the server answers (408) or closes; it does not wait forever
            while data and b"\r\n\r\n" not in data:
                data += s.recv(65536)
            waited = time.monotonic() - t0
            s.close()
            assert waited < state.read_timeout + 5
            assert data.startswith(b"HTTP/1.1 408"), data[:80]


def test_sentencepiece_stream_eos_event_does_not_repeat_text(served):
    """Slow SentencePiece decodes "g" + "</s>" as " g</s>": the EOS event's text is "</s>", not "g</s>"."""
    from camelid.runtime.detokenize import TextStream

    tok = served.tokenizer
    assert not tok.is_fast  # stories260K: the slow SentencePiece tokenizer
    prompt = tok("Once upon a time")["input_ids"]
    generated = tok(" there was a dog", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    stream = TextStream(tok, prompt)
    pieces = [stream.push(i) for i in generated]
    assert pieces[-1] == tok.eos_token
    assert "".join(pieces[:-1]) == " there was a dog"


def test_tokenize_offsets_for_byte_fallback_characters(served):
    """日 is three byte tokens in stories260K's vocabulary: each gets the character's span (as fast tokenizers
    give), and the spans after it are not shifted."""
    from camelid.serve.app import _tokenize

    text = "héllo 日本 🦙!"
    out = _tokenize(served.tokenizer, text, False)
    assert all(text[t["start"]:t["stop"]] == t["text"] for t in out)
    by_char = {}
    for t in out:
        by_char.setdefault((t["start"], t["stop"]), []).append(t["id"])
    assert [len(by_char[(i, i + 1)]) for i in (6, 7, 9)] == [3, 3, 4]  # 3-byte CJK, 4-byte emoji
    assert out[-1]["text"] == "!" and out[-1]["stop"] == len(text)


def test_client_hanging_up_mid_body_leaves_no_traceback(served):
    import logging

    seen: list[logging.LogRecord] = []

    class Catch(logging.Handler):
        def emit(self, record):
            seen.append(record)

    catcher = Catch(logging.WARNING)
    loggers = [logging.getLogger(n) for n in ("", "uvicorn", "uvicorn.error", "camelid.serve")]
    with live_server(served) as (base, state):
        for lg in loggers:  # after uvicorn's start: its logging config resets the handlers of its loggers
            lg.addHandler(catcher)
        try:
            host, port = base.removeprefix("http://").split(":")
            for _ in range(3):
                s = socket.create_connection((host, int(port)))
                s.sendall(b"POST /generate HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
                          b"content-length: 1000\r\n\r\n{\"inputs\": \"Once")
                time.sleep(0.2)  # the app is reading the body when the client goes
                s.close()
            time.sleep(0.5)
            assert request(base + "/health", method="GET")[0] == 200
        finally:
            for lg in loggers:
                lg.removeHandler(catcher)
    assert not [r for r in seen if r.exc_info or "Traceback" in r.getMessage()], [r.getMessage() for r in seen]
