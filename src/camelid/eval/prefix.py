"""Next-token log-probabilities for many prompts that share a long prefix, computing that prefix once.

Few-shot prompts of one MMLU subject are the same header and shots followed by a short question, so the
common token prefix of the whole group is run once; its KV cache is then broadcast over a batch of the
question suffixes. The suffixes are right-padded (causal attention: a real position never sees the padding
to its right, so no mask is needed) and sorted by length so one batch pads little. Positions continue from
the prefix's length, so every row computes exactly what a full forward of its own prompt computes (up to
float rounding).

Generation (GSM8K's eight exemplars, a BBH task's three shots, a TyDiQA language's shot) starts the same
way: `prefill_after` runs only the suffixes on the broadcast prefix cache and hands
`camelid.runtime.generate.generate` the batch its own prefill would have made, with the padding between the
prefix and each suffix instead of in front of the prompt (the attention mask and explicit positions make
the two the same computation, up to float rounding).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers.cache_utils import DynamicCache

from camelid.runtime.batch import Batch, cache_kwarg
from camelid.runtime.kvcache import preallocated_cache

# Suffix tokens per forward pass (the [B, L, vocab] logits are the largest tensor).
TOKENS_PER_BATCH = 2048
# A batch grows while its padded size stays within this factor of its real tokens.
PAD_SLACK = 1.15


def common_prefix_length(id_lists: Sequence[Sequence[int]]) -> int:
    first = id_lists[0]
    n = min(len(ids) for ids in id_lists)
    for ids in id_lists[1:]:
        i = 0
        while i < n and ids[i] == first[i]:
            i += 1
        n = i
    return n


def _broadcast(cache: DynamicCache, batch: int, out: DynamicCache) -> DynamicCache:
    """`out` filled with `cache`'s keys/values repeated over `batch` rows."""
    for i, layer in enumerate(cache.layers):
        out.update(layer.keys.expand(batch, -1, -1, -1), layer.values.expand(batch, -1, -1, -1), i)
    return out


@dataclass(frozen=True)
class SharedPrefix:
    """A token prefix and its KV cache (batch 1), computed once and broadcast over the prompts after it."""

    ids: tuple[int, ...]
    cache: DynamicCache

    def starts(self, id_lists: Sequence[Sequence[int]]) -> bool:
        """Whether every prompt is this prefix plus at least one token."""
        n = len(self.ids)
        return all(len(ids) > n and tuple(ids[:n]) == self.ids for ids in id_lists)


@torch.inference_mode()
def shared_prefix(model, ids: Sequence[int]) -> SharedPrefix:
    """Run `ids` once (the LM head at the last position only) and keep their KV cache."""
    device = next(model.parameters()).device
    cache = DynamicCache(config=model.config)  # filled in place by the forward
    model(input_ids=torch.tensor([list(ids)], device=device), use_cache=True, logits_to_keep=1,
          **{cache_kwarg(model): cache})
    return SharedPrefix(tuple(ids), cache)


@torch.inference_mode()
def prefill_after(model, prompts: list[list[int]], prefix: SharedPrefix) -> tuple[Batch, torch.Tensor]:
    """`camelid.runtime.batch.prefill(model, prompts)` for prompts that all start with `prefix` (see
    `SharedPrefix.starts`): only the suffixes run, left-padded after the prefix. Returns the batch and the
    logits [B, 1, V] at each prompt's last position."""
    device = next(model.parameters()).device
    shared = len(prefix.ids)
    suffixes = [p[shared:] for p in prompts]
    width = max(len(s) for s in suffixes)
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros(len(prompts), shared + width, dtype=torch.long)
    mask[:, :shared] = 1
    for row, s in enumerate(suffixes):
        ids[row, width - len(s):] = torch.tensor(s)
        mask[row, shared + width - len(s):] = 1
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask.cumsum(1) - 1)[:, shared:]
    # Room to decode in place, as batch.prefill's cache (`camelid.runtime.kvcache`).
    kv = _broadcast(prefix.cache, len(prompts), preallocated_cache(model.config))
    base = model.base_model
    out = base(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **{cache_kwarg(base): kv})
    # The head on a fresh copy of the last hidden state, as batch.prefill does (a view's strides are slow).
    hidden = out.last_hidden_state[:, -1:, :].clone(memory_format=torch.contiguous_format)
    lengths = mask.sum(1)
    batch = Batch(kv, mask, positions=lengths, next_tokens=torch.zeros_like(lengths))
    return batch, model.get_output_embeddings()(hidden)


@torch.inference_mode()
def next_token_logprobs(model, id_lists: Sequence[Sequence[int]], candidate_ids: Sequence[int],
                        tokens_per_batch: int = TOKENS_PER_BATCH) -> torch.Tensor:
    """[N, C] float32 log-softmax over the full vocabulary at each prompt's last position, at `candidate_ids`."""
    device = next(model.parameters()).device
    # Keep at least one suffix token per prompt: its logits are the ones scored.
    shared = min(common_prefix_length(id_lists), min(len(ids) for ids in id_lists) - 1)
    cache = shared_prefix(model, id_lists[0][:shared]).cache if shared > 0 else None
    kwarg = cache_kwarg(model)
    cand = torch.tensor(list(candidate_ids), device=device)
    out = torch.empty(len(id_lists), len(cand), dtype=torch.float32)
    order = sorted(range(len(id_lists)), key=lambda i: len(id_lists[i]))
    start = 0
    while start < len(order):
        end, real = start + 1, len(id_lists[order[start]]) - shared
        while end < len(order):
            n = len(id_lists[order[end]]) - shared
            padded = (end - start + 1) * n
            if padded > tokens_per_batch or padded > PAD_SLACK * (real + n):
                break
            end, real = end + 1, real + n
        rows = order[start:end]
        suffixes = [list(id_lists[i][shared:]) for i in rows]
        longest = max(len(s) for s in suffixes)
        batch = torch.tensor([s + [0] * (longest - len(s)) for s in suffixes], device=device)
        kv = None if cache is None else _broadcast(cache, len(rows), DynamicCache(config=model.config))
        # The LM head runs only at the positions some row ends at (it costs as much as the layers).
        ends = sorted({len(s) - 1 for s in suffixes})
        keep = torch.tensor(ends, device=device)
        cached = {} if kv is None else {kwarg: kv}
        logits = model(input_ids=batch, use_cache=kv is not None, logits_to_keep=keep, **cached).logits
        last = torch.tensor([ends.index(len(s) - 1) for s in suffixes], device=device)
        picked = logits[torch.arange(len(rows), device=device), last].float().log_softmax(-1)[:, cand]
        out[rows] = picked.cpu()
        start = end
    return out


@torch.inference_mode()
def next_token_logprobs_baseline(model, id_lists: Sequence[Sequence[int]], candidate_ids: Sequence[int]) -> torch.Tensor:
    """One prompt per forward pass, no cache (open-instruct `get_next_word_predictions` at batch size 1,
    with the LM head at the last position only, so the comparison credits the prefix reuse alone)."""
    device = next(model.parameters()).device
    cand = torch.tensor(list(candidate_ids), device=device)
    rows = [model(input_ids=torch.tensor([list(ids)], device=device), logits_to_keep=1).logits[0, -1]
            .float().log_softmax(-1)[cand] for ids in id_lists]
    return torch.stack(rows).cpu()
