"""Next-token choice for one sequence: one `SamplingParams` and one `Sampler` for `camelid generate`/`chat`, the
server and evaluation.

Processors follow Hugging Face `generate` and TGI (server/text_generation_server/utils/tokens.py,
`NextTokenChooser`), in their order: repetition penalty (over prompt and generated ids), frequency penalty,
then, when sampling, temperature, top-k, top-p, typical-p. Temperature 0 is greedy: argmax after the
penalties. Each `Sampler` owns its seeded generator, so a sequence's tokens depend on its seed only, not on
who shares the batch. The logprob reported is taken after the warpers, as TGI's NextTokenChooser does.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import torch

from camelid.errors import CamelidError


def as_float32(x: float) -> float:
    """`x` as the fp32 sampler sees it: 1e-300 is 0 there and 1e300 is inf, NaN stays NaN. Range checks
    on this value keep a finite positive float64 from dividing by zero in a sampling step."""
    try:
        return struct.unpack("f", struct.pack("f", x))[0]
    except OverflowError:
        return math.inf if x > 0 else -math.inf


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    typical_p: float = 1.0  # 1 = off
    repetition_penalty: float = 1.0  # 1 = off; HF/TGI (CTRL paper) semantics
    frequency_penalty: float = 0.0  # 0 = off; OpenAI/TGI semantics
    seed: int | None = None  # None = a fresh random seed

    def __post_init__(self) -> None:
        for name in ("temperature", "top_p", "typical_p", "repetition_penalty", "frequency_penalty"):
            if not math.isfinite(getattr(self, name)):
                raise CamelidError(f"{name} must be a finite number, got {getattr(self, name)}")
        # Checked as the fp32 sampler sees them: 1e-300 would divide by zero there, 1e300 is inf.
        if not (self.temperature == 0 or 0 < as_float32(self.temperature) < math.inf):
            raise CamelidError(f"temperature must be 0 (greedy) or a number > 0 that fp32 can divide by "
                               f"(at least ~1e-38), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise CamelidError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0 < self.typical_p <= 1:
            raise CamelidError(f"typical_p must be in (0, 1], got {self.typical_p}")
        if self.top_k < 0:
            raise CamelidError(f"top_k must be >= 0, got {self.top_k}")
        if not 0 < as_float32(self.repetition_penalty) < math.inf:
            raise CamelidError(f"repetition_penalty must be > 0 in fp32 (at least ~1e-38), got "
                               f"{self.repetition_penalty}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def needs_history(self) -> bool:
        """Whether the ids so far change the choice (a penalty is on)."""
        return self.repetition_penalty != 1.0 or self.frequency_penalty != 0.0


def apply_repetition_penalty(logits: torch.Tensor, prev_ids: torch.Tensor, penalty: float) -> torch.Tensor:
    """HF `RepetitionPenaltyLogitsProcessor`: each seen token's logit is divided by `penalty` if positive,
    multiplied if negative (once per token, however often it was seen)."""
    if penalty == 1.0 or prev_ids.numel() == 0:
        return logits
    seen = logits.gather(-1, prev_ids)
    seen = torch.where(seen < 0, seen * penalty, seen / penalty)
    return logits.scatter(-1, prev_ids, seen)


def apply_frequency_penalty(logits: torch.Tensor, prev_ids: torch.Tensor, penalty: float) -> torch.Tensor:
    """OpenAI/TGI frequency penalty: subtract penalty x (count of the token so far) from its logit."""
    if penalty == 0.0:
        return logits
    counts = torch.zeros_like(logits).scatter_add_(-1, prev_ids, torch.ones_like(prev_ids, dtype=logits.dtype))
    return logits - penalty * counts


def apply_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def apply_top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """HF `TopPLogitsWarper`: drop the least likely tokens whose total probability is <= 1 - p (keep >= 1)."""
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, descending=False, dim=-1)
    cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    drop = cum <= 1 - p
    drop[..., -1] = False
    return logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))


def apply_typical_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Locally typical sampling (Meister et al. 2022), Transformers' own `TypicalLogitsWarper` as TGI uses it."""
    if p >= 1.0:
        return logits
    from transformers.generation.logits_process import TypicalLogitsWarper

    return TypicalLogitsWarper(p)(None, logits)


def process_logits(logits: torch.Tensor, params: SamplingParams, history: torch.Tensor | None = None) -> torch.Tensor:
    """float32 scores ([B, V]) after the penalties and, unless greedy, the warpers; `history` ([B, T] ids so far)
    feeds the penalties and may be None when `params.needs_history` is false."""
    scores = logits.float()
    if params.needs_history:
        if history is None:
            raise CamelidError("repetition/frequency penalty needs the ids generated so far")
        history = history.to(scores.device, torch.long)
        scores = apply_repetition_penalty(scores, history, params.repetition_penalty)
        scores = apply_frequency_penalty(scores, history, params.frequency_penalty)
    if params.greedy:
        return scores
    if params.temperature != 1.0:
        scores = scores / params.temperature
    scores = apply_top_p(apply_top_k(scores, params.top_k), params.top_p)
    return apply_typical_p(scores, params.typical_p)


def make_generator(device: torch.device | str, seed: int | None) -> torch.Generator:
    gen = torch.Generator(device=device)
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(seed)
    return gen


@dataclass
class Choice:
    token_id: int
    logprob: float
    top: list[tuple[int, float]]  # (id, logprob) of the top_n most likely tokens


class Sampler:
    """One sequence's token choice: its params and, when sampling, its own seeded generator."""

    def __init__(self, params: SamplingParams, device: torch.device | str = "cpu") -> None:
        self.params = params
        self.generator = None if params.greedy else make_generator(device, params.seed)

    def choose(self, logits: torch.Tensor, history: torch.Tensor | None = None, top_n: int = 0) -> Choice:
        """`logits`: [V] or [1, V] for the next position; `history`: [T] or [1, T] ids so far (prompt +
        generated), needed only when `params.needs_history`."""
        logits = logits.reshape(1, -1)
        if history is not None:
            history = history.reshape(1, -1)
        scores = process_logits(logits, self.params, history)
        logprobs = torch.log_softmax(scores, dim=-1)
        if bool(logprobs.isnan().any()):  # NaN logits, or a setting that overflowed: fail this sequence alone
            raise ValueError("the next-token distribution is not finite (NaN logits)")
        if self.generator is None:
            token = int(scores.argmax(dim=-1))
        else:
            token = int(torch.multinomial(logprobs.exp(), 1, generator=self.generator))
        top: list[tuple[int, float]] = []
        if top_n:
            values, ids = logprobs.topk(top_n, dim=-1)
            top = [(int(i), float(v)) for i, v in zip(ids[0], values[0], strict=True)]
        return Choice(token, float(logprobs[0, token]), top)
