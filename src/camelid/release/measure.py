"""Quality of a branch from its own files: KL divergence to the source, top-1 agreement and perplexity.

Scored on held-out text: `--eval-data`, or by default the spans of the calibration corpus that no
calibration window of the release touched, cut into non-overlapping windows (GPTQ protocol).
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from camelid.errors import CamelidError


def heldout_windows(stream: torch.Tensor, used: list[tuple[int, int]], seq_len: int, limit: int) -> torch.Tensor:
    """Up to `limit` [seq_len] windows of `stream` that overlap none of the `used` (start, stop) spans,
    spread over the whole stream rather than taken from its start."""
    free = torch.ones(stream.numel(), dtype=torch.bool)
    for start, stop in used:
        free[start:stop] = False
    windows, i = [], 0
    while i + seq_len <= stream.numel():
        if free[i:i + seq_len].all():
            windows.append(stream[i:i + seq_len])
            i += seq_len
        else:  # jump past the last used token of this span
            i += int(torch.nonzero(~free[i:i + seq_len])[-1]) + 1
    if not windows:
        raise CamelidError(f"the calibration windows cover the whole corpus: no held-out window of {seq_len} "
                           "tokens is left; pass --eval-data FILE or use fewer/shorter calibration samples")
    step = max(1, len(windows) // limit)
    return torch.stack(windows[::step][:limit])


def file_windows(tokenizer, path: str | Path, seq_len: int, limit: int) -> torch.Tensor:
    from camelid.eval import gptq_windows, read_gptq_text

    return gptq_windows(tokenizer, read_gptq_text(path), seq_len)[:limit]


@functools.lru_cache(maxsize=1)
def _reference(source_dir: Path, device: str):
    """The source model, loaded once per process for all the branches measured there."""
    from camelid.runtime.load import load

    return load(source_dir, device=device, dtype="float32")[0]


def measure_branch(branch_dir: Path, source_dir: Path, windows: torch.Tensor, device: str = "cpu") -> dict:
    """KL(source || variant), top-1 agreement and both perplexities. The variant is a model folder (GPTQ,
    AWQ, fp16: camelid.load, in float32 so that the numbers show the quantization alone, not the runtime's
    bf16 rounding) or a .gguf file, run by llama.cpp as `camelid eval kld` runs it."""
    from camelid.eval import kl_divergence_windows
    from camelid.runtime.llamacpp import is_gguf, load_gguf
    from camelid.runtime.load import load

    if is_gguf(branch_dir):
        model, _ = load_gguf(branch_dir, n_ctx=int(windows.shape[1]))
    else:
        model, _ = load(branch_dir, device=device, dtype="float32")
    reference = _reference(Path(source_dir), device)
    result = kl_divergence_windows(model, reference, windows)
    return {k: result[k] for k in ("kld_mean", "kld_median", "kld_p99", "top1_agreement_pct", "ppl",
                                   "ppl_reference", "windows", "seq_len", "positions")}
