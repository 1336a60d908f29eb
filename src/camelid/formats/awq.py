"""The AutoAWQ "GEMM" checkpoint, owned here alone: its config, bit packing, one Linear's tensors, and
the reference math.

Per quantized Linear (AutoAWQ `awq/modules/linear/gemm.py` `WQLinear_GEMM.from_linear`), 4-bit only:
  qweight int32 [in, out // 8]   packed along the *output* dim (GPTQ packs along the input dim)
  qzeros  int32 [in // g, out // 8], packed the same way, zeros stored as is (0..15; GPTQ v1 stores z - 1)
  scales  fp16  [in // g, out]
Within each int32, nibble i (bits 4i..4i+3) holds output column 8c + AWQ_ORDER[i]; unpacking shifts by
0, 4, ..., 28 and reorders with AWQ_REVERSE_ORDER (`awq/utils/packing_utils.py`). The weight is
W^T[i, o] = (q[i, o] - z[i // g, o]) * s[i // g, o] (`dequantize_gemm`), the same affine math as GPTQ,
so camelid runs it on the same kernels (`camelid.runtime.kernels.unpack_awq`).

Config: config.json `quantization_config` as AutoAWQ writes it (`awq/models/_config.py`
`to_transformers_dict`): quant_method "awq", version "gemm", bits, group_size, zero_point,
modules_to_not_convert. Those are what Transformers' `AwqConfig` and vLLM's `awq` / `awq_marlin` read
(vLLM `quantization/awq.py` `from_config` also accepts AutoAWQ's internal `w_bit` / `q_group_size`, as
does the reader here, and falls back to quant_config.json, which AutoAWQ 0.1.x wrote beside it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from camelid.checkpoint.jsonio import write_json
from camelid.errors import CheckpointError
from camelid.formats.declared import find_quantization_config
from camelid.formats.skipped import by_layer_suffix

BITS = 4
PACK = 32 // BITS  # values per int32
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # nibble i holds column AWQ_ORDER[i] of each run of 8
AWQ_REVERSE_ORDER = (0, 4, 1, 5, 2, 6, 3, 7)  # column j is in nibble AWQ_REVERSE_ORDER[j]
# Versions whose checkpoint is the GEMM layout: Transformers' "exllama" and "ipex" are runtime backends
# for GEMM checkpoints (`utils/quantization_config.py` AwqConfig). GEMV, gemv_fast and marlin are other layouts.
GEMM_VERSIONS = ("gemm", "exllama", "ipex")


@dataclass(frozen=True)
class AWQConfig:
    group_size: int = 128
    bits: int = BITS
    zero_point: bool = True
    version: str = "gemm"
    modules_to_not_convert: tuple[str, ...] | None = None  # Linears left fp16 (names or name suffixes)
    source: str = field(default="AWQ config", compare=False)  # file (and key) it was read from

    def __post_init__(self) -> None:
        if self.modules_to_not_convert is not None:
            object.__setattr__(self, "modules_to_not_convert", tuple(self.modules_to_not_convert))
        if self.bits != BITS:
            raise CheckpointError(f"{self.source}: AWQ GEMM checkpoints are 4-bit; bits={self.bits!r}")
        if not isinstance(self.group_size, int) or self.group_size <= 0:
            raise CheckpointError(f"{self.source}: invalid AWQ group_size {self.group_size!r} (must be positive)")
        if self.version not in GEMM_VERSIONS:
            raise CheckpointError(f"{self.source}: AWQ version {self.version!r} is not supported "
                                  f"(camelid reads the GEMM layout: {', '.join(GEMM_VERSIONS)})")
        if not self.zero_point:  # AutoAWQ's GEMM `from_linear` asserts zeros are given
            raise CheckpointError(f"{self.source}: AWQ GEMM without zero point is not a layout any AWQ tool writes")

    @classmethod
    def from_dict(cls, raw: dict, source: str = "AWQ config") -> AWQConfig:
        method = str(raw.get("quant_method", "awq")).lower()
        if method != "awq":
            raise CheckpointError(f"{source}: quant_method {method!r} is not AWQ")
        skip = raw.get("modules_to_not_convert")
        if skip is not None and not (isinstance(skip, list) and all(isinstance(s, str) for s in skip)):
            raise CheckpointError(f"{source}: modules_to_not_convert must be a list of names, got {skip!r}")
        return cls(group_size=raw.get("group_size", raw.get("q_group_size", 128)),
                   bits=raw.get("bits", raw.get("w_bit", BITS)),
                   zero_point=bool(raw.get("zero_point", True)),
                   version=str(raw.get("version", "gemm")).lower(),
                   modules_to_not_convert=skip, source=source)

    def to_dict(self) -> dict:
        """The block as AutoAWQ writes it, key for key (key order is part of the bytes on disk)."""
        return {"quant_method": "awq", "zero_point": self.zero_point, "group_size": self.group_size,
                "bits": self.bits, "version": self.version,
                "modules_to_not_convert": None if self.modules_to_not_convert is None
                else list(self.modules_to_not_convert)}


def is_awq(raw: dict) -> bool:
    """Whether a quantization block (from `find_quantization_config`) declares AWQ. AutoAWQ 0.1.x's
    quant_config.json has no quant_method, only its internal names."""
    method = raw.get("quant_method")
    if method is not None:
        return str(method).lower() == "awq"
    return "w_bit" in raw and "zero_point" in raw and "desc_act" not in raw


def read_config(model_dir: str | os.PathLike) -> AWQConfig | None:
    """The AWQ settings of `model_dir`, or None when it is not an AWQ checkpoint."""
    found = find_quantization_config(model_dir)
    return AWQConfig.from_dict(*found) if found is not None and is_awq(found[0]) else None


def write_config(folder: str | os.PathLike, model_config: dict, qcfg: AWQConfig) -> None:
    """config.json: the model's, in fp16 (the dtype of scales and unquantized weights), with the block."""
    config = {k: v for k, v in model_config.items() if k not in ("torch_dtype", "quantization_config")}
    config.update({"dtype": "float16", "torch_dtype": "float16", "quantization_config": qcfg.to_dict()})
    write_json(Path(folder) / "config.json", config)


