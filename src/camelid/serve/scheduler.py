"""Continuous batching: one thread runs decode steps over the running batch; sequences join and leave
between steps.

Each step: drop cancelled sequences, prefill waiting ones (alone, within --max-batch-prefill-tokens) and
join them to the batch, then one batched decode step for every row. Events for a sequence go to its
`sink` (a thread-safe callable); the HTTP layer turns them into JSON or SSE. Tokens are chosen and
sequences ended by camelid.runtime's `Sampler` and `StopMatcher`, the same as for `camelid generate`.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from camelid.runtime import batch as B
from camelid.runtime.detokenize import TextStream, decode_generated
from camelid.runtime.sampling import Sampler
from camelid.runtime.stops import StopMatcher, Stops
from camelid.serve.engine import ServedModel
from camelid.serve.metrics import Metrics
from camelid.serve.validation import GenerationRequest

log = logging.getLogger("camelid.serve")


def finite(x: float | None) -> float | None:
    """JSON has no -inf/NaN: TGI's router (serde_json) writes them as null, and so do we (serde-rs/json#155)."""
    return x if x is not None and math.isfinite(x) else None


# --- events a sequence's sink receives -------------------------------------------------------------------


@dataclass
class Done:
    finish_reason: str  # "length" | "eos_token" | "stop_sequence"
    generated_text: str
    generated_tokens: int
    seed: int | None
    input_length: int


@dataclass
class Token:
    id: int
    text: str
    logprob: float | None  # None where it is not finite (-inf after top-k/top-p), as TGI's JSON has null
    special: bool
    top: list[tuple[int, str, float | None]]  # (id, text, logprob) of the top_n_tokens alternatives
    done: Done | None = None  # set on a sequence's last token, so a stream can end without waiting


@dataclass
class Prefill:
    tokens: list[tuple[int, str, float | None]]  # (id, text, logprob) of each prompt token


@dataclass
class Failed:
    message: str
    error_type: str = "generation"


Event = Token | Prefill | Failed


@dataclass
class Sequence:
    request: GenerationRequest
    sink: Callable[[Event], None]
    cancelled: bool = False  # set by the HTTP layer (client gone); the scheduler drops it before the next step
    generated: list[int] = field(default_factory=list)
    sampler: Sampler | None = None
    text: TextStream | None = None
    stops: StopMatcher | None = None
    finished: bool = False

    def cancel(self) -> None:
        self.cancelled = True


