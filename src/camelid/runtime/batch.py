"""The running batch as tensors: each sequence's KV cache left-padded into one DynamicCache (the server's
continuous batch and `camelid.runtime.generate.generate`'s batch of prompts).

Sequences join (`join`) after their own prefill and leave (`keep`) between decode steps. Caches are
`kvcache.preallocated_cache`s: a decode step writes its column in place instead of copying the cache. Left padding
keeps every row's newest token in the last column, so one forward with an attention mask and explicit
position ids advances all rows by one token, exactly as `generate` does for a left-padded batch.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from functools import cache

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from camelid.runtime.kvcache import preallocated_cache


@dataclass
class Batch:
    cache: DynamicCache  # per layer keys/values [B, kv_heads, T, head_dim], rows left-padded
    mask: torch.Tensor  # [B, T] 1 where the cache holds a real token
    positions: torch.Tensor  # [B] position id of each row's next token (its real length)
    next_tokens: torch.Tensor  # [B] the token each row feeds to the next step

    @property
    def size(self) -> int:
        return int(self.mask.shape[0])

    @property
    def width(self) -> int:
        return int(self.mask.shape[1])


def cache_kwarg(model) -> str:
    """The forward keyword of the KV cache: Transformers renamed `past_key_values` to `cache` (the old name
    warns on every call; `deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")` in
    models/llama/modeling_llama.py); older releases know only `past_key_values`."""
    return _cache_kwarg(type(model))


@cache
def _cache_kwarg(cls: type) -> str:
    return "cache" if "cache" in inspect.signature(cls.forward).parameters else "past_key_values"


def _cache_of(layers: list[tuple[torch.Tensor, torch.Tensor]]) -> DynamicCache:
    """A cache holding these per-layer keys/values, with room for the decode steps that follow (`kvcache`)."""
    cache = preallocated_cache()
    for i, (k, v) in enumerate(layers):
        cache.update(k, v, i)
    return cache


def _layers(cache: DynamicCache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(layer.keys, layer.values) for layer in cache.layers]


def _pad_left(t: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    missing = width - t.shape[dim]
    if missing == 0:
        return t
    pad = [0, 0] * (t.dim() - 1 - dim) + [missing, 0]  # F.pad lists dims from the last one
    return F.pad(t, pad)


def join(a: Batch | None, b: Batch) -> Batch:
    """Stack two batches, left-padding the narrower one."""
    if a is None:
        return b
    width = max(a.width, b.width)
    layers = []
    for (ka, va), (kb, vb) in zip(_layers(a.cache), _layers(b.cache), strict=True):
        layers.append(
            (
                torch.cat([_pad_left(ka, width, 2), _pad_left(kb, width, 2)]),
                torch.cat([_pad_left(va, width, 2), _pad_left(vb, width, 2)]),
            )
        )
    return Batch(
        cache=_cache_of(layers),
        mask=torch.cat([_pad_left(a.mask, width, 1), _pad_left(b.mask, width, 1)]),
        positions=torch.cat([a.positions, b.positions]),
        next_tokens=torch.cat([a.next_tokens, b.next_tokens]),
    )


def keep(batch: Batch, rows: list[int]) -> Batch | None:
    """The batch restricted to `rows`, with padding columns no remaining row needs cut off."""
    if not rows:
        return None
    if rows == list(range(batch.size)):
        return batch
    index = torch.tensor(rows, device=batch.mask.device)
    mask = batch.mask.index_select(0, index)
    start = int((mask.sum(0) > 0).nonzero()[0]) if mask.any() else 0
    layers = [
        (k.index_select(0, index)[:, :, start:], v.index_select(0, index)[:, :, start:])
        for k, v in _layers(batch.cache)
    ]
    return Batch(
        cache=_cache_of(layers),
        mask=mask[:, start:],
        positions=batch.positions.index_select(0, index),
        next_tokens=batch.next_tokens.index_select(0, index),
    )


@torch.inference_mode()
def decode_step(model, batch: Batch) -> torch.Tensor:
    """Feed each row its next token; the cache grows by one column. Returns logits [B, V]."""
    batch.mask = torch.cat([batch.mask, torch.ones_like(batch.mask[:, :1])], dim=1)
    out = model(
        input_ids=batch.next_tokens[:, None],
        attention_mask=batch.mask,
        position_ids=batch.positions[:, None],
        use_cache=True,
        **{cache_kwarg(model): batch.cache},
    )
    batch.positions = batch.positions + 1
    return out.logits[:, -1, :]


@torch.inference_mode()
def prefill(model, prompts: list[list[int]], all_logits: bool = False) -> tuple[Batch, torch.Tensor]:
    """Run new prompts in one forward, left-padded as a batch. Returns the batch (its `next_tokens` still to be
    chosen) and logits [B, 1, V] for each prompt's last position ([B, T, V] with `all_logits`).

    The head is applied here, to a copy of the last hidden state: Transformers' own `logits_to_keep=1` hands
    the head a [B, 1, dim] view whose batch stride is the full sequence's, which sends CPU linears down a
    batched-matmul path that copies the whole [vocab, dim] weight every call (measured on 4-bit camel45m:
    a 9-token prefill took 340 ms, of which 300 ms was that copy).
    """
    device = next(model.parameters()).device
    width = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros(len(prompts), width, dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.tensor(prompt)
        mask[row, width - len(prompt) :] = 1
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    kv = preallocated_cache()  # filled in place: the output's copy of it is never read (its old name warns)
    base = model.base_model
    out = base(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **{cache_kwarg(base): kv})
    hidden = out.last_hidden_state
    if not all_logits:  # a fresh [B, 1, dim] tensor with standard strides (a view keeps the long ones)
        hidden = hidden[:, -1:, :].clone(memory_format=torch.contiguous_format)
    lengths = mask.sum(1)
    batch = Batch(kv, mask, positions=lengths, next_tokens=torch.zeros_like(lengths))
    return batch, model.get_output_embeddings()(hidden)
