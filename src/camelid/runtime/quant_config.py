"""Read a GPTQ checkpoint's quantization settings from wherever the ecosystem put them.

Sources, in TGI's order: config.json `quantization_config`, then `quantize_config.json`, then
`quant_config.json`. AutoGPTQ synonyms (`w_bit`, `q_group_size`, `is_marlin_format`) and GPTQModel's
`checkpoint_format`/`format` ("gptq" = v1, zeros stored minus one; "gptq_v2" = zeros as is) are accepted.
What actually gets quantized is decided per layer by the tensors present (`<prefix>.qweight`), so
GPTQModel `dynamic` exclusions and `modules_to_not_convert` need no pattern matching here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from camelid.errors import CheckpointError

CONFIG_FILES = ("quantize_config.json", "quant_config.json")


@dataclass(frozen=True)
class GPTQConfig:
    bits: int
    group_size: int  # -1: one group over all inputs
    desc_act: bool
    sym: bool | None  # None: not stated (the tensors decide; only kernel choice depends on it)
    v1: bool  # "gptq" format: zeros stored minus one
    source: str


def _read_json(path: Path) -> dict:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: invalid JSON ({e})") from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(obj).__name__}")
    return obj


def read_quant_config(model_dir: str | Path) -> GPTQConfig | None:
    """The GPTQ settings of `model_dir`, or None when the model is not quantized."""
    model_dir = Path(model_dir)
    raw, source = None, None
    config_json = model_dir / "config.json"
    if config_json.exists():
        raw = _read_json(config_json).get("quantization_config")
        source = f"{config_json}:quantization_config"
    if raw is None:
        for name in CONFIG_FILES:
            if (model_dir / name).exists():
                raw, source = _read_json(model_dir / name), str(model_dir / name)
                break
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{source}: expected an object of GPTQ settings, got {type(raw).__name__}")
    method = str(raw.get("quant_method", "gptq")).lower()
    if method != "gptq":
        raise CheckpointError(f"{source}: quant_method {method!r} is not supported (camelid runs GPTQ checkpoints)")
    fmt = str(raw.get("checkpoint_format") or raw.get("format") or "gptq").lower()
    if raw.get("is_marlin_format") or fmt == "marlin":
        raise CheckpointError(f"{source}: Marlin-format checkpoints are not supported; use the GPTQ (v1) export")
    if fmt not in ("gptq", "gptq_v2"):
        raise CheckpointError(f"{source}: checkpoint format {fmt!r} is not supported (expected gptq or gptq_v2)")
    bits = raw.get("bits", raw.get("w_bit"))
    group_size = raw.get("group_size", raw.get("q_group_size", -1))
    if bits not in (2, 3, 4, 8):
        raise CheckpointError(f"{source}: bits={bits!r} is not supported (2, 3, 4 or 8)")
    if not isinstance(group_size, int) or (group_size <= 0 and group_size != -1):
        raise CheckpointError(f"{source}: invalid group_size {group_size!r}")
    sym = raw.get("sym")
    return GPTQConfig(bits=bits, group_size=group_size, desc_act=bool(raw.get("desc_act", False)),
                      sym=None if sym is None else bool(sym), v1=fmt == "gptq", source=str(source))