class Scheduler:
    def __init__(self, served: ServedModel, max_batch_prefill_tokens: int, metrics: Metrics) -> None:
        self.served = served
        self.max_batch_prefill_tokens = max_batch_prefill_tokens
        self.metrics = metrics
        self._waiting: deque[Sequence] = deque()
        self._running: list[Sequence] = []
        self._batch: B.Batch | None = None
        self._wake = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="camelid-scheduler", daemon=True)
        self._special = set(getattr(served.tokenizer, "all_special_ids", []))
        self.error: str | None = None  # set if the loop itself died: /health then reports 503

    # --- called from the HTTP side ---

    def start(self) -> None:
        self._thread.start()

    def submit(self, seq: Sequence) -> None:
        with self._wake:
            if self._stopping:
                seq.sink(Failed("server is shutting down"))
                return
            self._waiting.append(seq)
            self._update_gauges()
            self._wake.notify()

    def alive(self) -> bool:
        return self._thread.is_alive() and self.error is None

    def held(self) -> int:
        """Sequences queued or in the running batch."""
        return len(self._waiting) + len(self._running)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop stepping and fail whatever is still held (graceful shutdown comes after uvicorn drains)."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)
        for seq in list(self._waiting) + self._running:
            if not seq.finished:
                seq.sink(Failed("server is shutting down"))
        self._waiting.clear()
        self._running = []
        self._batch = None
        self._update_gauges()

    # --- the loop ---

    def _loop(self) -> None:
        try:
            while True:
                with self._wake:
                    while not self._stopping and not self._waiting and not self._running:
                        self._wake.wait(timeout=1.0)
                    if self._stopping:
                        return
                self._step()
        except BaseException as e:  # a bug here must show on /health, not hang every client
            self.error = f"{type(e).__name__}: {e}"
            log.error("scheduler died:\n%s", traceback.format_exc())

    def _step(self) -> None:
        self._drop(lambda s: s.cancelled, cancelled=True)
        admitted = self._admit()
        # New prompts share one left-padded forward; a request for prompt logprobs runs alone, unpadded.
        groups = [[s] for s in admitted if s.request.decoder_input_details]
        groups.append([s for s in admitted if not s.request.decoder_input_details])
        for group in filter(None, groups):
            self._guarded(group, lambda group=group: self._prefill(group))
        self._drop(lambda s: s.finished or s.cancelled, cancelled=False)
        if self._batch is not None:
            self._guarded(list(self._running), self._decode)
            self._drop(lambda s: s.finished, cancelled=False)
        self._update_gauges()

    def _admit(self) -> list[Sequence]:
        admitted, budget = [], self.max_batch_prefill_tokens
        with self._wake:
            while self._waiting:
                seq = self._waiting[0]
                if seq.cancelled:
                    self._waiting.popleft()
                    self.metrics.cancelled.inc()
                    continue
                n = len(seq.request.input_ids)
                if admitted and n > budget:
                    break
                budget -= n
                admitted.append(self._waiting.popleft())
        return admitted

    def _guarded(self, seqs: list[Sequence], fn: Callable[[], None]) -> None:
        """Run a model call; on failure fail these sequences (HTTP 424) and keep serving the others."""
        try:
            fn()
        except Exception as e:
            log.error("generation failed:\n%s", traceback.format_exc())
            for seq in seqs:
                if not seq.finished:
                    seq.finished = True
                    seq.sink(Failed(f"Request failed during generation: {type(e).__name__}: {e}"))
            if any(s in self._running for s in seqs):
                self._batch, self._running = None, []  # the batch state may be half-updated: drop it

    def _prefill(self, seqs: list[Sequence]) -> None:
        t0 = time.perf_counter()
        for seq in seqs:
            seq.sampler = Sampler(seq.request.sampling, device=self.served.device)
            seq.text = TextStream(self.served.tokenizer, seq.request.input_ids)
            seq.stops = StopMatcher(Stops.of(self.served.eos_token_ids, seq.request.stop))
        details = seqs[0].request.decoder_input_details  # then it is alone (see _step)
        batch, logits = B.prefill(self.served.model, [s.request.input_ids for s in seqs], all_logits=details)
        self.metrics.step.labels("prefill").observe(time.perf_counter() - t0)
        if details:
            ids = seqs[0].request.input_ids
            lps = prefill_logprobs(torch.tensor([ids], device=logits.device), logits)
            tok = self.served.tokenizer
            seqs[0].sink(Prefill([(i, tok.decode([i]), finite(lp)) for i, lp in zip(ids, lps, strict=True)]))
        for row, seq in enumerate(seqs):
            self._accept_own(seq, logits[row : row + 1, -1, :])
        batch.next_tokens = torch.tensor([_last(s) for s in seqs], device=batch.next_tokens.device)
        alive = [row for row, seq in enumerate(seqs) if not seq.finished]
        batch = B.keep(batch, alive)
        if batch is not None:
            self._batch = B.join(self._batch, batch)
            self._running += [seqs[row] for row in alive]

    def _decode(self) -> None:
        t0 = time.perf_counter()
        logits = B.decode_step(self.served.model, self._batch)
        self.metrics.step.labels("decode").observe(time.perf_counter() - t0)
        for i, seq in enumerate(self._running):
            self._accept_own(seq, logits[i : i + 1])
        self._batch.next_tokens = torch.tensor(
            [_last(s) for s in self._running], device=self._batch.next_tokens.device
        )

    def _accept_own(self, seq: Sequence, logits: torch.Tensor) -> None:
        """`_accept`, where a failure (NaN logits, a degenerate sampling setting) finishes only this sequence
        with its own error: the batch's other rows go on (they are dropped from it after the step)."""
        try:
            self._accept(seq, logits)
        except Exception as e:
            log.warning("request failed while sampling: %s: %s", type(e).__name__, e)
            seq.finished = True
            seq.sink(Failed(f"Request failed during generation: {type(e).__name__}: {e}"))

    def _accept(self, seq: Sequence, logits: torch.Tensor) -> None:
        """Choose the next token of `seq`, send it, and decide whether the sequence is done."""
        req = seq.request
        history = None
        if req.sampling.needs_history:
            history = torch.tensor([req.input_ids + seq.generated], device=logits.device)
        choice = seq.sampler.choose(logits, history, req.top_n_tokens)
        seq.generated.append(choice.token_id)
        self.metrics.generated.inc()
        text = seq.text.push(choice.token_id)
        tok = self.served.tokenizer
        top = [(i, tok.decode([i]), finite(lp)) for i, lp in choice.top]
        event = Token(choice.token_id, text, finite(choice.logprob), choice.token_id in self._special, top)
        # TGI streams every token's own text, the stop string included: only the decision is taken here.
        seq.stops.decide(choice.token_id, text)
        reason = seq.stops.reason
        if reason is None and len(seq.generated) >= req.max_new_tokens:
            reason = "length"
        if reason is not None:
            seq.finished = True
            generated_text = decode_generated(tok, req.input_ids, seq.generated)
            seed = None if req.sampling.greedy else req.sampling.seed
            event.done = Done(reason, generated_text, len(seq.generated), seed, len(req.input_ids))
        seq.sink(event)

    def _drop(self, gone: Callable[[Sequence], bool], cancelled: bool) -> None:
        keep = [i for i, s in enumerate(self._running) if not gone(s)]
        if len(keep) == len(self._running):
            return
        if cancelled:
            self.metrics.cancelled.inc(len(self._running) - len(keep))
        self._running = [self._running[i] for i in keep]
        self._batch = B.keep(self._batch, keep) if self._batch is not None else None

    def _update_gauges(self) -> None:
        self.metrics.batch_size.set(len(self._running))
        self.metrics.queue_size.set(len(self._waiting))
        self.metrics.in_batch.set(self.held())


def prefill_logprobs(input_ids: torch.Tensor, logits: torch.Tensor) -> list[float | None]:
    """Log-probability of each prompt token given the ones before it (the first has none)."""
    logprobs = torch.log_softmax(logits[0, :-1].float(), dim=-1)
    picked = logprobs.gather(1, input_ids[0, 1:, None])[:, 0]
    return [None] + [float(x) for x in picked]


def _last(seq: Sequence) -> int:
    """The token a row feeds to the next step; a row that failed before choosing one is dropped before then."""
    return seq.generated[-1] if seq.generated else 0
