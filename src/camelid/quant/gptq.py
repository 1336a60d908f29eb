"""GPTQ for one Linear (Frantar et al. 2022), as implemented in AutoGPTQ's `fasterquant`.

W is [out, in] (a Linear's weight), H = 2/n sum x x^T over the layer's calibration inputs [in, in].
Columns are quantized one at a time in lazy blocks of 128; each column's rounding error is spread over
the not-yet-quantized columns through the upper Cholesky factor of H^-1. RTN is the same grid without
that feedback. Both return integer codes plus the per-group scale/zero/g_idx of the GPTQ format.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from camelid.errors import CamelidError
from camelid.quant.quantizer import dequantize, find_params, max_q, quantize
from camelid.quant.settings import QuantParams


@dataclass
class QuantResult:
    q: torch.Tensor  # int codes [out, in], uint8
    scales: torch.Tensor  # fp32 [groups, out]
    zeros: torch.Tensor  # int [groups, out]
    g_idx: torch.Tensor  # int32 [in]
    row_loss: torch.Tensor  # GPTQ's sum over columns of (w - q)^2 / d^2 / 2, per row (0 for RTN)
    damp: float  # damp_percent actually used (after automatic increases)

    @property
    def loss(self) -> float:
        return float(self.row_loss.sum())

    def split_rows(self, sizes: list[int]) -> list[QuantResult]:
        """Per-Linear results of a GPTQ run on row-stacked Linears that share one input."""
        parts = zip(self.q.split(sizes), self.scales.split(sizes, dim=1), self.zeros.split(sizes, dim=1),
                    self.row_loss.split(sizes), strict=True)
        return [QuantResult(q.contiguous(), s.contiguous(), z.contiguous(), self.g_idx, rl, self.damp)
                for q, s, z, rl in parts]

    def dequantized(self, chunk: int = 1024) -> torch.Tensor:
        """W [out, in] fp32 as a loader computes it from the stored tensors (in column chunks, so
        the gathered scales/zeros never exceed a slice of the matrix)."""
        out = torch.empty(self.q.shape, dtype=torch.float32, device=self.q.device)
        for c in range(0, self.q.shape[1], chunk):
            g = self.g_idx[c:c + chunk].long()
            out[:, c:c + chunk] = self.scales[g].t() * (self.q[:, c:c + chunk].float() - self.zeros[g].t())
        return out


class Hessian:
    """Sum of x x^T over calibration tokens, accumulated in fp32 (inputs upcast, fp32 matmuls).

    X^T X is symmetric, so only the block upper triangle is computed (one matmul per block row of
    `blocks`: (k+1)/2k of the full product's work) and mirrored when the value is read.
    """

    def __init__(self, columns: int, device: torch.device | str = "cpu", blocks: int = 4):
        self.sum = torch.zeros(columns, columns, dtype=torch.float32, device=device)
        self.tokens = 0
        step = -(-columns // blocks)
        self.bounds = [(i, min(i + step, columns)) for i in range(0, columns, step)]

    def add(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).to(self.sum.device, torch.float32)
        for a, b in self.bounds:
            self.sum[a:b, a:].addmm_(x[:, a:b].t(), x[:, a:])
        self.tokens += x.shape[0]

    def _mirror(self, h: torch.Tensor) -> torch.Tensor:
        """Fill the lower off-diagonal blocks from the upper ones, in place, and scale by 2/n."""
        for i, (a, b) in enumerate(self.bounds):
            for c, d in self.bounds[i + 1:]:
                h[c:d, a:b].copy_(h[a:b, c:d].t())
        # Scale is irrelevant to GPTQ (damping is relative to the mean diagonal); 2/n as AutoGPTQ.
        return h.mul_(2.0 / max(self.tokens, 1))

    def value(self) -> torch.Tensor:
        """H = 2/n sum x x^T as a new tensor."""
        return self._mirror(self.sum.clone())

    def take(self) -> torch.Tensor:
        """H computed in the accumulation buffer itself, which this object gives up (no copy: for
        an 11008-wide MLP input one copy is 485 MB)."""
        h, self.sum = self.sum, None
        return self._mirror(h)


def _group_count(columns: int, group_size: int) -> tuple[int, int]:
    gs = columns if group_size == -1 else group_size
    return gs, math.ceil(columns / gs)


def rtn(w: torch.Tensor, params: QuantParams) -> QuantResult:
    """Round-to-nearest on the same per-group grid (the baseline GPTQ improves on)."""
    bits, group_size, sym, mse = params.bits, params.group_size, params.sym, params.mse
    w = w.float()
    rows, columns = w.shape
    gs, ngroups = _group_count(columns, group_size)
    maxq = max_q(bits)
    q = torch.empty(rows, columns, dtype=torch.uint8)
    scales = torch.empty(ngroups, rows)
    zeros = torch.empty(ngroups, rows)
    for g in range(ngroups):
        block = w[:, g * gs:(g + 1) * gs]
        s, z = find_params(block, bits, sym, mse)
        q[:, g * gs:(g + 1) * gs] = quantize(block, s[:, None], z[:, None], maxq).to(torch.uint8)
        scales[g], zeros[g] = s, z
    g_idx = (torch.arange(columns) // gs).to(torch.int32)
    return QuantResult(q, scales, zeros.to(torch.int32), g_idx, torch.zeros(rows), 0.0)


def prepare_hessian(h: torch.Tensor | Hessian, act_order: bool, damp: float, damp_step: float = 0.01,
                    max_damp: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """(dead columns, permutation, Hinv factor in permuted order, damp used) for a Hessian.

    Depends on H alone, so Linears that share an input (k/v/q, up/gate) share one factorization.
    The factor is the upper Cholesky factor U of (H + damp * mean(diag H) * I)^-1 (U^T U = H^-1),
    from one Cholesky of the reversed H and a triangular inverse
    (J H J = L L^T  =>  H^-1 = (J L^-1 J)^T (J L^-1 J)): a third of the work of AutoGPTQ's
    chol -> cholesky_inverse -> chol. When H is not positive definite (small or repetitive
    calibration sets), the damping grows by `damp_step` until it factors, instead of failing.

    A `Hessian` is consumed (its buffer reused); a tensor is copied first. Every step rebinds the
    one local reference, so at most two n x n matrices are alive at a time.
    """
    H = h.take() if isinstance(h, Hessian) else h.clone()
    n = H.shape[0]
    dead = torch.diag(H) == 0  # inputs that are always 0 carry no information; pin them
    H[dead, dead] = 1
    perm = torch.arange(n, device=H.device)
    if act_order:  # columns with the largest input energy first, while there is most room to compensate
        perm = torch.argsort(torch.diag(H), descending=True)
    order = perm.flip(0)  # the permuted H, reversed for the factorization trick above
    H = H[order]
    H = H[:, order]
    mean_diag = torch.mean(torch.diag(H)).item()
    diag = H.diagonal()
    diag += damp * mean_diag
    while True:
        L, info = torch.linalg.cholesky_ex(H)
        if info.item() == 0:
            break
        del L
        if damp >= max_damp:
            raise CamelidError(f"Hessian is not positive definite even with damp {damp:.4f}; "
                               "use more calibration samples")
        new = min(round(damp + damp_step, 6), max_damp)
        diag += (new - damp) * mean_diag
        damp = new
    del H, diag
    inv = torch.eye(n, dtype=L.dtype, device=L.device)
    torch.linalg.solve_triangular(L, inv, upper=False, out=inv)
    del L
    inv = inv.flip(0, 1)
    # checked in row slices: isfinite on the whole matrix allocates most of another copy of it
    if not all(torch.isfinite(inv[r:r + 1024]).all() for r in range(0, n, 1024)):
        raise CamelidError("Hessian inverse is not finite; use more calibration samples or a larger --damp")
    return dead, perm, inv, damp


def inverse_cholesky(h: torch.Tensor, damp: float, damp_step: float = 0.01) -> tuple[torch.Tensor, float]:
    """Upper Cholesky factor of (H + damp)^-1 and the damp used (see `prepare_hessian`)."""
    _, _, factor, used = prepare_hessian(h, False, damp, damp_step)
    return factor, used


def gptq(w: torch.Tensor, h: torch.Tensor | None, params: QuantParams, block_size: int = 128,
         prepared: tuple | None = None, overwrite: bool = False) -> QuantResult:
    """Quantize W [out, in] with Hessian H [in, in] (or its `prepare_hessian` result). Inputs are left
    unchanged, except W with `overwrite` (used as scratch when it is a transposed fp32 buffer).

    Works on W^T so that a column of W is a contiguous row: the per-column rank-1 updates then
    stream through memory instead of striding across it.
    """
    bits, group_size, sym, mse = params.bits, params.group_size, params.sym, params.mse
    act_order, static_groups = params.act_order, params.static_groups
    dead, perm, Hinv, damp_used = prepared or prepare_hessian(h, act_order, params.damp)
    device = Hinv.device
    Wt = w.to(device, torch.float32).t()  # [in, out]
    if not (overwrite and Wt.is_contiguous() and Wt.data_ptr() == w.data_ptr()):
        Wt = Wt.clone()  # unless the caller handed over an fp32 W^T buffer (`overwrite`): one copy less
    columns, rows = Wt.shape
    gs, ngroups = _group_count(columns, group_size)
    maxq = max_q(bits)
    Wt[dead] = 0

    scales = torch.empty(ngroups, rows, device=device)
    zeros = torch.empty(ngroups, rows, device=device)
    if static_groups:  # groups fixed on the original column order, before any permutation
        for g in range(ngroups):
            scales[g], zeros[g] = find_params(Wt[g * gs:(g + 1) * gs].t(), bits, sym, mse)
    if act_order:
        Wt = Wt[perm]
    invperm = torch.argsort(perm)
    # Group of each position in quantization order: static groups follow the original column.
    group_at = (perm // gs) if static_groups else (torch.arange(columns, device=device) // gs)
    group_list = group_at.tolist()

    Qt = torch.empty(columns, rows, dtype=torch.uint8, device=device)
    row_loss = torch.zeros(rows, device=device)
    for i1 in range(0, columns, block_size):
        i2 = min(i1 + block_size, columns)
        W1 = Wt[i1:i2].clone()
        Err1 = torch.empty_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        diag = torch.diag(Hinv1).tolist()
        for i in range(i2 - i1):
            col = i1 + i
            if not static_groups and col % gs == 0:
                # Lazy group grid from the already error-updated columns of this group.
                cols = W1[i:i + gs] if i + gs <= i2 - i1 else torch.cat([W1[i:], Wt[i2:]])[:gs]
                scales[col // gs], zeros[col // gs] = find_params(cols.t(), bits, sym, mse)
            g = group_list[col]
            s, z = scales[g], zeros[g]
            w_col = W1[i]
            q = quantize(w_col, s, z, maxq)
            Qt[col] = q
            err = (w_col - dequantize(q, s, z)).div_(diag[i])
            Err1[i] = err
            # rank-1 update as a k=1 matmul: torch's CPU addr_ is ~50x slower than BLAS gemm here
            W1[i:].addmm_(Hinv1[i, i:, None], err[None], alpha=-1)
        row_loss += (Err1 * Err1).sum(0) / 2  # GPTQ's (w - q)^2 / d^2 / 2, as err = (w - q) / d
        Wt[i2:].addmm_(Hinv[i1:i2, i2:].t(), Err1, alpha=-1)

    Q = Qt[invperm].t()
    g_idx = group_at[invperm].to(torch.int32)
    return QuantResult(Q.cpu().contiguous(), scales.cpu(), zeros.to(torch.int32).cpu(), g_idx.cpu(),
                       row_loss.cpu(), damp_used)
