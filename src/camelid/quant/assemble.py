"""The final checkpoint streamed together from the per-layer files of a finished run."""

from __future__ import annotations

from pathlib import Path

import torch

from camelid.checkpoint.source import Checkpoint
from camelid.checkpoint.writer import TensorSpec, save_sharded
from camelid.dtypes import SAFETENSORS_DTYPES
from camelid.quant.progress import layer_file


def assemble(work: Path, ckpt: Checkpoint, n_layers: int, extra: dict[str, torch.Tensor],
             metadata: dict[str, str], max_shard_size: str) -> None:
    """Stream the per-layer files plus embeddings/norm/head into the final sharded checkpoint."""
    from safetensors import safe_open

    layer_files = [layer_file(work, i) for i in range(n_layers)]
    head = ["model.embed_tokens.weight"]
    tail = ["model.norm.weight"]
    if "lm_head.weight" in ckpt and "lm_head.qweight" not in extra:
        tail.append("lm_head.weight")
    specs = [TensorSpec(n, torch.float16, ckpt.tensors[n].shape) for n in head]
    for f in layer_files:
        with safe_open(f, framework="pt") as sf:
            for k in sf.keys():
                sl = sf.get_slice(k)
                specs.append(TensorSpec(k, SAFETENSORS_DTYPES[sl.get_dtype()], tuple(sl.get_shape())))
    specs += [TensorSpec(n, torch.float16, ckpt.tensors[n].shape) for n in tail]
    specs += [TensorSpec(k, v.dtype, tuple(v.shape)) for k, v in extra.items()]

    def chunks():
        for n in head:
            yield n, ckpt.read(n).to(torch.float16)
        for f in layer_files:
            with safe_open(f, framework="pt") as sf:
                for k in sf.keys():
                    yield k, sf.get_tensor(k)
        for n in tail:
            yield n, ckpt.read(n).to(torch.float16)
        yield from extra.items()

    save_sharded(work, specs, chunks(), max_shard_size=max_shard_size, metadata=metadata)
