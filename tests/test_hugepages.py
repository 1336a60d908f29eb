import torch

from camelid.runtime import hugepages


def test_huge_page_copy_is_an_aligned_equal_copy():
    t = torch.randn(1024, 768)  # 3 MB
    out = hugepages.huge_page_copy(t)
    assert torch.equal(out, t) and out.dtype == t.dtype and out.shape == t.shape
    if hugepages.enabled():
        assert out.data_ptr() != t.data_ptr() and out.data_ptr() % hugepages.HUGE_PAGE == 0
        out[0, 0] = 1e9  # a real, writable copy
        assert t[0, 0] != 1e9


def test_small_or_disabled_tensors_are_kept(monkeypatch):
    small = torch.ones(16, dtype=torch.uint8)
    assert hugepages.huge_page_copy(small) is small
    monkeypatch.setenv(hugepages.DISABLE_ENV, "0")
    big = torch.ones(4 << 20, dtype=torch.uint8)
    assert not hugepages.enabled() and hugepages.huge_page_copy(big) is big
