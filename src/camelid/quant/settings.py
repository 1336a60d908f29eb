"""Quantization settings as values: what to compute (`QuantParams`), on what data (`CalibSpec`) and how
to run it (`RunOptions`).

Frozen and hashable, so a release matrix can store them, key results by them and name a branch after
them; `to_dict`/`from_dict` round-trip through JSON. Each checks itself on construction and names the
CLI flag of a bad value. No torch here: the release and card code read these without loading a model.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

from camelid.errors import CamelidError

BITS = (2, 3, 4, 8)
METHODS = ("gptq", "rtn", "awq")
AWQ_BITS = 4  # the AutoAWQ GEMM format's only width (camelid.formats.awq.BITS)


class _Settings:
    """to_dict/from_dict/to_json shared by the settings classes (all fields are JSON scalars)."""

    kind: ClassVar[str] = "settings"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(d) - known)
        if unknown:
            raise CamelidError(f"unknown {cls.kind} field(s): {', '.join(unknown)}")
        return cls(**d)

    def to_json(self) -> str:
        """Stable text (sorted keys, no spaces): equal settings give equal bytes."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    def digest(self) -> str:
        """sha256 of `to_json`: a key that, unlike `hash()` of the strings inside, is the same in every
        process (release manifests, caches)."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()


def _positive_int(value: Any, flag: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise CamelidError(f"{flag} must be a positive integer, got {value!r}")


def _bool(value: Any, flag: str) -> None:
    if not isinstance(value, bool):
        raise CamelidError(f"{flag} must be true or false, got {value!r}")


@dataclass(frozen=True)
class QuantParams(_Settings):
    """The quantization itself: grid, algorithm knobs and which Linears. Written into quantize_config."""

    kind: ClassVar[str] = "quantization"
    bits: int = 4
    group_size: int = 128  # columns per scale/zero group; -1: one group per row
    act_order: bool = False  # desc_act
    damp: float = 0.01  # fraction of the mean Hessian diagonal added to it
    sym: bool = True
    true_sequential: bool = True
    static_groups: bool = False
    mse: bool = False
    lm_head: bool = False
    method: str = "gptq"

    def __post_init__(self) -> None:
        if isinstance(self.bits, bool) or self.bits not in BITS:
            raise CamelidError(f"--bits must be 2, 3, 4 or 8, got {self.bits!r}")
        if isinstance(self.group_size, bool) or not isinstance(self.group_size, int) or (
                self.group_size != -1 and self.group_size <= 0):
            raise CamelidError(f"--group-size must be positive or -1 (one group), got {self.group_size!r}")
        if isinstance(self.damp, bool) or not isinstance(self.damp, int | float) or not (
                math.isfinite(self.damp) and 0 <= self.damp < 1):
            raise CamelidError(f"--damp must be in [0, 1), got {self.damp!r}")
        if self.method not in METHODS:
            raise CamelidError(f"--method must be {', '.join(METHODS)}, got {self.method!r}")
        for name in ("act_order", "sym", "true_sequential", "static_groups", "mse", "lm_head"):
            _bool(getattr(self, name), "--" + name.replace("_", "-"))
        if self.method == "awq":
            self._check_awq()

    def _check_awq(self) -> None:
        """AWQ's own grid (asymmetric, zero point) and whole-layer order: `sym`, `damp` and
        `true_sequential` do not apply; what it cannot do is refused."""
        if self.bits != AWQ_BITS:
            raise CamelidError(f"--method awq writes the AutoAWQ GEMM format, which is {AWQ_BITS}-bit; got --bits {self.bits}")
        if self.group_size == -1:
            raise CamelidError("--method awq needs a positive --group-size (AutoAWQ GEMM has no single-group layout)")
        for name in ("act_order", "static_groups", "mse", "lm_head"):
            if getattr(self, name):
                raise CamelidError(f"--{name.replace('_', '-')} is a GPTQ option; --method awq does not take it")

    def as_dict(self) -> dict[str, Any]:  # the name the run fingerprint has always hashed
        return self.to_dict()

    def branch_name(self) -> str:
        """The published branch of this variant, as TheBloke-style repos name them
        (`gptq-4bit-128g-actorder_True`; one group gives `gptq-8bit--1g-actorder_True`)."""
        return f"gptq-{self.bits}bit-{self.group_size}g-actorder_{self.act_order}"


@dataclass(frozen=True)
class CalibSpec(_Settings):
    """Where the calibration windows come from (ignored by RTN and when token ids are passed in)."""

    kind: ClassVar[str] = "calibration"
    dataset: str = "wikitext2"  # wikitext2, code, file, or a path to a .txt/.jsonl/.json file
    dataset_path: str | None = None  # local file for a named dataset
    nsamples: int = 128
    seq_len: int | None = None  # None: 2048, or the model's context when shorter
    seed: int = 0
    template: str = "alpaca"  # renders instruction/input/output records

    def __post_init__(self) -> None:
        if not isinstance(self.dataset, str) or not self.dataset:
            raise CamelidError(f"--dataset must be a name or a file, got {self.dataset!r}")
        if self.dataset_path is not None and not isinstance(self.dataset_path, str):
            # a Path would not survive to_dict -> JSON; callers pass str(path)
            object.__setattr__(self, "dataset_path", str(self.dataset_path))
        _positive_int(self.nsamples, "--nsamples")
        if self.seq_len is not None:
            _positive_int(self.seq_len, "--seq-len")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise CamelidError(f"--seed must be an integer, got {self.seed!r}")
        if not isinstance(self.template, str) or not self.template:
            raise CamelidError(f"--template must be a template name, got {self.template!r}")


@dataclass(frozen=True)
class RunOptions(_Settings):
    """How to run: devices, memory, output handling. Changes no written tensor (but `compute`, the dtype
    of the calibration forward passes, changes the activations GPTQ sees, so it is part of the resume
    fingerprint)."""

    kind: ClassVar[str] = "run option"
    device: str = "auto"  # auto, cpu, cuda or cuda:N (camelid.device.resolve_device)
    compute: str = "auto"  # auto, float32, bfloat16 or float16
    batch_size: int | None = None  # calibration windows per forward pass (default: 4096 tokens' worth)
    spill: bool = False  # calibration activations in a file in OUT.partial instead of RAM
    overwrite: bool = False
    revision: str | None = None  # Hub branch/tag/commit of the model
    max_shard_size: str = "5GB"
    progress: bool = True

    def __post_init__(self) -> None:
        if self.compute not in ("auto", "float32", "bfloat16", "float16"):
            raise CamelidError(f"--compute-dtype must be auto, float32, bfloat16 or float16, got {self.compute!r}")
        if self.batch_size is not None:
            _positive_int(self.batch_size, "--batch-size")
        for name in ("spill", "overwrite", "progress"):
            _bool(getattr(self, name), "--" + name)
        if not isinstance(self.max_shard_size, str) or not self.max_shard_size:
            raise CamelidError(f"--max-shard-size must be a size such as 5GB, got {self.max_shard_size!r}")
