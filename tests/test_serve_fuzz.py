"""Property-based fuzzing of the HTTP routes with hypothesis: whatever the body, the answer is not a 5xx, the log
holds no traceback, streams are strict JSON, /health stays 200, and well-formed requests running alongside all
succeed. Bounded: a fixed number of examples on stories260K with short generations (about 30 s on 2 cores)."""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.request

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from camelid.serve.engine import load_for_serving
from tests.serve_helpers import STORIES, TEMPLATE, live_server, request

pytestmark = pytest.mark.slow

ROUTES = {
    "/generate": ("inputs", ["best_of", "temperature", "repetition_penalty", "frequency_penalty", "top_k", "top_p",
                             "typical_p", "do_sample", "max_new_tokens", "return_full_text", "stop", "truncate",
                             "details", "decoder_input_details", "seed", "top_n_tokens", "watermark"]),
    "/generate_stream": ("inputs", ["temperature", "repetition_penalty", "top_k", "top_p", "typical_p", "do_sample",
                                    "max_new_tokens", "stop", "details", "seed", "top_n_tokens"]),
    "/v1/completions": ("prompt", ["max_tokens", "temperature", "top_p", "frequency_penalty", "presence_penalty",
                                   "stop", "seed", "n", "stream", "echo"]),
    "/v1/chat/completions": ("messages", ["max_tokens", "max_completion_tokens", "temperature", "top_p",
                                          "frequency_penalty", "stop", "seed", "n", "stream", "logprobs",
                                          "top_logprobs", "stream_options"]),
}

# Any JSON value, biased towards the edges that broke sampling or encoding: 0, negatives, tiny and huge
# floats, NaN and +-Infinity (json.dumps writes them as bare tokens), wrong types.
edge_floats = st.sampled_from([0.0, -0.0, 1e-300, 1e-45, 1e-30, 1e300, -1.0, 0.5, 1.0, 2.0,
                               float("nan"), float("inf"), float("-inf")])
scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**65), 2**65), st.integers(-3, 40), edge_floats,
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                      max_leaves=6)
messages = st.one_of(values, st.lists(st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "assistant", "system", "tool"]), "content": st.one_of(st.text(max_size=30),
                                                                                          values)}), max_size=3))


@st.composite
def bodies(draw):
    route = draw(st.sampled_from(sorted(ROUTES)))
    text_field, fields = ROUTES[route]
    if draw(st.integers(0, 19)) == 0:  # now and then, bytes that are not JSON at all
        return route, draw(st.binary(max_size=40))
    params = draw(st.dictionaries(st.sampled_from(fields), values, max_size=4))
    if "max_new_tokens" not in params and "max_tokens" not in params:
        params["max_new_tokens" if route.startswith("/gen") else "max_tokens"] = draw(st.integers(1, 4))
    text = draw(messages if text_field == "messages" else st.one_of(st.text(max_size=40), values))
    if route.startswith("/gen"):
        body = {text_field: text, "parameters": params}
    else:
        body = {text_field: text, **params}
    return route, json.dumps(body).encode()


class Tracebacks(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info or "Traceback" in record.getMessage():
            self.records.append(self.format(record))


def _post(base: str, route: str, body: bytes) -> tuple[int, bytes]:
    req = urllib.request.Request(base + route, body, {"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _strict(raw: bytes) -> None:
    """Every JSON document in the answer (one, or one per SSE event) is standard JSON: no NaN/Infinity."""
    def refuse(token):
        raise AssertionError(f"non-standard JSON number {token}")

    text = raw.decode()
    docs = [ln.split(":", 1)[1] for ln in text.splitlines() if ln.startswith("data:")] or [text]
    for doc in docs:
        if doc.strip() and doc.strip() != "[DONE]":
            json.loads(doc, parse_constant=refuse)


@pytest.fixture(scope="module")
def server():
    torch.set_num_threads(1)
    served = load_for_serving(str(STORIES), template=TEMPLATE)
    catcher = Tracebacks()
    loggers = [logging.getLogger(n) for n in ("", "uvicorn", "uvicorn.error", "camelid.serve")]
    with live_server(served, max_input_tokens=48, max_total_tokens=64) as (base, state):
        for lg in loggers:  # after uvicorn's start: its logging config resets the handlers of its loggers
            lg.addHandler(catcher)
        yield base, catcher
        for lg in loggers:
            lg.removeHandler(catcher)


WELL_FORMED = [
    ("/generate", {"inputs": "Once upon a time", "parameters": {"max_new_tokens": 4, "details": True,
                                                                  "top_n_tokens": 2}}),
    ("/generate_stream", {"inputs": "Lily", "parameters": {"max_new_tokens": 4, "do_sample": True, "top_k": 5}}),
    ("/v1/completions", {"prompt": "The dog", "max_tokens": 4, "temperature": 0.7, "seed": 1}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, "logprobs": True,
                              "top_logprobs": 2, "top_p": 0.9}),
]


def test_fuzzed_requests_never_break_the_server(server):
    base, catcher = server
    stop, well_formed = threading.Event(), []

    def steady(route: str, body: dict) -> None:
        while not stop.is_set():
            well_formed.append((route, *_post(base, route, json.dumps(body).encode())))

    threads = [threading.Thread(target=steady, args=rb, daemon=True) for rb in WELL_FORMED]
    for t in threads:
        t.start()
    t0 = time.monotonic()

    @settings(max_examples=150, deadline=None, database=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(bodies())
    def fuzz(case):
        route, body = case
        status, raw = _post(base, route, body)
        assert status < 500, (route, body, status, raw[:300])
        _strict(raw)

    try:
        fuzz()
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    elapsed = time.monotonic() - t0
    assert request(base + "/health", method="GET")[0] == 200
    bad = [(r, s, raw[:200]) for r, s, raw in well_formed if s != 200]
    assert well_formed and not bad, bad
    for _, _, raw in well_formed:
        _strict(raw)
    assert not catcher.records, catcher.records[0]
    print(f"fuzz: 150 bodies and {len(well_formed)} well-formed requests in {elapsed:.1f} s")
