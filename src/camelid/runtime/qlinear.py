"""`GPTQLinear`: an nn.Linear replacement that runs a GPTQ layer through one of `kernels`' matmuls."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from camelid.runtime import kernels as K
from camelid.runtime.hugepages import huge_page_copy


class GPTQLinear(nn.Module):
    """y = x @ W^T + b for a GPTQ weight stored in `kernel`'s layout (converted once, at construction).

    The input is cast to the kernel's activation dtype (bf16 for int4) and the output back to the
    input's dtype, so the module drops into a model of any dtype; run the model in bf16 to make the casts
    no-ops.
    """

    def __init__(self, w: K.GPTQWeight, kernel: str, device: torch.device, dtype: torch.dtype,
                 bias: torch.Tensor | None = None):
        super().__init__()
        self.in_features, self.out_features, self.bits, self.kernel = w.in_features, w.out_features, w.bits, kernel
        self.group_size = 0
        if kernel == "q4x8":
            p = K.prepare_q4x8(w, device)
            self.group_size = p["block"]
            self.register_buffer("scales", p["scales"])
            self.register_buffer("scaled_zeros", p["scaled_zeros"])
            self.route = K.q4x8_route()
            self.compute_dtype = dtype
        elif kernel == "int4":
            p = K.prepare_int4(w, device)
            self.group_size = p["group_size"]
            self.register_buffer("scales_and_zeros", p["scales_and_zeros"])
            self.compute_dtype = torch.bfloat16
        elif kernel == "int8":
            p = K.prepare_int8(w, device, dtype)
            self.register_buffer("scales", p["scales"])
            self.register_buffer("zero_correction", p["zero_correction"])
            self.compute_dtype = dtype
        elif kernel == "dense":
            p = K.prepare_dense(w, device, dtype)
            self.compute_dtype = dtype
        else:
            raise ValueError(f"unknown kernel {kernel!r}")
        # The packed weight is what every decode step streams from memory: on huge pages where the OS allows.
        self.register_buffer("weight_packed", huge_page_copy(p["weight"]))
        # Dense weights carry the checkpoint's input order; the packed ones are sorted by group.
        perm = w.perm if kernel != "dense" else None
        self.register_buffer("perm", None if perm is None else perm.to(device))
        self.register_buffer("bias", None if bias is None else bias.to(device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out_dtype = x.dtype
        shape = x.shape
        x = x.reshape(-1, self.in_features)
        if x.dtype != self.compute_dtype:
            x = x.to(self.compute_dtype)
        if self.perm is not None:
            x = x.index_select(1, self.perm)
        kernel = self.kernel
        if kernel == "q4x8":
            y = K.q4x8_mm(x, self.weight_packed, self.scales, self.scaled_zeros, self.group_size, self.route)
        elif kernel == "int4":
            y = K.int4_mm(x.contiguous(), self.weight_packed, self.group_size, self.scales_and_zeros)
        elif kernel == "int8":
            y = torch._weight_int8pack_mm(x.contiguous(), self.weight_packed, self.scales)
            if self.zero_correction is not None:
                y = y + x.sum(dim=1, keepdim=True, dtype=torch.float32) * self.zero_correction
        else:
            y = F.linear(x, self.weight_packed)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        if y.dtype != out_dtype:
            y = y.to(out_dtype)
        return y.reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, "
                f"kernel={self.kernel}, act_order={self.perm is not None}")
