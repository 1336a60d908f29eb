"""GPTQ bit packing (AutoGPTQ/GPTQModel "gptq" v1 layout: AutoGPTQ `auto_gptq/nn_modules/qlinear/qlinear_cuda.py` `pack`).

Values are packed LSB-first into a stream of 32-bit words: value j of each run of 32 occupies bits
[bits*j, bits*j + bits) of a `bits`-word block. For 2/4/8 bits that is "32/bits values per int32"; for
3 bits two values of every 32 straddle a word boundary, which the same rule handles.

`qweight` packs along the input dim (rows of W^T), `qzeros` along the output dim. The v1 format
stores `zero - 1` in qzeros ("gptq"), GPTQModel's internal "gptq_v2" stores `zero` as is.
"""

from __future__ import annotations

import torch

SUPPORTED_BITS = (2, 3, 4, 8)
_MASK32 = 0xFFFFFFFF


def _check_bits(bits: int) -> None:
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"GPTQ packing supports bits {SUPPORTED_BITS}, got {bits}")


def pack_rows(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack integers in [0, 2**bits) along dim 0: [n, m] -> int32 [n * bits // 32, m]. n % 32 == 0."""
    _check_bits(bits)
    n = values.shape[0]
    if n % 32:
        raise ValueError(f"cannot pack {n} rows at {bits} bits: rows must be a multiple of 32")
    v = values.to(torch.int64).reshape(n // 32, 32, *values.shape[1:])
    words = torch.zeros(n // 32, bits, *values.shape[1:], dtype=torch.int64)
    for j in range(32):
        pos = bits * j
        w, off = divmod(pos, 32)
        words[:, w] |= (v[:, j] << off) & _MASK32
        if off + bits > 32:  # straddles into the next word (3-bit only)
            words[:, w + 1] |= v[:, j] >> (32 - off)
    # int64 -> int32 keeping the bit pattern (values above 2**31 become negative, as in the format).
    words = torch.where(words >= 2**31, words - 2**32, words)
    return words.reshape(n * bits // 32, *values.shape[1:]).to(torch.int32)


def unpack_rows(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """Inverse of `pack_rows`: int32 [n * bits // 32, m] -> int32 [n, m] in [0, 2**bits)."""
    _check_bits(bits)
    k = packed.shape[0]
    if k % bits:
        raise ValueError(f"packed rows ({k}) are not a multiple of {bits} words")
    if 32 % bits == 0:
        # 2/4/8 bits: no value straddles words, so word r holds values r*per .. r*per+per-1 and one
        # broadcast shift unpacks them all (int32 throughout; the mask drops the sign extension of >>).
        # ~10x faster than the general loop below, which matters when loading a multi-GB checkpoint.
        per = 32 // bits
        shifts = torch.arange(0, 32, bits, dtype=torch.int32).view(1, per, *([1] * (packed.dim() - 1)))
        vals = (packed.to(torch.int32).unsqueeze(1) >> shifts) & ((1 << bits) - 1)
        return vals.reshape(k * per, *packed.shape[1:])
    words = (packed.to(torch.int64) & _MASK32).reshape(k // bits, bits, *packed.shape[1:])
    mask = (1 << bits) - 1
    out = torch.empty(k // bits, 32, *packed.shape[1:], dtype=torch.int64)
    for j in range(32):
        w, off = divmod(bits * j, 32)
        v = words[:, w] >> off
        if off + bits > 32:
            v = v | (words[:, w + 1] << (32 - off))
        out[:, j] = v & mask
    return out.reshape(k // bits * 32, *packed.shape[1:]).to(torch.int32)


def pack_qweight(intweight: torch.Tensor, bits: int) -> torch.Tensor:
    """intweight [in, out] (already in W^T orientation) -> qweight int32 [in * bits // 32, out]."""
    return pack_rows(intweight, bits)


def unpack_qweight(qweight: torch.Tensor, bits: int) -> torch.Tensor:
    return unpack_rows(qweight, bits)


def pack_qzeros(zeros: torch.Tensor, bits: int, v1: bool = True) -> torch.Tensor:
    """zeros [groups, out] in [0, 2**bits) -> qzeros int32 [groups, out * bits // 32].

    v1 stores zero - 1. A zero of 0 has no v1 encoding (AutoGPTQ's packer let the -1 borrow into the
    neighbouring value: the "overflow" GPTQModel warns about), so it is refused here: quantize asym
    for v1 with zeros in [1, 2**bits - 1].
    """
    if v1:
        if (zeros < 1).any():
            raise ValueError("zero-point 0 cannot be stored in GPTQ v1 format (zeros are stored minus one)")
        zeros = zeros - 1
    return pack_rows(zeros.t(), bits).t().contiguous()


def unpack_qzeros(qzeros: torch.Tensor, bits: int, v1: bool = True) -> torch.Tensor:
    """qzeros int32 [groups, out * bits // 32] -> zeros int32 [groups, out] (the real zero-points).

    For v1 the stored value + 1, computed per value as AutoGPTQ/vLLM/ExLlama readers do (so a stored
    all-ones value reads back as 2**bits, exactly like theirs).
    """
    z = unpack_rows(qzeros.t().contiguous(), bits).t().contiguous()
    return z + 1 if v1 else z


def default_g_idx(in_features: int, group_size: int) -> torch.Tensor:
    """g_idx of a checkpoint without act order: input i is in group i // group_size (-1: one group)."""
    gs = in_features if group_size == -1 else group_size
    return (torch.arange(in_features, dtype=torch.int32) // gs).to(torch.int32)


def dequantize(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, g_idx: torch.Tensor,
               bits: int, v1: bool = True) -> torch.Tensor:
    """Dense W^T [in, out] in fp32: scales[g_idx[i]] * (q[i] - zeros[g_idx[i]]). The reference math."""
    q = unpack_qweight(qweight, bits).to(torch.float32)
    zeros = unpack_qzeros(qzeros, bits, v1).to(torch.float32)
    g = g_idx.to(torch.long)
    return scales.to(torch.float32)[g] * (q - zeros[g])
