"""Quantized matmul kernels for GPTQ weights: which one a layer can use, and its weight layout.

Every kernel computes y = x @ W^T with W[o, i] = s[g(i), o] * (q[i, o] - z[g(i), o]), the GPTQ math
(`camelid.formats.gptq.pack.dequantize`). Layouts are converted once here, at load; the per-call work is the
matmul op plus, for act-order layers, one index_select on the activations.

- "int4": torch's int4 tinygemm (`_weight_int4pack_mm_for_cpu` on CPU, `_weight_int4pack_mm` on CUDA
  sm80+), bf16 activations. Its weights are w = (q - 8) * s + zf per (group, output), so GPTQ's integer
  zero maps exactly to zf = (8 - z) * s. 2- and 3-bit codes fit its 4-bit slots, so it serves bits 2/3/4.
  It needs a uniform group size kg in {32, 64, 128, 256}: a GPTQ group of any multiple of kg (including
  "no groups", -1) is the same group repeated, and act-order rows sorted by g_idx become uniform groups.
- "int8": `_weight_int8pack_mm` (per-output-channel scales only), for layers with a single group.
  y = (x @ (q - o)^T) * s + sum(x) * (o - z) * s, with o = 128 for 8-bit codes (0 otherwise) so codes fit
  int8; the second term vanishes for symmetric 8-bit (z = 128).
- "dense": dequantized once at load to the model dtype and run with F.linear: exact, works everywhere,
  but it stores full-precision weights (2-4 bytes per weight instead of 0.5-1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from camelid.errors import CamelidError
from camelid.formats.gptq.pack import default_g_idx, unpack_qweight, unpack_qzeros

KERNELS = ("int4", "int8", "dense")
INT4_GROUP_SIZES = (256, 128, 64, 32)  # largest first: fewer scale rows to read per call


@dataclass
class GPTQWeight:
    """One GPTQ linear, unpacked, with input rows sorted by group (act order undone once, here)."""

    q: torch.Tensor  # int32 [in, out], codes in [0, 2**bits)
    zeros: torch.Tensor | None  # int32 [groups, out], real zero-points (None in `plan_kernels`' shape-only view)
    scales: torch.Tensor | None  # float [groups, out]
    g: torch.Tensor  # long [in], group of each (sorted) row
    perm: torch.Tensor | None  # long [in]: sorted row r is input feature perm[r]; None when identity
    bits: int

    @property
    def in_features(self) -> int:
        return self.q.shape[0]

    @property
    def out_features(self) -> int:
        return self.q.shape[1]


def unpack_gptq(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, g_idx: torch.Tensor | None,
                bits: int, v1: bool, group_size: int, name: str = "layer") -> GPTQWeight:
    q = _unpack_in_chunks(qweight, bits)
    zeros = unpack_qzeros(qzeros, bits, v1)
    n_in, n_out = q.shape
    if scales.shape != zeros.shape or scales.shape[1] != n_out:
        raise CamelidError(f"{name}: scales {tuple(scales.shape)} / qzeros -> {tuple(zeros.shape)} do not match "
                           f"qweight -> [{n_in}, {n_out}] at {bits} bits")
    if g_idx is None:
        g_idx = default_g_idx(n_in, group_size)
    g = g_idx.to(torch.long)
    if g.shape != (n_in,) or int(g.min()) < 0 or int(g.max()) >= scales.shape[0]:
        raise CamelidError(f"{name}: g_idx does not match {n_in} inputs and {scales.shape[0]} groups")
    perm = None
    if bool((g[1:] < g[:-1]).any()):  # act order: sort rows by group, as ExLlama's make_sequential
        perm = torch.argsort(g, stable=True)
        q, g = q[perm], g[perm]
    return GPTQWeight(q=q, zeros=zeros, scales=scales, g=g, perm=perm, bits=bits)


def _unpack_in_chunks(qweight: torch.Tensor, bits: int, rows: int = 1024) -> torch.Tensor:
    """`unpack_qweight` a block of input rows at a time: its temporaries (int64 on the 3-bit path, 8 bytes
    per weight) would otherwise be a GB-sized spike in peak RSS for a 32000x4096 head."""
    packed_rows = rows * bits // 32
    out = torch.empty(qweight.shape[0] * 32 // bits, qweight.shape[1], dtype=torch.int32)
    for start in range(0, qweight.shape[0], packed_rows):
        chunk = qweight[start:start + packed_rows]
        out[start * 32 // bits:(start + chunk.shape[0]) * 32 // bits] = unpack_qweight(chunk, bits)
    return out


def int4_group_size(w: GPTQWeight) -> int | None:
    """Largest kg in INT4_GROUP_SIZES such that every run of kg sorted rows shares one group."""
    for kg in INT4_GROUP_SIZES:
        if w.in_features % kg == 0:
            blocks = w.g.view(-1, kg)
            if bool((blocks == blocks[:, :1]).all()):
                return kg
    return None


def why_not(kernel: str, w: GPTQWeight, device: torch.device, capability: tuple[int, int] | None = None) -> str | None:
    """None when `kernel` can run this layer on `device`, else the reason it cannot.
    `capability` is the CUDA compute capability (looked up when None)."""
    if kernel == "dense":
        return None
    if kernel == "int4":
        if w.bits > 4:
            return f"{w.bits}-bit codes do not fit 4 bits"
        if int4_group_size(w) is None:
            return "groups are not a multiple of 32 rows"
        if device.type == "cpu":
            return None if w.out_features % 16 == 0 else "out_features is not a multiple of 16"
        if device.type == "cuda":
            if (capability or torch.cuda.get_device_capability(device)) < (8, 0):
                return "CUDA int4 tinygemm needs compute capability 8.0+"
            return None if w.out_features % 8 == 0 else "out_features is not a multiple of 8"
        return f"no int4 kernel on {device.type}"
    if kernel == "int8":
        if device.type != "cpu":
            return "int8 kernel is CPU only"
        if bool((w.g != w.g[0]).any()):
            return "int8 kernel needs one scale per output channel (group_size -1)"
        return None
    raise CamelidError(f"unknown kernel {kernel!r}; choose from auto, {', '.join(KERNELS)}")


def choose_kernel(w: GPTQWeight, device: torch.device, requested: str = "auto", name: str = "layer",
                  capability: tuple[int, int] | None = None) -> str:
    """The selection rule: int4 where it applies, else int8 (CPU, single group), else dense.
    An explicit request that cannot run this layer is an error, not a silent fallback."""
    if requested != "auto":
        reason = why_not(requested, w, device, capability)
        if reason:
            raise CamelidError(f"{name}: kernel {requested!r} cannot run this layer: {reason}")
        return requested
    for kernel in KERNELS:
        if why_not(kernel, w, device, capability) is None:
            return kernel
    return "dense"


def _rows(w: GPTQWeight, t: torch.Tensor, kg: int) -> torch.Tensor:
    """Per-group tensor [groups, out] -> one row per block of kg sorted input rows [in // kg, out]."""
    return t[w.g[::kg]]


def prepare_int4(w: GPTQWeight, device: torch.device) -> dict:
    kg = int4_group_size(w)
    # 2/3-bit codes are shifted to sit around the kernel's 8, so symmetric zeros give zf = 0 rather than
    # a large offset that cancels against (q - 8) * s in bf16.
    shift = 8 - 2 ** (w.bits - 1)
    s = _rows(w, w.scales.to(torch.float32), kg)
    z = _rows(w, w.zeros.to(torch.float32), kg) + shift
    # w = (q - z) * s = (q - 8) * s + (8 - z) * s; zf computed in fp32 then rounded once to bf16.
    sz = torch.stack([s, (8 - z) * s], dim=-1).to(torch.bfloat16).contiguous().to(device)
    q = (w.q + shift if shift else w.q).t().contiguous().to(device)  # [out, in]
    if device.type == "cpu":
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
    else:
        q8 = (q[:, ::2] << 4 | q[:, 1::2]).to(torch.uint8)
        inner_k_tiles = next(t for t in (8, 4, 2) if w.in_features % (t * 16) == 0)
        packed = torch.ops.aten._convert_weight_to_int4pack(q8, inner_k_tiles)
    return {"weight": packed, "scales_and_zeros": sz, "group_size": kg}


def prepare_int8(w: GPTQWeight, device: torch.device, dtype: torch.dtype) -> dict:
    offset = 128 if w.bits == 8 else 0
    s = w.scales[0].to(torch.float32)
    corr = (offset - w.zeros[0].to(torch.float32)) * s
    return {
        "weight": (w.q - offset).t().to(torch.int8).contiguous().to(device),
        "scales": s.to(dtype).to(device),
        # fp32: sum(x) * correction can dwarf the result, so it is not rounded to bf16.
        "zero_correction": corr.to(device) if bool(corr.any()) else None,
    }


def dequantize_sorted(w: GPTQWeight) -> torch.Tensor:
    """Dense W [out, in] in fp32, in the checkpoint's input order (the act-order sort undone)."""
    wt = w.scales.to(torch.float32)[w.g] * (w.q.to(torch.float32) - w.zeros.to(torch.float32)[w.g])
    if w.perm is not None:
        wt = torch.empty_like(wt).index_copy_(0, w.perm, wt)
    return wt.t()


def prepare_dense(w: GPTQWeight, device: torch.device, dtype: torch.dtype) -> dict:
    return {"weight": dequantize_sorted(w).to(dtype).contiguous().to(device)}


def int4_mm(x: torch.Tensor, weight: torch.Tensor, group_size: int, scales_and_zeros: torch.Tensor) -> torch.Tensor:
    if x.is_cuda:
        return torch._weight_int4pack_mm(x, weight, group_size, scales_and_zeros)
    return torch._weight_int4pack_mm_for_cpu(x, weight, group_size, scales_and_zeros)
