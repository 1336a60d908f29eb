"""Write sharded safetensors, streaming: a tensor's bytes go to disk as they are produced.

The safetensors library only writes whole dicts held in memory; a shard of several GB would then sit
in RAM. Here the header is written first from the planned names/shapes/dtypes, then each tensor's
bytes are appended (in row chunks if the caller likes), so peak memory is one chunk.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from camelid.checkpoint.jsonio import write_json
from camelid.dtypes import SAFETENSORS_NAMES
from camelid.errors import CheckpointError


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def parse_size(text: str | int) -> int:
    """'5GB' / '500MB' / '2GiB' / 1000 -> bytes (HF's max_shard_size convention: GB = 10**9); positive."""
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 1:
            raise CheckpointError(f"invalid size {text!r}: must be at least 1 byte")
        return text
    s = str(text).strip().upper()
    units = {"GIB": 2**30, "MIB": 2**20, "KIB": 2**10, "GB": 10**9, "MB": 10**6, "KB": 10**3, "B": 1}
    unit = next((u for u in units if s.endswith(u)), "")
    try:
        value = float(s[: len(s) - len(unit)]) * units.get(unit, 1)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 1):  # "infGB", "nanMB", "0", "-5GB"
        raise CheckpointError(f"invalid size {text!r}: use e.g. 5GB, 500MB or a byte count")
    return int(value)


class ShardWriter:
    """One safetensors file, written to `<path>.tmp` and renamed on `close()`.

    Tensors must arrive in the order of `specs`; one tensor may arrive as several row chunks.
    """

    def __init__(self, path: Path, specs: Sequence[TensorSpec], metadata: dict[str, str] | None = None):
        self.path = Path(path)
        self.specs = list(specs)
        header: dict = {"__metadata__": dict(metadata or {"format": "pt"})}
        offset = 0
        for spec in self.specs:
            if spec.dtype not in SAFETENSORS_NAMES:
                raise CheckpointError(f"cannot write tensor {spec.name}: dtype {spec.dtype} unsupported")
            header[spec.name] = {"dtype": SAFETENSORS_NAMES[spec.dtype], "shape": list(spec.shape),
                                 "data_offsets": [offset, offset + spec.nbytes]}
            offset += spec.nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # the format pads the header to 8-byte alignment
        self._tmp = self.path.with_name(self.path.name + ".tmp")
        self._f = open(self._tmp, "wb")
        self._f.write(len(raw).to_bytes(8, "little"))
        self._f.write(raw)
        self._next = 0  # index into specs of the tensor being written
        self._written = 0  # bytes of that tensor written so far

    def write(self, name: str, chunk: torch.Tensor) -> None:
        if self._next >= len(self.specs):
            raise CheckpointError(f"{self.path}: unexpected tensor {name}: all planned tensors already written")
        spec = self.specs[self._next]
        if name != spec.name:
            raise CheckpointError(f"{self.path}: expected tensor {spec.name}, got {name}")
        if chunk.dtype != spec.dtype:
            raise CheckpointError(f"{self.path}: tensor {name} is {chunk.dtype}, planned {spec.dtype}")
        data = chunk.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy()
        if self._written + data.nbytes > spec.nbytes:
            raise CheckpointError(f"{self.path}: tensor {name} has more data than its shape {spec.shape}")
        self._f.write(memoryview(data))
        self._written += data.nbytes
        if self._written == spec.nbytes:
            self._next += 1
            self._written = 0

    def close(self) -> None:
        if self._next != len(self.specs):
            self.abort()
            raise CheckpointError(f"{self.path}: tensor {self.specs[self._next].name} was not fully written")
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        self._f.close()
        self._tmp.unlink(missing_ok=True)


def plan_shards(specs: Sequence[TensorSpec], max_shard_size: int) -> list[list[TensorSpec]]:
    """Greedy split in order; a tensor larger than the limit gets a shard of its own (as HF does)."""
    shards: list[list[TensorSpec]] = [[]]
    size = 0
    for spec in specs:
        if shards[-1] and size + spec.nbytes > max_shard_size:
            shards.append([])
            size = 0
        shards[-1].append(spec)
        size += spec.nbytes
    return shards


def shard_names(n: int, prefix: str = "model") -> list[str]:
    if n == 1:
        return [f"{prefix}.safetensors"]
    return [f"{prefix}-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]


def write_index(out_dir: Path, shards: Sequence[Sequence[TensorSpec]], names: Sequence[str],
                prefix: str = "model") -> None:
    """`<prefix>.safetensors.index.json`, only when there is more than one shard (HF convention)."""
    if len(shards) == 1:
        return
    weight_map = {spec.name: fname for shard, fname in zip(shards, names, strict=True) for spec in shard}
    total = sum(spec.nbytes for shard in shards for spec in shard)
    write_json(out_dir / f"{prefix}.safetensors.index.json",
               {"metadata": {"total_size": total}, "weight_map": weight_map})


def save_sharded(out_dir: Path, specs: Sequence[TensorSpec], chunks: Iterable[tuple[str, torch.Tensor]],
                 max_shard_size: int | str = "5GB", metadata: dict[str, str] | None = None,
                 prefix: str = "model") -> list[Path]:
    """Write `chunks` (name, tensor-or-row-chunk), in `specs` order, as shards plus an index."""
    shards = plan_shards(specs, parse_size(max_shard_size))
    names = shard_names(len(shards), prefix)
    shard_of = {spec.name: i for i, shard in enumerate(shards) for spec in shard}
    writer: ShardWriter | None = None
    current = -1
    try:
        for name, chunk in chunks:
            i = shard_of.get(name)
            if i is None:
                raise CheckpointError(f"{out_dir}: tensor {name} was not planned for this checkpoint")
            if i != current:
                if writer is not None:
                    writer.close()
                if i != current + 1:
                    raise CheckpointError(f"{out_dir}: tensor {name} arrived out of order")
                writer, current = ShardWriter(out_dir / names[i], shards[i], metadata), i
            writer.write(name, chunk)
        if writer is not None:
            writer.close()
            writer = None
        if current != len(shards) - 1:
            raise CheckpointError(f"{out_dir}: fewer tensors produced than planned")
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    write_index(out_dir, shards, names, prefix)
    return [out_dir / n for n in names]

