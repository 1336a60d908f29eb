"""The one call from a release into `camelid.quant`: a row's settings objects in, a GPTQ folder out.

`CalibSpec` and `RunOptions` have the fields (names and defaults) of the settings dataclasses that
`camelid.quant` is getting next to `QuantParams`; once it has them, they are imported from there and
`quantize_branch` becomes `quantize(model, out, params, calib, options, calibration)`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from camelid.quant.format import QuantParams


@dataclass(frozen=True)
class CalibSpec:
    dataset: str = "wikitext2"
    dataset_path: str | None = None
    nsamples: int = 128
    seq_len: int = 2048
    seed: int = 0
    template: str = "alpaca"


@dataclass(frozen=True)
class RunOptions:
    device: str = "auto"
    compute: str = "auto"
    batch_size: int | None = None
    spill: bool = False
    overwrite: bool = False
    revision: str | None = None
    max_shard_size: str = "5GB"
    progress: bool = True


def quantize_branch(model: str | Path, out: Path, params: QuantParams, calib: CalibSpec, options: RunOptions,
                    calibration: torch.Tensor | None = None) -> Path:
    """GPTQ-quantize `model` into `out`; `calibration` ([n, seq_len] ids) is the row's shared windows.
    An interrupted call resumes from its last finished layer when made again with the same arguments."""
    from camelid.quant import quantize

    return quantize(model, out, **asdict(params), **asdict(calib), **asdict(options), calibration=calibration)
