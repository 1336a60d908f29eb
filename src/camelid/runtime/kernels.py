"""Quantized matmul kernels for GPTQ and AWQ weights: which one a layer can use, and its weight layout.

Every kernel computes y = x @ W^T with W[o, i] = s[g(i), o] * (q[i, o] - z[g(i), o]), the GPTQ math
(`camelid.formats.gptq.pack.dequantize`), which is also AWQ's (`camelid.formats.awq.dequantize`): an AWQ
layer is a 4-bit GPTQ layer with g(i) = i // group_size, zeros stored as is and the codes packed along
the output dim in an interleaved order, so `unpack_awq` turns it into the same `GPTQWeight`. Layouts
are converted once here, at load; the per-call work is the matmul op plus, for act-order layers, one
index_select on the activations.

- "q4x8" (CPU, needs a C++ compiler at first use): 2/3/4-bit codes packed two per byte, activations
  quantized to int8 per block at call time, integer dot products (AVX2 maddubs, AVX-VNNI / AVX512-VNNI
  dpbusd), the approach of llama.cpp's Q4_0 x Q8_0 (`runtime/cpu/q4x8.cpp`, built for the host's ISA by
  `cpu_kernels`). Its cost grows slowly with rows (a weight row is unpacked once per 4 activation rows), so
  serving batches gain; from `dense_rows()` rows on (prefill) it dequantizes the layer into a reused
  scratch matrix and runs one dense GEMM (bf16 where the CPU has AVX512-BF16/AMX, else fp32).
  Blocks of kb in {64, 128, 256} sorted rows share a scale, as for int4.
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

import os
import threading
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from camelid.errors import CamelidError
from camelid.formats import awq
from camelid.formats.gptq.pack import default_g_idx, unpack_qweight, unpack_qzeros
from camelid.runtime import cpu_kernels
from camelid.runtime.cpu_features import cpu_features

KERNELS = ("q4x8", "int4", "int8", "dense")  # the order `choose_kernel` tries them in
INT4_GROUP_SIZES = (256, 128, 64, 32)  # largest first: fewer scale rows to read per call
Q4X8_BLOCKS = (256, 128, 64)  # the kernel reads 64 inputs per step
# How far each kernel's output may be from x @ W_dequantized^T, as max|y - ref| / max|ref| with the model
# dtype's rounding on top (bf16: 1e-2). q4x8 rounds activations to int8 per block (<= 0.4% per element).
KERNEL_TOLERANCE = {"q4x8": 2e-2, "int4": 1e-2, "int8": 1e-5, "dense": 1e-5}
DENSE_ROWS_ENV = "CAMELID_Q4X8_DENSE_ROWS"


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


def unpack_awq(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, group_size: int,
               name: str = "layer") -> GPTQWeight:
    """An AutoAWQ GEMM layer as a 4-bit `GPTQWeight` (groups are contiguous: no act order)."""
    q, zeros = awq.unpack_linear(qweight, qzeros, scales, group_size, name)
    g = default_g_idx(q.shape[0], group_size).to(torch.long)
    return GPTQWeight(q=q, zeros=zeros, scales=scales, g=g, perm=None, bits=awq.BITS)


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


def q4x8_block_size(w: GPTQWeight) -> int | None:
    kg = int4_group_size(w)
    return kg if kg in Q4X8_BLOCKS else None


def why_not(kernel: str, w: GPTQWeight, device: torch.device, capability: tuple[int, int] | None = None) -> str | None:
    """None when `kernel` can run this layer on `device`, else the reason it cannot.
    `capability` is the CUDA compute capability (looked up when None)."""
    if kernel == "dense":
        return None
    if kernel == "q4x8":
        if device.type != "cpu":
            return "q4x8 kernel is CPU only"
        if w.bits > 4:
            return f"{w.bits}-bit codes do not fit 4 bits"
        if q4x8_block_size(w) is None:
            return "groups are not a multiple of 64 rows"
        reason = cpu_kernels.unavailable_reason()
        if reason is None and cpu_kernels.load_extension() is None:
            reason = cpu_kernels.build_error()
        return f"C++ kernels unavailable: {reason}" if reason else None
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
    """The selection rule: the first of KERNELS that applies (q4x8 on CPU when its C++ build works, int4,
    int8 on CPU for a single group), else dense.
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


def prepare_q4x8(w: GPTQWeight, device: torch.device) -> dict:
    kb = q4x8_block_size(w)
    n_in, n_out = w.q.shape
    codes = w.q.t().reshape(n_out, n_in // 64, 2, 32)  # [out, chunk, low/high half, 32]
    packed = (codes[:, :, 0] | codes[:, :, 1] << 4).to(torch.uint8).reshape(n_out, n_in // 2)
    s = _rows(w, w.scales.to(torch.float32), kb)  # [in // kb, out]
    sz = s * _rows(w, w.zeros.to(torch.float32), kb)
    return {"weight": packed.contiguous().to(device), "scales": s.t().contiguous().to(device),
            "scaled_zeros": sz.t().contiguous().to(device), "block": kb}


def dense_rows() -> int:
    """Rows from which q4x8 dequantizes the layer and runs a dense GEMM instead of its integer GEMV.
    Measured on a Xeon with AMX (benchmarks/kernels.py): the bf16 route wins from ~48 rows. Without
    native bf16 the fp32 GEMM is slower relative to the integer path, so the switch comes later (an
    estimate, not measured on such a CPU: set CAMELID_Q4X8_DENSE_ROWS to tune)."""
    env = os.environ.get(DENSE_ROWS_ENV)
    if env:
        return int(env)
    return 48 if cpu_features().bf16_gemm else 128


_scratch = threading.local()  # one dense matrix per thread, reused by every layer's prefill


def _scratch_matrix(n_out: int, n_in: int, dtype: torch.dtype) -> torch.Tensor:
    buf = getattr(_scratch, "buf", None)
    if buf is None or buf.dtype != dtype or buf.numel() < n_out * n_in:
        _scratch.buf = buf = None  # free the old one before allocating
        _scratch.buf = buf = torch.empty(n_out * n_in, dtype=dtype)
    return buf[:n_out * n_in].view(n_out, n_in)


@dataclass(frozen=True)
class Q4x8Route:
    """What a q4x8 layer decides once, at load, rather than on every call (a lookup of each cost ~3 us per
    call, 15 calls a token): the compiled module, and from how many rows the dense GEMM runs, in which dtype."""

    ext: object  # the compiled q4x8 extension module
    dense_from: int
    bf16_gemm: bool


def q4x8_route(dense_from: int | None = None) -> Q4x8Route:
    return Q4x8Route(cpu_kernels.load_extension(), dense_from or dense_rows(), cpu_features().bf16_gemm)


def q4x8_mm(x: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor, scaled_zeros: torch.Tensor, block: int,
            route: Q4x8Route) -> torch.Tensor:
    """y = x @ W^T for x [rows, in]; fp32 from the integer path, the GEMM's dtype (bf16 or fp32) from the dense one."""
    if x.shape[0] >= route.dense_from:
        # bf16 activations stay bf16 where the GEMM is native; fp32 models get an exact fp32 GEMM.
        dtype = torch.bfloat16 if x.dtype == torch.bfloat16 and route.bf16_gemm else torch.float32
        w = _scratch_matrix(weight.shape[0], weight.shape[1] * 2, dtype)
        route.ext.q4_dequant(weight, scales, scaled_zeros, block, w)
        return F.linear(x.to(dtype), w)
    return route.ext.q4x8_mm(x.to(torch.float32).contiguous(), weight, scales, scaled_zeros, block)


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
