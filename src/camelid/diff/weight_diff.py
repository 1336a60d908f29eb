"""Weight diffs (Alpaca / open-instruct style): tuned = base + diff, one row chunk at a time.

open-instruct's `weight_diff.py` loads both models in fp32 (56 GB for 7B). Here every tensor is
streamed in row chunks (`row_slices`), added in fp32 and written straight to the output shard, so
peak memory is a few 4 MB chunks whatever the model size.

Exact round trip. In fp32, `b + (t - b)` is not always `t`: when a weight shrinks by more than half
(|t| < |b|/2, e.g. it crosses zero) the exact difference needs more than 24 significant bits. With
fp16 or bf16 tuned weights (how fine-tunes are usually published) over an fp16 base this essentially
never happens; with fp32 tuned weights it hits about 1% of the elements of every tensor (measured on
simulated fine-tunes). `make_diff` (exact=True, the default) therefore checks every tensor first and
stores those that would not round-trip in float64, where `t - b` is exact for fp32 values within a
factor 2**29 of each other; `recover` adds such tensors in float64 and rounds once to fp32. So
`recover(make_diff(t))` gives `t` bit for bit in fp32; the price is a larger diff for fp32 fine-tunes.
`exact=False` keeps every tensor fp32 as open-instruct does. What does not round-trip (values below
2**-29 of their base value; -0.0, which any `b + (-b)` turns into +0.0) is counted and reported.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from tqdm.auto import tqdm

from camelid.checkpoint import (
    Checkpoint,
    TensorInfo,
    TensorSpec,
    cast_checked,
    open_checkpoint,
    row_slices,
    single_threaded,
    with_config_dtype,
    write_model_dir,
)
from camelid.dtypes import dtype_name, parse_dtype
from camelid.errors import CamelidError, CheckpointError

# Buffers that old transformers versions saved with the weights; recomputed at load, never diffed.
_NOT_WEIGHTS = (".rotary_emb.inv_freq",)


def _is_vocab_matrix(name: str) -> bool:
    return name.endswith("embed_tokens.weight") or name == "lm_head.weight"


def match_tensors(base: Checkpoint, other: Checkpoint, role: str) -> list[TensorInfo]:
    """The tensors of `other` (a diff or a tuned model), checked against `base` before anything is written.

    Shapes must agree, except that a vocabulary matrix may have more rows in `other` (Tulu adds [PAD]:
    32000 -> 32001); the base is then extended with the mean of its rows, as open-instruct does.
    """
    names_b = {n for n in base.tensors if not n.endswith(_NOT_WEIGHTS)}
    names_o = {n for n in other.tensors if not n.endswith(_NOT_WEIGHTS)}
    if names_b != names_o:
        only_o, only_b = sorted(names_o - names_b), sorted(names_b - names_o)
        raise CheckpointError(
            f"tensor names differ between base {base.dir} and {role} {other.dir}: "
            f"only in {role}: {only_o[:5]}{' ...' if len(only_o) > 5 else ''}; "
            f"only in base: {only_b[:5]}{' ...' if len(only_b) > 5 else ''}"
        )
    infos = []
    for name, o in other.tensors.items():
        if name not in names_o:
            continue
        b = base.tensors[name]
        for t in (b, o):
            if not t.dtype.is_floating_point:
                raise CheckpointError(f"{t.file}: tensor {name} is {dtype_name(t.dtype)}; "
                                      "weight diffs apply to floating-point tensors only")
        grows_vocab = (_is_vocab_matrix(name) and len(b.shape) == 2 and len(o.shape) == 2
                       and o.shape[1] == b.shape[1] and o.shape[0] > b.shape[0])
        if b.shape != o.shape and not grows_vocab:
            raise CheckpointError(f"tensor {name}: shape {list(o.shape)} in {o.file} does not match "
                                  f"{list(b.shape)} in base {b.file}")
        infos.append(o)
    return infos


def _mean_row(base: Checkpoint, name: str) -> torch.Tensor:
    """Mean of the existing rows (open-instruct's smart_tokenizer_and_embedding_resize), streamed."""
    info = base.tensors[name]
    total = torch.zeros(info.shape[1], dtype=torch.float64)
    for rows in row_slices(info.shape):
        total += base.read(name, rows=rows).to(torch.float64).sum(dim=0)
    return (total / info.shape[0]).to(torch.float32)


def _base_rows(base: Checkpoint, name: str, rows: slice | None, mean: torch.Tensor | None) -> torch.Tensor:
    """Rows of the base tensor as stored; rows past the base vocabulary are its mean row (then fp32)."""
    if mean is None:
        return base.read(name, rows=rows)
    have = base.tensors[name].shape[0]
    parts = []
    if rows.start < have:
        parts.append(base.read(name, rows=slice(rows.start, min(rows.stop, have))).to(torch.float32))
    if rows.stop > have:
        parts.append(mean.expand(rows.stop - max(rows.start, have), -1))
    return torch.cat(parts) if len(parts) > 1 else parts[0]


def _aligned_chunks(base: Checkpoint, other: Checkpoint, infos: list[TensorInfo]
                    ) -> Iterator[tuple[str, torch.Tensor, torch.Tensor]]:
    """(name, base rows, the other's rows), as stored, chunk by chunk over `other`'s shapes."""
    for info in infos:
        grows = base.tensors[info.name].shape != info.shape
        mean = _mean_row(base, info.name) if grows else None
        for rows in row_slices(info.shape):
            yield info.name, _base_rows(base, info.name, rows, mean), other.read(info.name, rows=rows)


def add_diff(b: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """base + diff as recover computes it: in fp32 (open-instruct), or in float64 for a widened diff."""
    # Convert first: torch's mixed-dtype add is several times slower than two casts and a plain add.
    wide = torch.promote_types(torch.promote_types(torch.float32, d.dtype), b.dtype)
    return (b.to(wide) + d.to(wide)).to(torch.float32)


def _mismatches(r: torch.Tensor, t: torch.Tensor) -> tuple[int, int]:
    """(values that differ, zeros whose sign differs) between recovered `r` and tuned `t`, both fp32.

    A -0.0 in tuned comes back as +0.0 whatever the diff (IEEE: b + (-b) = +0.0); it is the same number.
    """
    if torch.equal(r.view(torch.int32), t.view(torch.int32)):  # the common case, one cheap pass
        return 0, 0
    differ = r.view(torch.int32) != t.view(torch.int32)
    rd, td = r[differ], t[differ]  # few elements: the rest of the work is on these
    zeros = int(((rd == 0) & (td == 0)).sum())
    return rd.numel() - zeros, zeros


def recover(base: str | os.PathLike, diff: str | os.PathLike, out: str | os.PathLike,
            dtype: str | torch.dtype = "float16", check_sum: float | None = None,
            max_shard_size: int | str = "5GB", overwrite: bool = False) -> Path:
    """tuned = base + diff, written to `out` in `dtype`, with tokenizer and config from the diff folder.

    `check_sum`: the Alpaca integrity value (sum of all recovered fp32 weights, atol 1e-2); on a
    mismatch nothing is written. A SHA-256 manifest of the output is always written.
    """
    target = parse_dtype(dtype)
    if check_sum is not None and not math.isfinite(check_sum):
        raise CamelidError(f"check_sum must be a finite number, got {check_sum}")
    base_ck, diff_ck = open_checkpoint(base), open_checkpoint(diff)
    infos = match_tensors(base_ck, diff_ck, "diff")
    specs = [TensorSpec(i.name, target, i.shape) for i in infos]

    def chunks() -> Iterator[tuple[str, torch.Tensor]]:
        total = 0.0
        for name, b, d in _aligned_chunks(base_ck, diff_ck, infos):
            t = add_diff(b, d)
            if check_sum is not None:
                total += t.sum(dtype=torch.float64).item()
            yield name, cast_checked(t, target, name)
        if check_sum is not None and not math.isclose(total, check_sum, rel_tol=0.0, abs_tol=1e-2):
            raise CheckpointError(
                f"integrity check failed: the recovered weights sum to {total:.4f}, expected {check_sum} "
                f"(atol 1e-2); base {base_ck.dir} or diff {diff_ck.dir} is not the published one or is corrupt"
            )

    return write_model_dir(out, specs, chunks(), with_config_dtype(diff_ck.config, target),
                           side_files_from=[diff_ck.dir], max_shard_size=max_shard_size,
                           overwrite=overwrite, desc="recover", inputs=[base_ck.dir, diff_ck.dir])


def _needs_float64(base_ck: Checkpoint, tuned_ck: Checkpoint, infos: list[TensorInfo]) -> set[str]:
    """Tensors whose fp32 diff would not give back the tuned fp32 values."""
    widen: set[str] = set()
    total = sum(i.nbytes for i in infos)
    with tqdm(total=total, unit="B", unit_scale=True, desc="check exactness", disable=None) as bar, \
            single_threaded():
        for name, b, t in _aligned_chunks(base_ck, tuned_ck, infos):
            t = t.to(torch.float32)
            if name not in widen and _mismatches(add_diff(b, t - b), t)[0]:
                widen.add(name)
            bar.update(t.numel() * tuned_ck.tensors[name].itemsize)
    return widen


def make_diff(base: str | os.PathLike, tuned: str | os.PathLike, out: str | os.PathLike,
              dtype: str | torch.dtype = "float32", max_shard_size: int | str = "5GB",
              overwrite: bool = False, exact: bool = True) -> Path:
    """diff = tuned - base, so that `recover(base, diff)` gives back `tuned`.

    dtype float32 with `exact` (the default): the round trip is exact in fp32 (see the module docstring);
    a first read-only pass finds the tensors that need float64. `exact=False` keeps every tensor in
    fp32 like open-instruct (values that cross zero come back off by under one ulp of the base value),
    and float16/bfloat16 diffs are smaller and lossy. Every run reports what will not round-trip.
    Tokenizer and config come from the tuned folder.
    """
    store = parse_dtype(dtype)
    base_ck, tuned_ck = open_checkpoint(base), open_checkpoint(tuned)
    infos = match_tensors(base_ck, tuned_ck, "tuned")
    widen = _needs_float64(base_ck, tuned_ck, infos) if exact and store == torch.float32 else set()
    specs = [TensorSpec(i.name, torch.float64 if i.name in widen else store, i.shape) for i in infos]
    dtype_of = {s.name: s.dtype for s in specs}
    inexact, signed_zeros = {}, 0

    def chunks() -> Iterator[tuple[str, torch.Tensor]]:
        nonlocal signed_zeros
        for name, b, t in _aligned_chunks(base_ck, tuned_ck, infos):
            t = t.to(torch.float32)
            wide = torch.float64 if dtype_of[name] == torch.float64 else torch.float32
            d = cast_checked(t.to(wide) - b.to(wide), dtype_of[name], name)
            bad, zeros = _mismatches(add_diff(b, d), t)
            if bad:
                inexact[name] = inexact.get(name, 0) + bad
            signed_zeros += zeros
            yield name, d

    path = write_model_dir(out, specs, chunks(), with_config_dtype(tuned_ck.config, store),
                           side_files_from=[tuned_ck.dir], max_shard_size=max_shard_size,
                           overwrite=overwrite, desc="make-diff", inputs=[base_ck.dir, tuned_ck.dir])
    if widen:
        warnings.warn(f"{len(widen)} of {len(specs)} tensors stored in float64 so that they recover exactly "
                      f"(some tuned values are far smaller than their base values): {sorted(widen)[:5]}",
                      stacklevel=2)
    if inexact:
        warnings.warn(f"{sum(inexact.values())} values will not recover bit for bit in fp32 "
                      f"(per tensor: {dict(list(inexact.items())[:5])})", stacklevel=2)
    if signed_zeros:
        warnings.warn(f"{signed_zeros} values are -0.0 in tuned and recover as +0.0 (b + (-b) = +0.0 in IEEE "
                      "arithmetic; the same number)", stacklevel=2)
    return path
