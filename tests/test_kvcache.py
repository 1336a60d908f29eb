import torch
from transformers.cache_utils import DynamicLayer

from camelid.runtime import kvcache


def test_preallocated_layer_equals_concatenation_through_growth_and_crop():
    g = torch.Generator().manual_seed(0)
    ours, ref = kvcache.PreallocatedLayer(), DynamicLayer()
    steps = [37] + [1] * 300 + [5]  # a prompt, decode steps past MIN_POSITIONS (a doubling), a chunk
    for i, n in enumerate(steps):
        k, v = torch.randn(2, 3, n, 8, generator=g), torch.randn(2, 3, n, 8, generator=g)
        got, want = ours.update(k, v), ref.update(k, v)
        assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
        if i == 100:  # replaced from outside (as crop does): the next update starts from what is there now
            ours.crop(-10)
            ref.crop(-10)
    assert ours.get_seq_length() == ref.get_seq_length() == sum(steps) - 10
    assert ours._key_buf.shape[-2] <= 2 * ours.get_seq_length() + kvcache.MIN_POSITIONS  # bounded spare room


def test_appending_does_not_copy_the_cache():
    layer = kvcache.PreallocatedLayer()
    layer.update(torch.zeros(1, 2, 10, 4), torch.zeros(1, 2, 10, 4))
    buf = layer._key_buf.data_ptr()
    for _ in range(50):
        keys, _ = layer.update(torch.ones(1, 2, 1, 4), torch.ones(1, 2, 1, 4))
    assert layer._key_buf.data_ptr() == buf == keys.data_ptr() and keys.shape[-2] == 60


def test_cache_for_a_config_has_one_preallocated_layer_per_decoder_layer():
    from transformers import LlamaConfig

    cache = kvcache.preallocated_cache(LlamaConfig(num_hidden_layers=3, hidden_size=64, intermediate_size=128,
                                                   num_attention_heads=4, vocab_size=100))
    assert [type(layer) for layer in cache.layers] == [kvcache.PreallocatedLayer] * 3
    lazy = kvcache.preallocated_cache()
    lazy.update(torch.zeros(1, 1, 2, 4), torch.zeros(1, 1, 2, 4), 1)
    assert [type(layer) for layer in lazy.layers] == [kvcache.PreallocatedLayer] * 2
