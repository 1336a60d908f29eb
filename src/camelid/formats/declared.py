"""Where a model folder declares how it is quantized, whatever the method.

TGI's order (`server/text_generation_server/utils/quantization.py`, `_get_quantizer_config`): config.json
`quantization_config` (Transformers, GPTQModel), then `quantize_config.json` (AutoGPTQ, GPTQModel), then
`quant_config.json` (AutoAWQ).
"""

from __future__ import annotations

import os
from pathlib import Path

from camelid.checkpoint.jsonio import read_json
from camelid.errors import CheckpointError

QUANT_CONFIG_FILES = ("quantize_config.json", "quant_config.json")


def _as_block(raw: object, source: str) -> dict:
    if not isinstance(raw, dict):
        raise CheckpointError(f"{source}: the quantization config must be a JSON object, got {type(raw).__name__}")
    return raw


def find_quantization_config(model_dir: str | os.PathLike) -> tuple[dict, str] | None:
    """The raw quantization block of `model_dir` and where it was found (`file` or `file:key`), or None."""
    model_dir = Path(model_dir)
    config_json = model_dir / "config.json"
    if config_json.is_file():
        config = read_json(config_json)
        raw = config.get("quantization_config") if isinstance(config, dict) else None
        if raw is not None:
            source = f"{config_json}:quantization_config"
            return _as_block(raw, source), source
    for name in QUANT_CONFIG_FILES:
        path = model_dir / name
        if path.is_file():
            return _as_block(read_json(path), str(path)), str(path)
    return None
