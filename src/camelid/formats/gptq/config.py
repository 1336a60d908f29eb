"""A GPTQ checkpoint's quantization settings: read from any tool's folder, written as camelid writes them.

Read from wherever `camelid.formats.declared` finds the block. AutoGPTQ synonyms (`w_bit`,
`q_group_size`, `is_marlin_format`), `act_order` for `desc_act`, and GPTQModel's
`checkpoint_format`/`format` ("gptq" = v1, zeros stored minus one; "gptq_v2" = zeros as is) are accepted.
What actually gets quantized is decided per layer by the tensors present (`<prefix>.qweight`), so
GPTQModel `dynamic` exclusions and `modules_to_not_convert` need no pattern matching on read.

Written: quantize_config.json and config.json's `quantization_config` hold the same block, with every
field explicit, since loaders disagree on defaults (AutoGPTQ `BaseQuantizeConfig` defaults desc_act=True
and group_size=-1; GPTQModel and Transformers differ).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from camelid import __version__
from camelid.checkpoint.jsonio import write_json
from camelid.errors import CheckpointError
from camelid.formats.declared import find_quantization_config
from camelid.formats.gptq.pack import SUPPORTED_BITS

FORMATS = ("gptq", "gptq_v2")
QUANTIZER = f"camelid:{__version__}"  # the writer's name in `meta.quantizer` and the weight files' metadata


@dataclass(frozen=True)
class GPTQConfig:
    bits: int
    group_size: int = -1  # -1: one group over all inputs
    desc_act: bool = False  # act order: columns quantized by decreasing Hessian diagonal, g_idx not monotone
    sym: bool | None = True  # None: not stated (the tensors decide; only kernel choice depends on it)
    checkpoint_format: str = "gptq"  # "gptq" (v1: zeros stored minus one) or "gptq_v2"
    damp_percent: float | None = None
    true_sequential: bool | None = None
    static_groups: bool | None = None
    lm_head: bool = False
    model_name_or_path: str | None = None
    # GPTQModel rules {"-:<regex>": {}} for modules left unquantized (see `layout.declare_unquantized`)
    dynamic: dict[str, dict] | None = field(default=None, hash=False)
    # Transformers/optimum's per-block list of the quantized Linears
    modules_in_block_to_quantize: tuple[tuple[str, ...], ...] | None = None
    meta: dict | None = field(default=None, hash=False)  # the quantizer's run record (GPTQModel `meta`)
    source: str = field(default="GPTQ config", compare=False)  # file (and key) it was read from

    def __post_init__(self) -> None:
        if self.modules_in_block_to_quantize is not None:  # JSON lists in, hashable tuples kept
            object.__setattr__(self, "modules_in_block_to_quantize",
                               tuple(tuple(group) for group in self.modules_in_block_to_quantize))
        if self.bits not in SUPPORTED_BITS:
            raise CheckpointError(f"{self.source}: bits={self.bits!r} is not supported (2, 3, 4 or 8)")
        if not isinstance(self.group_size, int) or (self.group_size <= 0 and self.group_size != -1):
            raise CheckpointError(f"{self.source}: invalid group_size {self.group_size!r} (positive, or -1 for one group)")
        if self.checkpoint_format not in FORMATS:
            raise CheckpointError(f"{self.source}: checkpoint format {self.checkpoint_format!r} is not supported "
                                  "(expected gptq or gptq_v2)")

    @property
    def v1(self) -> bool:
        return self.checkpoint_format == "gptq"

    @classmethod
    def from_dict(cls, raw: dict, source: str = "GPTQ config") -> GPTQConfig:
        method = str(raw.get("quant_method", "gptq")).lower()
        if method != "gptq":
            raise CheckpointError(f"{source}: quant_method {method!r} is not supported (camelid runs GPTQ checkpoints)")
        fmt = str(raw.get("checkpoint_format") or raw.get("format") or "gptq").lower()
        if raw.get("is_marlin_format") or fmt == "marlin":
            raise CheckpointError(f"{source}: Marlin-format checkpoints are not supported; use the GPTQ (v1) export")
        sym = raw.get("sym")
        in_block = raw.get("modules_in_block_to_quantize")
        dynamic, meta = raw.get("dynamic"), raw.get("meta")
        return cls(
            bits=raw.get("bits", raw.get("w_bit")),
            group_size=raw.get("group_size", raw.get("q_group_size", -1)),
            desc_act=bool(raw.get("desc_act", raw.get("act_order", False))),
            sym=None if sym is None else bool(sym),
            checkpoint_format=fmt,
            damp_percent=raw.get("damp_percent"),
            true_sequential=raw.get("true_sequential"),
            static_groups=raw.get("static_groups"),
            lm_head=bool(raw.get("lm_head", False)),
            model_name_or_path=raw.get("model_name_or_path"),
            dynamic=dynamic if isinstance(dynamic, dict) else None,
            modules_in_block_to_quantize=in_block if isinstance(in_block, list) else None,
            meta=meta if isinstance(meta, dict) else None,
            source=source,
        )

    def to_dict(self) -> dict:
        """The block as camelid writes it (key order is part of the bytes on disk)."""
        return {
            "bits": self.bits,
            "group_size": self.group_size,
            "desc_act": self.desc_act,
            "sym": self.sym,
            "damp_percent": self.damp_percent,
            "true_sequential": self.true_sequential,
            "static_groups": self.static_groups,
            "lm_head": self.lm_head,
            "model_name_or_path": self.model_name_or_path,
            "model_file_base_name": "model",
            "quant_method": "gptq",
            "checkpoint_format": self.checkpoint_format,
            "format": self.checkpoint_format,
            "pack_dtype": "int32",
            "dynamic": self.dynamic,
            "modules_in_block_to_quantize": None if self.modules_in_block_to_quantize is None else
            [list(group) for group in self.modules_in_block_to_quantize],
            "meta": self.meta,
        }

    def safetensors_metadata(self) -> dict[str, str]:
        """The `__metadata__` of the weight files (AutoGPTQ's `gptq_*` keys)."""
        return {"format": "pt", "quantizer": QUANTIZER, "gptq_bits": str(self.bits),
                "gptq_group_size": str(self.group_size), "gptq_desc_act": str(self.desc_act),
                "gptq_damp_percent": str(self.damp_percent)}


def read_config(model_dir: str | os.PathLike) -> GPTQConfig | None:
    """The GPTQ settings of `model_dir`, or None when the model is not quantized."""
    found = find_quantization_config(model_dir)
    return None if found is None else GPTQConfig.from_dict(*found)


def write_config(folder: str | os.PathLike, model_config: dict, qcfg: GPTQConfig) -> None:
    """quantize_config.json and config.json (the model's, in fp16, with the same `quantization_config`)."""
    folder = Path(folder)
    block = qcfg.to_dict()
    write_json(folder / "quantize_config.json", block)
    config = {k: v for k, v in model_config.items() if k != "torch_dtype"}
    config.update({"dtype": "float16", "torch_dtype": "float16", "quantization_config": block})
    write_json(folder / "config.json", config)
