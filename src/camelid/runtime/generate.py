"""Generate loops over a Transformers causal LM with a KV cache: one streamed sequence (`camelid generate`/`chat`)
and a batch of prompts (evaluation).

Both choose tokens with `camelid.runtime.sampling.Sampler` and end with `camelid.runtime.stops.StopMatcher`,
as the server's scheduler does; the batch uses the server's left-padded `camelid.runtime.batch`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch

from camelid.errors import CamelidError
from camelid.runtime import batch as B
from camelid.runtime.detokenize import TextStream
from camelid.runtime.kvcache import preallocated_cache
from camelid.runtime.sampling import Sampler, SamplingParams
from camelid.runtime.stops import NO_STOPS, StopMatcher, Stops


def _budget(model, input_ids: Sequence[int], max_new_tokens: int) -> int:
    """`max_new_tokens`, cut to the model's position limit; refuses a prompt that leaves no room."""
    if not input_ids:
        raise CamelidError("empty prompt: nothing to condition on (the tokenizer added no BOS)")
    if max_new_tokens < 0:
        raise CamelidError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit is None:
        return max_new_tokens
    if len(input_ids) >= limit:
        raise CamelidError(f"prompt has {len(input_ids)} tokens; the model takes at most {limit}")
    return min(max_new_tokens, limit - len(input_ids))


@torch.inference_mode()
def generate_ids(model, input_ids: Sequence[int], max_new_tokens: int, sampler: Sampler) -> Iterator[int]:
    """Yield new token ids one by one: prefill once, then one cached decode step per token, until
    `max_new_tokens` or the model's position limit. The caller decides on EOS and stop strings: the next
    step runs only when it asks for the next id."""
    max_new_tokens = _budget(model, input_ids, max_new_tokens)
    device = next(model.parameters()).device
    seen = torch.tensor(list(input_ids), dtype=torch.long, device=device)
    cache = preallocated_cache(model.config)  # filled in place; appends without copying the cache (`kvcache`)
    kv = {B.cache_kwarg(model): cache}
    out = model(input_ids=seen[None], use_cache=True, logits_to_keep=1, **kv)  # prefill: last position only
    for _ in range(max_new_tokens):
        history = seen if sampler.params.needs_history else None
        tok = sampler.choose(out.logits[0, -1], history).token_id
        yield tok
        token = torch.tensor([tok], dtype=torch.long, device=device)
        if sampler.params.needs_history:  # the penalties read the ids so far; otherwise no per-token copy
            seen = torch.cat([seen, token])
        out = model(input_ids=token.view(1, 1), use_cache=True, **kv)


def stream_text(tokenizer, ids: Iterable[int], stops: Stops = NO_STOPS) -> Iterator[str]:
    """Turn a token stream into text deltas, ending at an EOS id or the first stop string (neither emitted).

    Decoding is incremental as in TGI (`TextStream`); text that could still become a stop string is held back
    until it is decided (`StopMatcher`). No more ids are drawn from `ids` once the sequence has ended.
    """
    text, matcher = TextStream(tokenizer, skip_special_tokens=True), StopMatcher(stops)
    for tok in ids:
        piece = matcher.push(tok, text.push(tok))
        if piece:
            yield piece
        if matcher.reason is not None:
            return
    if tail := matcher.flush():
        yield tail


@dataclass(frozen=True)
class Completion:
    ids: list[int]  # generated ids; the EOS that ended the sequence is not included
    text: str  # generated text (special tokens skipped), cut before the first stop string
    finish_reason: str  # "length" | "eos_token" | "stop_sequence"


@torch.inference_mode()
def generate(model, tokenizer, prompts: Sequence[Sequence[int]], params: SamplingParams, stops: Stops = NO_STOPS,
             max_new_tokens: int = 256, prefill: Callable = B.prefill) -> list[Completion]:
    """Complete every prompt (token ids) in one left-padded batch; finished rows leave between decode steps.

    Each row samples with its own generator seeded from `params.seed`, so a completion does not depend on
    which other prompts share the batch, and the caller may split a long list into batches as memory allows.
    (Padding changes matmul shapes, so a padded row can differ from `generate_ids` alone by float rounding;
    on the fp32 test model they are equal.) Text keeps the first token's leading space, as the prompt's
    continuation (`TextStream` with the prompt as context). `prefill(model, prompts) -> (Batch, logits
    [B, 1, V])` replaces `batch.prefill`, e.g. with one that starts from a shared prefix's KV cache
    (`camelid.eval.prefix.prefill_after`).
    """
    if not prompts:
        return []
    budgets = [_budget(model, p, max_new_tokens) for p in prompts]
    device = next(model.parameters()).device
    samplers = [Sampler(params, device) for _ in prompts]
    texts = [TextStream(tokenizer, list(p), skip_special_tokens=True) for p in prompts]
    matchers = [StopMatcher(stops) for _ in prompts]
    ids: list[list[int]] = [[] for _ in prompts]
    shown = [""] * len(prompts)
    reasons: list[str | None] = [None] * len(prompts)
    batch, logits = prefill(model, [list(p) for p in prompts])
    logits, rows = logits[:, -1, :], list(range(len(prompts)))
    while True:
        chosen = []
        for i, row in enumerate(rows):
            history = None
            if params.needs_history:
                history = torch.tensor(list(prompts[row]) + ids[row], device=device)
            tok = samplers[row].choose(logits[i], history).token_id
            chosen.append(tok)
            shown[row] += matchers[row].push(tok, texts[row].push(tok))
            reasons[row] = matchers[row].reason
            if reasons[row] != "eos_token":
                ids[row].append(tok)
            if reasons[row] is None and len(ids[row]) >= budgets[row]:
                reasons[row] = "length"
                shown[row] += matchers[row].flush()
        batch.next_tokens = torch.tensor(chosen, device=batch.next_tokens.device)
        alive = [i for i, row in enumerate(rows) if reasons[row] is None]
        batch, rows = B.keep(batch, alive), [rows[i] for i in alive]
        if batch is None:
            return [Completion(i, t, r) for i, t, r in zip(ids, shown, reasons, strict=True)]
        logits = B.decode_step(model, batch)
