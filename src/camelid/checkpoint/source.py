"""Open a model folder (local path or Hub repo id) and read its tensors lazily, one at a time.

Reads go through short-lived file handles rather than one long-lived mmap: a mapping that stays
open keeps every page it touched in the process' RSS, so streaming a 30 GB model through one would
look (and, under memory pressure, behave) like loading it whole.

Safetensors folders are opened and read without torch (`read_float32` gives numpy arrays): GGUF export
needs nothing else, and importing torch alone costs ~225 MB of resident memory. `.bin` shards are
pickles that only torch can read safely (`torch.load(weights_only=True)`).
"""

from __future__ import annotations

import json
import math
import os
import pickle
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from camelid.checkpoint.jsonio import read_json
from camelid.dtypes import SAFETENSORS_CODES, SAFETENSORS_FLOATS
from camelid.errors import CheckpointError

if TYPE_CHECKING:
    import torch

SAFE_INDEX = "model.safetensors.index.json"
BIN_INDEX = "pytorch_model.bin.index.json"
RELEASE_INDEX = "release.json"  # marks a local release folder (see camelid.release)


def release_branch_dir(release: Path, revision: str | None) -> Path:
    """A local release (camelid.release: `release.json` plus one folder per branch) at `revision`,
    `main` by default as on the Hub."""
    branches = sorted(p.name for p in release.iterdir() if (p / "config.json").is_file())
    branch = revision or "main"
    if branch not in branches:
        raise CheckpointError(f"revision {branch!r} not found in local release {release}; "
                              f"branches: {', '.join(branches) or 'none'}")
    return release / branch


def resolve_model_dir(path_or_repo: str | os.PathLike, revision: str | None = None) -> Path:
    """A local folder as is; otherwise a Hub repo id downloaded (or found in the cache) at `revision`.

    `revision` is a branch, tag or commit: GPTQ repos publish one branch per parameter set. A local
    release folder (one subfolder per branch) resolves `revision` the same way.
    """
    path = Path(path_or_repo).expanduser()
    if path.is_dir():
        if (path / RELEASE_INDEX).is_file() and not (path / "config.json").is_file():
            return release_branch_dir(path, revision)
        if revision is not None:
            raise CheckpointError(f"--revision {revision!r} applies to Hub repos, but {path} is a local folder")
        return path
    if path.exists():
        raise CheckpointError(f"{path} is a file; expected a model folder")
    repo_id = str(path_or_repo)
    if repo_id.count("/") != 1 or repo_id.startswith((".", "/", "~")):
        raise CheckpointError(f"model folder not found: {path}")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        return Path(snapshot_download(repo_id, revision=revision))
    except RevisionNotFoundError as e:
        raise CheckpointError(f"revision {revision!r} not found in Hub repo {repo_id}") from e
    except RepositoryNotFoundError as e:
        raise CheckpointError(f"Hub repo {repo_id} not found (or it is private: log in with `hf auth login`)") from e
    except LocalEntryNotFoundError as e:
        raise CheckpointError(
            f"cannot reach the Hugging Face Hub to download {repo_id}"
            f"{'@' + revision if revision else ''}, and it is not in the local cache. "
            "Download it on a connected machine or pass a local folder."
        ) from e
    except (HfHubHTTPError, OSError) as e:
        raise CheckpointError(f"downloading {repo_id}{'@' + revision if revision else ''} failed: {e}") from e


@dataclass(frozen=True)
class TensorInfo:
    name: str
    code: str  # the safetensors dtype code ("F16", "BF16", "I32", ...; camelid.dtypes.SAFETENSORS_CODES)
    shape: tuple[int, ...]
    file: Path
    offset: int | None = None  # where the data starts in a safetensors file (None for .bin)

    @property
    def dtype(self) -> torch.dtype:
        from camelid.dtypes import SAFETENSORS_DTYPES

        return SAFETENSORS_DTYPES[self.code]

    @property
    def is_float(self) -> bool:
        return self.code in SAFETENSORS_FLOATS

    @property
    def itemsize(self) -> int:
        return SAFETENSORS_CODES[self.code][1]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.itemsize


def _is_ints(value: object, length: int | None = None) -> bool:
    return (isinstance(value, list) and (length is None or len(value) == length)
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value))


