"""The continuous-batching scheduler without HTTP: rows joining and leaving mid-batch stay exact."""

from __future__ import annotations

import pytest
import torch

from camelid.serve.engine import load_for_serving
from camelid.serve.metrics import Metrics
from camelid.serve.scheduler import Failed, Scheduler, Sequence, Token
from camelid.serve.validation import GenerationRequest, SamplingParams
from tests.serve_helpers import STORIES


@pytest.fixture(scope="module")
def served():
    torch.set_num_threads(1)
    s = load_for_serving(str(STORIES))
    s.eos_token_ids = set()  # run every sequence to its own length
    return s


def _collect(events: dict, key):
    def sink(event):
        events.setdefault(key, []).append(event)

    return sink


@pytest.mark.parametrize("every", [3, 0], ids=["staggered", "together"])
def test_rows_joining_and_leaving_match_generate_alone(served, every):
    """Prompts of different lengths arrive one every three steps, or all at once (one left-padded prefill)."""
    prompts = ["Once upon a time", "The dog ran to the big red", "Lily", "One day, a little girl named Sue went"]
    lengths = [5, 30, 12, 20]
    sched = Scheduler(served, max_batch_prefill_tokens=4096, metrics=Metrics())
    events: dict = {}
    pending = [
        Sequence(GenerationRequest(served.tokenizer(p)["input_ids"], SamplingParams(), n), _collect(events, i))
        for i, (p, n) in enumerate(zip(prompts, lengths, strict=True))
    ]
    step = 0
    while pending or sched.held():
        while pending and (every == 0 or step % every == 0):
            sched._waiting.append(pending.pop(0))
            if every:
                break
        sched._step()
        step += 1
    for i, (p, n) in enumerate(zip(prompts, lengths, strict=True)):
        ids = served.tokenizer(p)["input_ids"]
        ref = served.model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False, eos_token_id=None)
        got = [e.id for e in events[i] if isinstance(e, Token)]
        assert got == ref[0, len(ids) :].tolist(), p
        assert events[i][-1].done.finish_reason == "length"
    assert sched._batch is None and sched.held() == 0


def test_prefill_budget_limits_admission_per_step(served):
    sched = Scheduler(served, max_batch_prefill_tokens=12, metrics=Metrics())
    ids = list(range(1, 6))  # 5 tokens each: two fit in a budget of 12, the third waits
    for _ in range(3):
        sched._waiting.append(Sequence(GenerationRequest(ids, SamplingParams(), 4), lambda e: None))
    assert len(sched._admit()) == 2
    assert len(sched._admit()) == 1


def test_cancelled_sequence_leaves_before_next_step(served):
    sched = Scheduler(served, max_batch_prefill_tokens=4096, metrics=Metrics())
    events: dict = {}
    a = Sequence(GenerationRequest([1, 400, 401], SamplingParams(), 50), _collect(events, "a"))
    b = Sequence(GenerationRequest([1, 300], SamplingParams(), 50), _collect(events, "b"))
    sched._waiting.extend([a, b])
    sched._step()
    assert sched._batch.size == 2
    a.cancel()
    before = len(events["a"])
    sched._step()
    assert sched._batch.size == 1 and sched._running == [b]
    assert len(events["a"]) == before  # no token was computed for the cancelled row


def test_model_failure_fails_the_batch_and_the_scheduler_survives(served):
    sched = Scheduler(served, max_batch_prefill_tokens=4096, metrics=Metrics())
    events: dict = {}
    sched._waiting.append(Sequence(GenerationRequest([1, 2**20], SamplingParams(), 5), _collect(events, "bad")))
    sched._step()  # token id beyond the vocabulary: the embedding lookup raises
    assert isinstance(events["bad"][-1], Failed) and "generation" in events["bad"][-1].error_type
    sched._waiting.append(Sequence(GenerationRequest([1, 400], SamplingParams(), 3), _collect(events, "ok")))
    while sched.held():
        sched._step()
    assert events["ok"][-1].done.generated_tokens == 3
