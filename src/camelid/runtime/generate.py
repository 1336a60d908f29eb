"""Token sampling and a streaming generate loop over a Transformers causal LM with a KV cache.

`sample_next` is a plain function over tensors (logits, the ids so far, a seeded `torch.Generator`) so a
server can sample each request of a continuous batch on its own. Its processors follow Hugging Face
`generate` and TGI, in their order: repetition penalty (over prompt and generated ids), then temperature,
top-k, top-p. Temperature 0 is greedy (argmax after the repetition penalty).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch

from camelid.errors import CamelidError
from camelid.runtime.detokenize import TextStream


def as_float32(x: float) -> float:
    """`x` as the fp32 sampler sees it: 1e-300 is 0 there and 1e300 is inf, NaN stays NaN. Range checks
    on this value keep a finite positive float64 from dividing by zero in a sampling step."""
    try:
        return struct.unpack("f", struct.pack("f", x))[0]
    except OverflowError:
        return float("inf") if x > 0 else float("-inf")


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0  # 1 = off
    top_k: int = 0  # 0 = off
    repetition_penalty: float = 1.0  # 1 = off; HF/TGI (CTRL paper) semantics

    def __post_init__(self) -> None:
        # Written so that NaN fails every check (it compares false), and checked in fp32, the sampler's dtype.
        t = as_float32(self.temperature)
        if not (self.temperature == 0 or 0 < t < float("inf")):
            raise CamelidError(f"temperature must be 0 (greedy) or a finite number > 0 (at least ~1e-38, "
                               f"fp32's smallest), got {self.temperature}")
        if not 0 < as_float32(self.top_p) <= 1:
            raise CamelidError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise CamelidError(f"top_k must be >= 0, got {self.top_k}")
        if not 0 < as_float32(self.repetition_penalty) < float("inf"):
            raise CamelidError(f"repetition_penalty must be a finite number > 0, got {self.repetition_penalty}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def apply_repetition_penalty(logits: torch.Tensor, prev_ids: torch.Tensor, penalty: float) -> torch.Tensor:
    """HF `RepetitionPenaltyLogitsProcessor`: each seen token's logit is divided by `penalty` if positive,
    multiplied if negative (once per token, however often it was seen)."""
    if penalty == 1.0 or prev_ids.numel() == 0:
        return logits
    seen = logits.gather(-1, prev_ids)
    seen = torch.where(seen < 0, seen * penalty, seen / penalty)
    return logits.scatter(-1, prev_ids, seen)


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


def sample_next(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None = None,
                prev_ids: torch.Tensor | None = None) -> torch.Tensor:
    """The next token id(s) from `logits` ([V] or [B, V]); `prev_ids` ([T] or [B, T]) feed the repetition
    penalty. Deterministic for a given generator state."""
    logits = logits.float()
    if prev_ids is not None:
        logits = apply_repetition_penalty(logits, prev_ids.to(logits.device, torch.long), params.repetition_penalty)
    if params.greedy:
        return logits.argmax(dim=-1)
    logits = apply_top_p(apply_top_k(logits / params.temperature, params.top_k), params.top_p)
    probs = logits.softmax(dim=-1)
    flat = probs.reshape(-1, probs.shape[-1])
    return torch.multinomial(flat, 1, generator=generator).reshape(probs.shape[:-1])


def make_generator(device: torch.device | str, seed: int | None) -> torch.Generator:
    gen = torch.Generator(device=device)
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(seed)
    return gen


def eos_token_ids(model, tokenizer) -> set[int]:
    """EOS ids from the tokenizer and the model's generation_config (which may list several)."""
    ids = set()
    for source in (getattr(getattr(model, "generation_config", None), "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(source, int):
            ids.add(source)
        elif source:
            ids.update(source)
    return ids


@torch.inference_mode()
def generate_ids(model, input_ids: Sequence[int], max_new_tokens: int, params: SamplingParams = SamplingParams(),
                 generator: torch.Generator | None = None, eos_ids: Iterable[int] = ()) -> Iterator[int]:
    """Yield new token ids one by one: prefill once, then one cached decode step per token. Stops after
    `max_new_tokens`, at an EOS id (not yielded) or at the model's position limit."""
    if not input_ids:
        raise CamelidError("empty prompt: nothing to condition on (the tokenizer added no BOS)")
    if max_new_tokens < 0:
        raise CamelidError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    device = next(model.parameters()).device
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit is not None:
        if len(input_ids) >= limit:
            raise CamelidError(f"prompt has {len(input_ids)} tokens; the model takes at most {limit}")
        max_new_tokens = min(max_new_tokens, limit - len(input_ids))
    eos_ids = set(eos_ids)
    seen = torch.tensor(list(input_ids), dtype=torch.long, device=device)
    out = model(input_ids=seen[None], use_cache=True, logits_to_keep=1)  # prefill: last position's logits only
    for _ in range(max_new_tokens):
        token = sample_next(out.logits[0, -1], params, generator, seen)
        tok = int(token)
        if tok in eos_ids:
            return
        yield tok
        seen = torch.cat([seen, token.view(1)])
        out = model(input_ids=token.view(1, 1), past_key_values=out.past_key_values, use_cache=True)


def stream_text(tokenizer, ids: Iterable[int], stop: Sequence[str] = ()) -> Iterator[str]:
    """Turn a token stream into text deltas, ending at the first stop string (not emitted).

    Decoding is incremental as in TGI (`TextStream`). Text that could still become a stop string is held
    back until it is decided.
    """
    stream = TextStream(tokenizer, skip_special_tokens=True)
    text, sent = "", 0
    for tok in ids:
        piece = stream.push(tok)
        if not piece:
            continue  # nothing printable yet (e.g. half of a multi-byte character)
        text += piece
        cuts = [i for i in (text.find(s, max(0, sent - len(s))) for s in stop) if i >= 0]
        if cuts:
            if min(cuts) > sent:
                yield text[sent:min(cuts)]
            return
        # Keep back the longest suffix that is a prefix of a stop string.
        partial = [n for s in stop for n in range(1, len(s)) if text.endswith(s[:n])]
        hold = len(text) - max(partial, default=0)
        if hold > sent:
            yield text[sent:hold]
            sent = hold
    if len(text) > sent:
        yield text[sent:]
