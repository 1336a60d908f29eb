"""The continuous-batching scheduler without HTTP, through `submit` and sinks: rows joining and leaving
mid-batch stay exact."""

from __future__ import annotations

import dataclasses
import threading
import time

import pytest
import torch

from camelid.runtime.sampling import SamplingParams
from camelid.serve.engine import load_for_serving
from camelid.serve.metrics import Metrics
from camelid.serve.scheduler import Failed, Scheduler, Sequence, Token
from camelid.serve.validation import GenerationRequest
from tests.serve_helpers import STORIES

GREEDY = SamplingParams(temperature=0)


@pytest.fixture(scope="module")
def served():
    torch.set_num_threads(1)
    s = load_for_serving(str(STORIES))
    s.eos_token_ids = frozenset()  # run every sequence to its own length
    return s


class Sink:
    """A sequence's events, in arrival order; `ended` is set at its last token or failure."""

    def __init__(self, log: list | None = None, on_token=None) -> None:
        self.events: list = []
        self.ended = threading.Event()
        self.log, self.on_token = log, on_token

    def __call__(self, event) -> None:
        self.events.append(event)
        if self.log is not None:
            self.log.append((self, event))
        if isinstance(event, Token) and self.on_token is not None:
            self.on_token(self)
        if isinstance(event, Failed) or isinstance(event, Token) and event.done is not None:
            self.ended.set()

    @property
    def tokens(self) -> list[int]:
        return [e.id for e in self.events if isinstance(e, Token)]


def _request(ids: list[int], n: int) -> GenerationRequest:
    return GenerationRequest(list(ids), GREEDY, n)


def _run(sched: Scheduler, sinks: list[Sink]) -> bool:
    """Start `sched`, wait for `sinks` to end, stop it; whether it had dropped every sequence by then."""
    sched.start()
    try:
        for sink in sinks:
            assert sink.ended.wait(60), "sequence did not finish"
        deadline = time.monotonic() + 10
        while sched.held() and time.monotonic() < deadline:
            time.sleep(0.005)
        return sched.held() == 0
    finally:
        sched.stop()


@pytest.mark.parametrize("staggered", [True, False], ids=["staggered", "together"])
def test_rows_joining_and_leaving_match_generate_alone(served, staggered):
    """Prompts of different lengths join the running batch one after another (each when the previous one has
    produced three tokens) or all at once (one left-padded prefill); each leaves at its own length."""
    prompts = ["Once upon a time", "The dog ran to the big red", "Lily", "One day, a little girl named Sue went"]
    lengths = [5, 30, 12, 20]
    sched = Scheduler(served, max_batch_prefill_tokens=4096, metrics=Metrics())
    seqs: list[Sequence] = []

    def submit_next(sink: Sink) -> None:
        if len(sink.tokens) == 3 and len(seqs) > sinks.index(sink) + 1:
            sched.submit(seqs[sinks.index(sink) + 1])

    sinks = [Sink(on_token=submit_next if staggered else None) for _ in prompts]
    for p, n, sink in zip(prompts, lengths, sinks, strict=True):
        seqs.append(Sequence(_request(served.tokenizer(p)["input_ids"], n), sink))
    for seq in seqs[:1] if staggered else seqs:
        sched.submit(seq)  # before start: all of them are admitted by the first step
    assert _run(sched, sinks)
    for p, n, sink in zip(prompts, lengths, sinks, strict=True):
        ids = served.tokenizer(p)["input_ids"]
        ref = served.model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False, eos_token_id=None)
        assert sink.tokens == ref[0, len(ids) :].tolist(), p
        assert sink.events[-1].done.finish_reason == "length"


def test_prefill_budget_limits_admission_per_step(served):
    # 5 tokens each: two fit in a budget of 12 and are prefilled together; the third waits for the next step,
    # by which time the first two have had their prefill token and one decode token.
    log: list = []
    sched = Scheduler(served, max_batch_prefill_tokens=12, metrics=Metrics())
    sinks = [Sink(log) for _ in range(3)]
    for sink in sinks:
        sched.submit(Sequence(_request(range(1, 6), 4), sink))
    _run(sched, sinks)
    first_of_third = next(i for i, (sink, _) in enumerate(log) if sink is sinks[2])
    assert [sum(s is sink for s, _ in log[:first_of_third]) for sink in sinks] == [2, 2, 0]
    assert all(len(sink.tokens) == 4 for sink in sinks)


def test_cancelled_sequence_leaves_before_next_step(served):
    sched = Scheduler(served, max_batch_prefill_tokens=4096, metrics=Metrics())
    seqs: list[Sequence] = []

    def cancel_at_two(sink: Sink) -> None:
        if len(sink.tokens) == 2:
            seqs[0].cancel()  # as the HTTP layer does when the client goes away

    a, b = Sink(on_token=cancel_at_two), Sink()
    seqs += [Sequence(_request([1, 400, 401], 50), a), Sequence(_request([1, 300], 50), b)]
    for seq in seqs:
        sched.submit(seq)
    assert _run(sched, [b])  # the cancelled row was dropped too
    assert len(a.tokens) == 2 and not a.ended.is_set()  # no token was computed for it after the cancel
    assert len(b.tokens) == 50


def test_model_failure_fails_the_batch_and_the_scheduler_survives(served):
    sched = Scheduler(served, max_batch_prefill_tokens=4096, metrics=Metrics())
    bad, ok = Sink(), Sink()
    sched.start()
    try:
        sched.submit(Sequence(_request([1, 2**20], 5), bad))  # token id beyond the vocabulary: the lookup raises
        assert bad.ended.wait(60)
        assert isinstance(bad.events[-1], Failed) and "generation" in bad.events[-1].error_type
        sched.submit(Sequence(_request([1, 400], 3), ok))
        assert ok.ended.wait(60)
        assert ok.events[-1].done.generated_tokens == 3 and sched.alive()
    finally:
        sched.stop()


def test_stop_strings_and_eos_end_a_sequence(served):
    """The scheduler's stop decision is `camelid.runtime.stops`: a stop string ends the sequence with its text
    kept (TGI's behaviour), an EOS id ends it with the EOS token sent."""
    ids = served.tokenizer("Once upon a time")["input_ids"]
    alone = Sink()
    sched = Scheduler(served, max_batch_prefill_tokens=4096, metrics=Metrics())
    sched.submit(Sequence(_request(ids, 30), alone))
    _run(sched, [alone])
    text = alone.events[-1].done.generated_text
    stop = " " + text.split()[4]
    by_stop, by_eos = Sink(), Sink()
    eos_served = dataclasses.replace(served, eos_token_ids=frozenset({alone.tokens[7]}))
    sched = Scheduler(served, max_batch_prefill_tokens=4096, metrics=Metrics())
    sched.submit(Sequence(GenerationRequest(list(ids), GREEDY, 30, stop=[stop, "zzz"]), by_stop))
    _run(sched, [by_stop])
    sched = Scheduler(eos_served, max_batch_prefill_tokens=4096, metrics=Metrics())
    sched.submit(Sequence(_request(ids, 30), by_eos))
    _run(sched, [by_eos])
    done = by_stop.events[-1].done
    assert done.finish_reason == "stop_sequence" and done.generated_text == text[: text.index(stop) + len(stop)]
    first_eos = alone.tokens.index(alone.tokens[7])
    assert by_eos.tokens == alone.tokens[: first_eos + 1] and by_eos.events[-1].done.finish_reason == "eos_token"
