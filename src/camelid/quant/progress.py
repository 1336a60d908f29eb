"""Resumable state of a quantization run in OUT.partial: per-layer tensor files, the hidden states after
the last finished layer, and progress.json with the quant_log rows so far, keyed by a fingerprint of
the settings and the calibration data so that a rerun with other settings cannot mix two runs."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from camelid.checkpoint.jsonio import write_json
from camelid.checkpoint.source import Checkpoint
from camelid.checkpoint.writer import ShardWriter, TensorSpec
from camelid.errors import CamelidError
from camelid.quant.settings import QuantParams

STATE = "state"
LAYERS = "layers"


def layer_file(work: Path, i: int) -> Path:
    return work / LAYERS / f"layer-{i:05d}.safetensors"


def write_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None,
                  rows_per_chunk: int | None = None) -> None:
    """Atomic single-file safetensors, streamed (row chunks for the big activation buffer)."""
    specs = [TensorSpec(k, v.dtype, tuple(v.shape)) for k, v in tensors.items()]
    w = ShardWriter(path, specs, metadata)
    try:
        for k, v in tensors.items():
            step = rows_per_chunk or max(v.shape[0] if v.dim() else 1, 1)
            for r in range(0, v.shape[0], step) if v.dim() else [0]:
                w.write(k, v[r:r + step] if v.dim() else v)
        w.close()
    except BaseException:
        w.abort()
        raise


def run_fingerprint(p: QuantParams, ids: torch.Tensor | None, ckpt: Checkpoint, extra: str = "") -> str:
    h = hashlib.sha256(json.dumps(p.as_dict(), sort_keys=True).encode() + extra.encode())
    h.update(json.dumps(ckpt.config, sort_keys=True).encode())
    h.update(ckpt.fingerprint().encode())  # the weights themselves: another model is refused, not merged
    if ids is not None:
        h.update(ids.to(torch.int64).numpy().tobytes())
    return h.hexdigest()


def load_progress(work: Path, fingerprint: str) -> dict:
    path = work / STATE / "progress.json"
    if not path.is_file():
        return {"fingerprint": fingerprint, "layers_done": 0, "log": []}
    progress = json.loads(path.read_text())
    if progress.get("fingerprint") != fingerprint:
        raise CamelidError(f"{work} holds an unfinished run with other settings or calibration data; "
                           "rerun with the same settings to resume, or delete that folder to start over")
    return progress


def save_progress(work: Path, progress: dict, hidden: torch.Tensor | None, layer: int) -> None:
    state = work / STATE
    if hidden is not None:
        write_tensors(state / f"hidden-{layer:05d}.safetensors", {"hidden": hidden}, {"layer": str(layer)},
                      rows_per_chunk=1)
    write_json(state / "progress.json", progress)
    for old in state.glob("hidden-*.safetensors"):
        if old.name != f"hidden-{layer:05d}.safetensors":
            old.unlink()


def load_hidden(work: Path, layer: int, into: torch.Tensor) -> None:
    from safetensors import safe_open

    with safe_open(work / STATE / f"hidden-{layer:05d}.safetensors", framework="pt") as f:
        sl = f.get_slice("hidden")
        for r in range(into.shape[0]):
            into[r] = sl[r:r + 1][0]
