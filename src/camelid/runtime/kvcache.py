"""A KV cache that appends in place: Transformers' DynamicCache with preallocated room to grow.

`DynamicLayer.update` (transformers/cache_utils.py) appends with `torch.cat`, copying the layer's whole
cache on every decode step: at 2,048 positions of a Llama-7B-shaped layer (bf16) that is 32 MB a token per
layer, more than the layer's 4-bit weights. Here each layer keeps buffers with spare positions, writes the
new keys/values into them and hands attention a view of the filled part; the buffers double when full, so
a token's copy cost is amortized O(1) and memory is at most twice the filled cache. Anything that replaces
a layer's tensors from outside (crop, beam reordering, `batch.keep`) is noticed and the buffers rebuilt.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

MIN_POSITIONS = 256  # first allocation: enough for most prompts plus their answer before the first doubling


class PreallocatedLayer(DynamicLayer):
    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        length = self.get_seq_length()
        new = length + key_states.shape[-2]
        fits = (getattr(self, "_filled", None) is self.keys and new <= self._key_buf.shape[-2]
                and self._key_buf.shape[:2] == key_states.shape[:2])
        if not fits:
            self._grow(key_states, value_states, length, new)
        self._key_buf[:, :, length:new].copy_(key_states)
        self._value_buf[:, :, length:new].copy_(value_states)
        self.keys, self.values = self._key_buf[:, :, :new], self._value_buf[:, :, :new]
        self._filled = self.keys
        return self.keys, self.values

    def _grow(self, key_states: torch.Tensor, value_states: torch.Tensor, length: int, new: int) -> None:
        room = max(MIN_POSITIONS, 2 * new)
        bufs = []
        for old, states in ((self.keys, key_states), (self.values, value_states)):
            buf = states.new_empty((*states.shape[:2], room, states.shape[-1]))
            if length:
                buf[:, :, :length].copy_(old)
            bufs.append(buf)
        self._key_buf, self._value_buf = bufs


def preallocated_cache(config=None) -> DynamicCache:
    """A DynamicCache whose layers append in place (`PreallocatedLayer`), one per decoder layer of `config`
    (added as the model first writes each, when None)."""
    if config is None:
        cache = DynamicCache()
        cache.layer_class_to_replicate = PreallocatedLayer
        return cache
    n_layers = config.get_text_config(decoder=True).num_hidden_layers
    cache = DynamicCache(config=config)
    if all(type(layer) is DynamicLayer for layer in cache.layers):  # sliding-window models keep their own layers
        cache.layers = [PreallocatedLayer() for _ in range(n_layers)]
    return cache
