"""Next-token choice for one sequence: TGI's penalties and warpers, then greedy or seeded sampling.

The warpers are Transformers' own; the logprob reported is taken after them, as TGI's NextTokenChooser does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import (
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
    TypicalLogitsWarper,
)

from camelid.serve.validation import SamplingParams


class FrequencyPenalty:
    """OpenAI/TGI frequency penalty: subtract penalty x (count of the token so far) from its logit."""

    def __init__(self, penalty: float) -> None:
        self.penalty = penalty

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        counts = torch.zeros_like(scores).scatter_add_(1, input_ids, torch.ones_like(input_ids, dtype=scores.dtype))
        return scores - self.penalty * counts


@dataclass
class Choice:
    token_id: int
    logprob: float
    top: list[tuple[int, float]]  # (id, logprob) of the top_n most likely tokens


class TokenChooser:
    """Per-sequence state for choosing tokens: its processors and its own seeded generator."""

    def __init__(self, params: SamplingParams, device: torch.device | str = "cpu") -> None:
        self.params = params
        procs: list = []
        if params.repetition_penalty != 1.0:
            procs.append(RepetitionPenaltyLogitsProcessor(params.repetition_penalty))
        if params.frequency_penalty != 0.0:
            procs.append(FrequencyPenalty(params.frequency_penalty))
        if params.sampling:
            if params.temperature != 1.0:
                procs.append(TemperatureLogitsWarper(params.temperature))
            if params.top_k:
                procs.append(TopKLogitsWarper(params.top_k))
            if params.top_p < 1.0:
                procs.append(TopPLogitsWarper(params.top_p))
            if params.typical_p < 1.0:
                procs.append(TypicalLogitsWarper(params.typical_p))
        self.processors = LogitsProcessorList(procs)
        self.generator: torch.Generator | None = None
        if params.sampling:
            # One generator per request: its tokens depend on its seed only, not on who shares the batch.
            self.generator = torch.Generator(device=device).manual_seed(params.seed)

    def choose(self, history: torch.Tensor, logits: torch.Tensor, top_n: int = 0) -> Choice:
        """`history`: [1, T] ids so far (prompt + generated); `logits`: [1, V] for the next position."""
        scores = self.processors(history, logits.float())
        logprobs = torch.log_softmax(scores, dim=-1)
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