def _safetensors_infos(file: Path) -> dict[str, TensorInfo]:
    # Parse the header ourselves (8-byte length + JSON) to learn names/shapes without mapping data,
    # and check the offsets against the file size so a truncated download is named up front.
    try:
        size = file.stat().st_size
        with open(file, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{file}: truncated safetensors file (no header)")
            n = int.from_bytes(head, "little")
            if n <= 0 or 8 + n > size:
                raise CheckpointError(f"{file}: corrupt or truncated safetensors header")
            header = json.loads(f.read(n))
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{file}: corrupt safetensors header ({e})") from e
    except FileNotFoundError as e:
        raise CheckpointError(f"missing weight file {file}") from e
    if not isinstance(header, dict):
        raise CheckpointError(f"{file}: corrupt safetensors header (a JSON {type(header).__name__}, not an object)")
    header.pop("__metadata__", None)
    end = 0
    infos = {}
    for name, meta in header.items():
        if not isinstance(meta, dict) or not _is_ints(meta.get("shape")) or not _is_ints(meta.get("data_offsets"), 2):
            raise CheckpointError(f"{file}: corrupt safetensors header entry for tensor {name} "
                                  "(shape and data_offsets must be lists of non-negative integers)")
        if meta.get("dtype") not in SAFETENSORS_CODES:
            raise CheckpointError(f"{file}: tensor {name} has unsupported dtype {meta.get('dtype')}")
        begin, stop = meta["data_offsets"]
        info = TensorInfo(name, meta["dtype"], tuple(meta["shape"]), file, 8 + n + begin)
        if stop - begin != info.nbytes or begin < 0:
            raise CheckpointError(f"{file}: corrupt safetensors header: tensor {name} has {stop - begin} bytes "
                                  f"for shape {list(info.shape)} ({info.nbytes} expected)")
        infos[name] = info
        end = max(end, stop)
    if 8 + n + end != size:
        raise CheckpointError(
            f"{file}: truncated or corrupt safetensors file (header expects {8 + n + end} bytes, file has {size})"
        )
    return infos


def _load_bin(file: Path) -> dict[str, torch.Tensor]:
    """Load a PyTorch .bin shard without ever running pickled code: plain tensors only."""
    import torch

    try:
        # mmap needs the zip format (torch >= 1.6); older legacy files are read whole, as Transformers does
        zipped = zipfile.is_zipfile(file)
        obj = torch.load(file, map_location="cpu", weights_only=True, mmap=zipped)
    except FileNotFoundError as e:
        raise CheckpointError(f"missing weight file {file}") from e
    except (pickle.UnpicklingError, RuntimeError, zipfile.BadZipFile, EOFError, ValueError) as e:
        raise CheckpointError(
            f"{file}: refused to load: not a plain PyTorch tensor file ({str(e).splitlines()[0]})"
        ) from e
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise CheckpointError(f"{file}: refused to load: expected a dict of name -> tensor, got {type(obj).__name__}")
    return obj


def _weight_files(model_dir: Path) -> list[Path]:
    for index_name in (SAFE_INDEX, BIN_INDEX):
        index = model_dir / index_name
        if index.exists():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (ValueError, KeyError) as e:
                raise CheckpointError(f"{index}: corrupt index ({e})") from e
            return [model_dir / f for f in dict.fromkeys(weight_map.values())]
    files = sorted(model_dir.glob("*.safetensors")) or sorted(model_dir.glob("pytorch_model*.bin"))
    if not files:
        raise CheckpointError(f"{model_dir}: no weights found (*.safetensors or pytorch_model*.bin)")
    return files


def _read_rows(info: TensorInfo, rows: slice | None) -> tuple[np.ndarray, tuple[int, ...]]:
    """The bytes of rows of a safetensors tensor straight from the file into a new buffer (one copy, no
    mapping), and the shape of those rows."""
    shape = list(info.shape)
    start = 0
    if rows is not None:
        if not shape:
            raise CheckpointError(f"{info.file}: tensor {info.name} is a scalar; it has no rows")
        start, stop, step = rows.indices(shape[0])
        if step != 1:
            raise CheckpointError(f"reading every {step}th row of {info.name} is not supported")
        shape[0] = max(0, stop - start)
    buf = np.empty(math.prod(shape) * info.itemsize, dtype=np.uint8)
    try:
        with open(info.file, "rb") as f:
            f.seek(info.offset + start * (info.nbytes // info.shape[0] if info.shape and info.shape[0] else 0))
            got = f.readinto(memoryview(buf))
    except FileNotFoundError as e:
        raise CheckpointError(f"missing weight file {info.file}") from e
    if got != buf.nbytes:
        raise CheckpointError(f"{info.file}: truncated while reading tensor {info.name}")
    return buf, tuple(shape)


def _float32(buf: np.ndarray, code: str) -> np.ndarray:
    """Raw little-endian values of safetensors type `code` -> float32 (exact for F16, BF16 and F32)."""
    if code == "BF16":  # bfloat16 is the top half of a float32
        return (buf.view("<u2").astype(np.uint32) << 16).view(np.float32)
    if code in ("F16", "F32", "F64"):
        return buf.view({"F16": "<f2", "F32": "<f4", "F64": "<f8"}[code]).astype(np.float32)
    raise CheckpointError(f"tensors of type {code} cannot be read as float32 without torch")


class Checkpoint:
    """A model folder: its config and a name -> TensorInfo map; tensors are read on demand."""

    def __init__(self, model_dir: str | os.PathLike):
        self.dir = model_dir = Path(model_dir)
        config = model_dir / "config.json"
        if not config.is_file():
            raise CheckpointError(f"{model_dir}: missing config.json")
        self.config: dict = read_json(config)
        if not isinstance(self.config, dict):
            raise CheckpointError(f"{config}: expected a JSON object, got {type(self.config).__name__}")
        self.tensors: dict[str, TensorInfo] = {}
        for file in _weight_files(model_dir):
            if file.suffix == ".safetensors":
                infos = _safetensors_infos(file)
            else:
                infos = {k: TensorInfo(k, _code(v.dtype, file, k), tuple(v.shape), file) for k, v in _load_bin(file).items()}
            for name in infos:
                if name in self.tensors:
                    raise CheckpointError(f"tensor {name} appears in both {self.tensors[name].file} and {file}")
            self.tensors.update(infos)
        self._bin_cache: tuple[Path, dict[str, torch.Tensor]] | None = None

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())

    def read(self, name: str, rows: slice | None = None) -> torch.Tensor:
        """Tensor `name` (or rows `rows` of it along dim 0), as a fresh tensor owned by the caller."""
        info = self._info(name)
        if info.offset is None:
            return self._read_bin(info, rows).clone()
        import torch

        buf, shape = _read_rows(info, rows)
        return torch.from_numpy(buf).view(info.dtype).reshape(shape)

    def read_float32(self, name: str, rows: slice | None = None) -> np.ndarray:
        """Like `read`, as a float32 numpy array; torch is not imported for a safetensors file."""
        info = self._info(name)
        if info.offset is None:
            import torch

            return self._read_bin(info, rows).to(torch.float32, copy=True).numpy()
        buf, shape = _read_rows(info, rows)
        return _float32(buf, info.code).reshape(shape)

    def _info(self, name: str) -> TensorInfo:
        try:
            return self.tensors[name]
        except KeyError:
            raise CheckpointError(f"{self.dir}: no tensor named {name}") from None

    def _read_bin(self, info: TensorInfo, rows: slice | None) -> torch.Tensor:
        if self._bin_cache is None or self._bin_cache[0] != info.file:
            self._bin_cache = (info.file, _load_bin(info.file))
        t = self._bin_cache[1][info.name]
        return t if rows is None else t[rows]

    def fingerprint(self, samples: int = 16, sample_bytes: int = 1 << 16) -> str:
        """Identity of the weights, cheap whatever their size: the folder's SHA256SUMS.json when it has one,
        else each weight file's size, header and `samples` evenly spread slices of its bytes (two fine-tunes
        of one base have identical safetensors headers, so the data must be sampled too)."""
        import hashlib

        from camelid.checkpoint.output import MANIFEST

        h = hashlib.sha256()
        if (self.dir / MANIFEST).is_file():
            h.update((self.dir / MANIFEST).read_bytes())
            return h.hexdigest()
        for file in sorted({t.file for t in self.tensors.values()}):
            size = file.stat().st_size
            h.update(f"{file.name}:{size}".encode())
            with open(file, "rb") as f:
                for k in range(samples + 1):  # sample 0 starts at byte 0: the header
                    f.seek(max(0, min(size - sample_bytes, k * size // samples)))
                    h.update(f.read(sample_bytes))
        return h.hexdigest()

    def iter_tensors(self, names: Iterable[str] | None = None) -> Iterator[tuple[str, torch.Tensor]]:
        for name in self.tensors if names is None else names:
            yield name, self.read(name)


def _code(dtype: torch.dtype, file: Path, name: str) -> str:
    from camelid.dtypes import SAFETENSORS_NAMES

    if dtype not in SAFETENSORS_NAMES:
        raise CheckpointError(f"{file}: tensor {name} has unsupported dtype {dtype}")
    return SAFETENSORS_NAMES[dtype]


def row_slices(shape: tuple[int, ...], max_elems: int = 1 << 20) -> list[slice | None]:
    """Split dim 0 into slices of at most `max_elems` elements (at least one row each); None = whole.

    Streaming a tensor in such slices keeps peak memory at a few chunks whatever the model size:
    a 7B embedding is 500 MB in fp32, a 1M-element chunk is 4 MB. Measured on a 0.36 GB recover:
    4M-element chunks peaked 200 MB above the interpreter (allocator churn) and ran 2x slower
    than 1M-element chunks (+35 MB), which also stay in the CPU caches between the steps.
    """
    if not shape or shape[0] == 0:
        return [None]
    rows = shape[0]
    row_elems = max(1, math.prod(shape[1:]))
    step = max(1, max_elems // row_elems)
    return [slice(i, min(i + step, rows)) for i in range(0, rows, step)]


def open_checkpoint(path_or_repo: str | os.PathLike, revision: str | None = None) -> Checkpoint:
    return Checkpoint(resolve_model_dir(path_or_repo, revision))
