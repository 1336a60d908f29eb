import pytest
import torch

from camelid.formats.gptq.pack import (
    dequantize,
    pack_qweight,
    pack_qzeros,
    pack_rows,
    unpack_qweight,
    unpack_qzeros,
    unpack_rows,
)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_pack_unpack_roundtrip(bits):
    g = torch.Generator().manual_seed(bits)
    values = torch.randint(0, 2**bits, (128, 40), generator=g, dtype=torch.int32)
    packed = pack_rows(values, bits)
    assert packed.dtype == torch.int32 and packed.shape == (128 * bits // 32, 40)
    assert torch.equal(unpack_rows(packed, bits), values)
    # extremes: all max values exercise the sign bit and every straddle
    full = torch.full((64, 3), 2**bits - 1, dtype=torch.int32)
    assert torch.equal(unpack_rows(pack_rows(full, bits), bits), full)
    assert (pack_rows(full, bits) == -1).all()


def test_3bit_straddling_words_layout():
    # v10 = 0b101 straddles word0/word1; v21 = 0b011 straddles word1/word2 (AutoGPTQ qlinear_cuda.py `pack`)
    v = torch.zeros(32, 1, dtype=torch.int32)
    v[10], v[21] = 0b101, 0b011
    w = pack_rows(v, 3)[:, 0].to(torch.int64) & 0xFFFFFFFF
    assert w[0] == 0b01 << 30  # low 2 bits of v10 at bits 30-31
    assert w[1] == (0b1 | (0b1 << 31))  # high bit of v10 at bit 0, low bit of v21 at bit 31
    assert w[2] == 0b01  # high 2 bits of v21 at bits 0-1
    v = torch.arange(32, dtype=torch.int32).remainder(8).reshape(32, 1)
    w = pack_rows(v, 3)[:, 0].to(torch.int64) & 0xFFFFFFFF
    assert all(((w[0] >> (3 * j)) & 7) == j % 8 for j in range(10))
    assert all(((w[1] >> (3 * (j - 11) + 1)) & 7) == j % 8 for j in range(11, 21))
    assert all(((w[2] >> (3 * (j - 22) + 2)) & 7) == j % 8 for j in range(22, 32))


@pytest.mark.parametrize("bits,word", [(4, 0x77777777), (8, 0x7F7F7F7F), (2, 0x55555555)])
def test_symmetric_qzeros_words(bits, word):
    zeros = torch.full((4, 64), 2 ** (bits - 1), dtype=torch.int32)
    qz = pack_qzeros(zeros, bits)
    assert ((qz.to(torch.int64) & 0xFFFFFFFF) == word).all()
    assert torch.equal(unpack_qzeros(qz, bits), zeros)


def test_v1_refuses_zero_point_zero():
    with pytest.raises(ValueError, match="zero-point 0"):
        pack_qzeros(torch.zeros(1, 32, dtype=torch.int32), 4)
    z = torch.zeros(1, 32, dtype=torch.int32)
    assert torch.equal(unpack_qzeros(pack_qzeros(z, 4, v1=False), 4, v1=False), z)


def test_dequantize_matches_formula():
    g = torch.Generator().manual_seed(0)
    q = torch.randint(0, 16, (64, 32), generator=g, dtype=torch.int32)
    zeros = torch.randint(1, 16, (2, 32), generator=g, dtype=torch.int32)
    scales = torch.rand(2, 32, generator=g).half()
    g_idx = torch.randperm(64, generator=g).remainder(2).to(torch.int32)
    w = dequantize(pack_qweight(q, 4), pack_qzeros(zeros, 4), scales, g_idx, 4)
    ref = scales.float()[g_idx.long()] * (q.float() - zeros.float()[g_idx.long()])
    assert torch.equal(w, ref)
    assert torch.equal(unpack_qweight(pack_qweight(q, 4), 4), q)