def packable(in_features: int, out_features: int, group_size: int) -> bool:
    """AutoAWQ's GEMM preconditions: whole groups along the input, whole int32s along the output."""
    return in_features % group_size == 0 and out_features % PACK == 0


def pack_columns(values: torch.Tensor) -> torch.Tensor:
    """Integers in [0, 16) [rows, out] -> int32 [rows, out // 8] in AWQ's interleaved nibble order."""
    rows, out = values.shape
    if out % PACK:
        raise ValueError(f"cannot pack {out} columns: AWQ packs 8 per int32")
    v = values.to(torch.int64).view(rows, out // PACK, PACK)[..., list(AWQ_ORDER)]
    shifts = torch.arange(0, 32, BITS, dtype=torch.int64)
    words = (v << shifts).sum(dim=-1)
    # int64 -> int32 keeping the bit pattern (words above 2**31 become negative, as in the format)
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def unpack_columns(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of `pack_columns`: int32 [rows, out // 8] -> int32 [rows, out] in [0, 16)."""
    rows, words = packed.shape
    shifts = torch.arange(0, 32, BITS, dtype=torch.int32)
    nibbles = (packed.to(torch.int32).unsqueeze(-1) >> shifts) & 0xF  # the mask drops >>'s sign extension
    return nibbles[..., list(AWQ_REVERSE_ORDER)].reshape(rows, words * PACK)


def pack_linear(prefix: str, q: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor) -> dict[str, torch.Tensor]:
    """Tensors of one quantized Linear under `prefix` from codes q [out, in] and scales / zero-points
    [groups, out] (the orientation `camelid.quant` produces)."""
    return {
        f"{prefix}.qweight": pack_columns(q.t()),
        f"{prefix}.qzeros": pack_columns(zeros.to(torch.int32)),
        f"{prefix}.scales": scales.to(torch.float16).contiguous(),
    }


def unpack_linear(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, group_size: int,
                  name: str = "layer") -> tuple[torch.Tensor, torch.Tensor]:
    """Codes q [in, out] and zeros [groups, out] of one Linear, after checking the shapes agree."""
    q, zeros = unpack_columns(qweight), unpack_columns(qzeros)
    n_in, n_out = q.shape
    if n_in % group_size or zeros.shape != (n_in // group_size, n_out) or tuple(scales.shape) != zeros.shape:
        raise CheckpointError(f"{name}: AWQ qweight -> [{n_in}, {n_out}], qzeros -> {list(zeros.shape)} and scales "
                              f"{list(scales.shape)} do not fit group_size {group_size}")
    return q, zeros


def dequantize(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, group_size: int) -> torch.Tensor:
    """Dense W^T [in, out] in fp32: (q - z) * s per group of input rows. The reference math."""
    q, zeros = unpack_linear(qweight, qzeros, scales, group_size)
    g = torch.arange(q.shape[0]) // group_size
    return (q.to(torch.float32) - zeros.to(torch.float32)[g]) * scales.to(torch.float32)[g]


def not_converted(skipped: list[str], layers: int, quantized: list[str]) -> tuple[str, ...] | None:
    """`modules_to_not_convert` for the `skipped` Linears: a suffix when a Linear is skipped in every
    one of the `layers` decoder layers, else the full name. vLLM matches these as substrings
    (`awq.py` `is_layer_skipped_awq`) and Transformers as prefixes or suffixes
    (`quantizers/quantizers_utils.py` `should_convert_module`), so an entry that also matches a
    `quantized` Linear as a substring (a name that is the start of another's) is refused rather than written."""
    names = [name for name, _ in by_layer_suffix(skipped, layers)]
    clash = [(n, q) for n in names for q in quantized if n in q]
    if clash:
        raise CheckpointError(f"cannot declare {clash[0][0]} unquantized: vLLM would also leave {clash[0][1]} "
                              "unquantized (modules_to_not_convert is matched as a substring)")
    return tuple(names) or None
