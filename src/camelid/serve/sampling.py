"""Next-token choice for one sequence: TGI's penalties and warpers, then greedy or seeded sampling.

Repetition penalty, top-k and top-p are camelid.runtime's (the same as `camelid generate`); TGI's extra
typical_p is Transformers' warper and frequency_penalty is below. The logprob reported is taken after the
warpers, as TGI's NextTokenChooser does.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
from transformers import TypicalLogitsWarper

from camelid.runtime.generate import apply_repetition_penalty, apply_top_k, apply_top_p
from camelid.serve.validation import SamplingParams


def frequency_penalty(history: torch.Tensor, scores: torch.Tensor, penalty: float) -> torch.Tensor:
    """OpenAI/TGI frequency penalty: subtract penalty x (count of the token so far) from its logit."""
    counts = torch.zeros_like(scores).scatter_add_(1, history, torch.ones_like(history, dtype=scores.dtype))
    return scores - penalty * counts


@dataclass
class Choice:
    token_id: int
    logprob: float
    top: list[tuple[int, float]]  # (id, logprob) of the top_n most likely tokens


class TokenChooser:
    """Per-sequence state for choosing tokens: its processors and its own seeded generator."""

    def __init__(self, params: SamplingParams, device: torch.device | str = "cpu") -> None:
        self.params = params
        # Each processor maps (history [1, T], scores [1, V]) -> scores, in TGI's order.
        self.processors: list = []
        self.needs_history = params.repetition_penalty != 1.0 or params.frequency_penalty != 0.0
        if params.repetition_penalty != 1.0:
            self.processors.append(lambda h, s: apply_repetition_penalty(s, h, params.repetition_penalty))
        if params.frequency_penalty != 0.0:
            self.processors.append(partial(frequency_penalty, penalty=params.frequency_penalty))
        if params.sampling:
            if params.temperature != 1.0:
                self.processors.append(lambda h, s: s / params.temperature)
            if params.top_k:
                self.processors.append(lambda h, s: apply_top_k(s, params.top_k))
            if params.top_p < 1.0:
                self.processors.append(lambda h, s: apply_top_p(s, params.top_p))
            if params.typical_p < 1.0:
                self.processors.append(TypicalLogitsWarper(params.typical_p))
        self.generator: torch.Generator | None = None
        if params.sampling:
            # One generator per request: its tokens depend on its seed only, not on who shares the batch.
            self.generator = torch.Generator(device=device).manual_seed(params.seed)

    def choose(self, history: torch.Tensor, logits: torch.Tensor, top_n: int = 0) -> Choice:
        """`history`: [1, T] ids so far (prompt + generated); `logits`: [1, V] for the next position."""
        scores = logits.float()
        for process in self.processors:
            scores = process(history, scores)
        logprobs = torch.log_softmax(scores, dim=-1)
        if bool(logprobs.isnan().any()):  # NaN logits, or a setting that overflowed: fail this request alone
            raise ValueError("the next-token distribution is not finite (NaN logits)")
        if self.generator is not None:
            token = int(torch.multinomial(logprobs.exp(), 1, generator=self.generator))
        else:
            token = int(scores.argmax(dim=-1))
        top: list[tuple[int, float]] = []
        if top_n:
            values, ids = logprobs.topk(top_n, dim=-1)
            top = [(int(i), float(v)) for i, v in zip(ids[0], values[0], strict=True)]
        return Choice(token, float(logprobs[0, token]), top)


def prefill_logprobs(input_ids: torch.Tensor, logits: torch.Tensor) -> list[float | None]:
    """Log-probability of each prompt token given the ones before it (the first has none)."""
    logprobs = torch.log_softmax(logits[0, :-1].float(), dim=-1)
    picked = logprobs.gather(1, input_ids[0, 1:, None])[:, 0]
    return [None] + [float(x) for x in picked]
