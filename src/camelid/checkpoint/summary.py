"""`info(model)`: what a model folder holds, from its headers and JSON files only (no weights read)."""

from __future__ import annotations

import math
import os
from collections import Counter
from pathlib import Path

from camelid.checkpoint.jsonio import read_json
from camelid.checkpoint.output import TOKENIZER_FILES
from camelid.checkpoint.source import open_checkpoint
from camelid.dtypes import dtype_name
from camelid.formats.declared import find_quantization_config

_CONFIG_KEYS = (
    "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
    "vocab_size", "max_position_embeddings", "rope_theta", "tie_word_embeddings", "torch_dtype", "dtype",
)


def _tokenizer(model_dir: Path) -> dict | None:
    files = [n for n in TOKENIZER_FILES if (model_dir / n).is_file()]
    if not files:
        return None
    tok = read_json(model_dir / "tokenizer_config.json") if "tokenizer_config.json" in files else {}
    special = {k: tok[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token") if isinstance(tok.get(k), str)}
    return {
        "class": tok.get("tokenizer_class"),
        "files": files,
        "special_tokens": special,
        "chat_template": bool(tok.get("chat_template")) or (model_dir / "chat_template.jinja").is_file(),
    }


def _parameter_count(tensors, quant: dict | None) -> int:
    # A GPTQ qweight packs 32/bits weights per int32; qzeros/scales/g_idx are not parameters.
    bits = quant.get("bits") if quant else None
    total = 0
    for t in tensors:
        n = math.prod(t.shape)
        if bits and t.name.endswith(".qweight"):
            total += n * 32 // int(bits)
        elif not (bits and t.name.endswith((".qzeros", ".scales", ".g_idx"))):
            total += n
    return total


def info(model: str | os.PathLike, revision: str | None = None) -> dict:
    """Architecture, parameter count, dtypes, size on disk, tokenizer and quantization config of a model."""
    ckpt = open_checkpoint(model, revision)
    config = ckpt.config
    found = find_quantization_config(ckpt.dir)
    quant = found[0] if found else None
    files = [p for p in ckpt.dir.iterdir() if p.is_file()]
    weight_files = sorted({t.file for t in ckpt.tensors.values()})
    dtypes = Counter()
    for t in ckpt.tensors.values():
        dtypes[dtype_name(t.dtype)] += math.prod(t.shape)
    return {
        "path": str(ckpt.dir),
        "architecture": (config.get("architectures") or [None])[0],
        "model_type": config.get("model_type"),
        "parameters": _parameter_count(ckpt.tensors.values(), quant),
        "tensors": len(ckpt.tensors),
        "dtypes": dict(dtypes.most_common()),
        "format": "safetensors" if all(f.suffix == ".safetensors" for f in weight_files) else "pytorch_bin",
        "weight_files": [f.name for f in weight_files],
        "size_on_disk": sum(p.stat().st_size for p in files),
        "config": {k: config[k] for k in _CONFIG_KEYS if k in config},
        "tokenizer": _tokenizer(ckpt.dir),
        "quantization": quant,
    }
