"""Output folders that appear whole or not at all, plus the side files every model folder carries."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import socket
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm.auto import tqdm

from camelid.checkpoint.jsonio import read_json, write_json
from camelid.errors import CamelidError, CheckpointError

if TYPE_CHECKING:  # torch only where tensors are written: GGUF export uses the atomic helpers without it
    import torch

    from camelid.checkpoint.writer import TensorSpec

TOKENIZER_FILES = (
    "tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
    "added_tokens.json", "chat_template.jinja", "chat_template.json",
)
SIDE_FILES = ("config.json", "generation_config.json", *TOKENIZER_FILES)


def partial_dir(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


LOCK = "camelid.lock"  # in OUT.partial: who writes it ({pid, host, started}); its presence marks camelid's work


def _overlaps(a: Path, b: Path) -> bool:
    return a == b or a in b.parents or b in a.parents


def check_output(out: str | Path, overwrite: bool = False, inputs: Sequence[str | Path] = ()) -> None:
    """Refuse an OUT whose writing could destroy anything but camelid's own earlier output; called before
    long work, not after it.

    OUT (and OUT.partial) may not be, lie inside, or contain any input (symlinks resolved): replacing it
    would delete the source. `overwrite` replaces only a folder camelid wrote, recognised by its
    SHA256SUMS.json manifest; a file, or a folder without one, is never removed.
    """
    out = Path(out)
    for place in (out, partial_dir(out)):
        for src in inputs:
            if _overlaps(place.resolve(), Path(src).resolve()):
                raise CamelidError(f"output {out} and input {src} overlap (one is, or contains, the other); "
                                   "choose an output folder outside the inputs")
    if not out.exists() and not out.is_symlink():
        return
    if not overwrite:
        raise CamelidError(f"output {out} already exists (use --overwrite to replace it)")
    if out.is_symlink() or not out.is_dir():
        raise CamelidError(f"output {out} exists and is not a folder; --overwrite only replaces a model folder "
                           "camelid wrote")
    if not (out / MANIFEST).is_file():
        raise CamelidError(f"output {out} exists but camelid did not write it (no {MANIFEST}); --overwrite only "
                           "replaces camelid's own output: remove it yourself or choose another folder")


class OutputLock:
    """An exclusive lock on OUT.partial, held by one writer: a second one refuses at once.

    fcntl.flock locks die with their process, so a killed run leaves a stale lock file that the next
    run (its resume) takes over; the file's pid/host/start say who holds a live lock.
    """

    def __init__(self, work: Path) -> None:
        self.path = work / LOCK
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = self.path.read_text(errors="replace").strip() or "another process"
            os.close(self.fd)
            raise CamelidError(f"{work} is being written by another camelid run ({holder}); wait for it to "
                               "finish or choose another output folder") from None
        me = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, json.dumps(me).encode(), 0)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # drops the flock; the file stays as the mark of camelid's partial work
            self.fd = None


def _camelid_partial(work: Path) -> bool:
    """Made by camelid: it has our lock file (or a quantize run's state, from before locks), or is empty."""
    return (work / LOCK).is_file() or (work / "state" / "progress.json").is_file() or not any(work.iterdir())


@contextlib.contextmanager
def atomic_output_dir(out: str | Path, overwrite: bool = False, resume: bool = False,
                      inputs: Sequence[str | Path] = ()) -> Iterator[Path]:
    """Yield `OUT.partial/` to write into, locked; rename it to OUT when the block completes.

    On failure the partial folder is removed, unless `resume` is set: then it is kept so that a
    rerun can continue where the failed one stopped (long jobs such as quantization). A partial
    folder that camelid did not make (no lock file) is never reused or removed.
    """
    out = Path(out)
    check_output(out, overwrite, inputs)
    work = partial_dir(out)
    if work.is_symlink() or (work.exists() and not work.is_dir()):
        raise CamelidError(f"{work} exists and is not a folder; remove it or choose another output folder")
    if work.exists() and not _camelid_partial(work):
        raise CamelidError(f"{work} exists but camelid did not make it (no {LOCK}); remove it yourself or "
                           "choose another output folder")
    try:
        work.mkdir(parents=True, exist_ok=True)
        lock = OutputLock(work)
    except OSError as e:  # a read-only or missing parent, a parent that is a file, ...
        raise CheckpointError(f"cannot create {work}: {e.strerror}") from e
    if not resume:  # a failed earlier run's leftovers: only now, under the lock, is it safe to clear them
        for old in work.iterdir():
            if old.is_dir():
                shutil.rmtree(old)
            elif old.name != LOCK:
                old.unlink()
    try:
        yield work
        check_output(out, overwrite, inputs)  # OUT may have appeared meanwhile
        if out.exists():
            shutil.rmtree(out)
        work.rename(out)  # still locked: the lock is on the file, which moves with the folder
    except BaseException as e:
        if not resume or not any(f.is_file() and f.name != LOCK for f in work.rglob("*")):  # nothing to resume
            shutil.rmtree(work, ignore_errors=True)
        lock.release()
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            raise CheckpointError(f"disk full while writing {out}; partial output removed") from e
        if isinstance(e, PermissionError):
            raise CheckpointError(f"cannot write {out}: {e.strerror} ({e.filename})") from e
        raise
    (out / LOCK).unlink(missing_ok=True)
    lock.release()


def _head(path: Path, n: int) -> bytes:
    with open(path, "rb") as f:  # the first bytes only: a GGUF may be many GB
        return f.read(n)


def check_output_file(out: str | Path, overwrite: bool = False, magic: bytes = b"") -> None:
    """The file counterpart of check_output: `overwrite` replaces only a regular file that starts with
    `magic` (the format camelid writes there, e.g. b"GGUF"), never a folder, a link or another kind of file."""
    out = Path(out)
    if not out.exists() and not out.is_symlink():
        return
    if not overwrite:
        raise CamelidError(f"output {out} already exists (use --overwrite to replace it)")
    if out.is_symlink() or not out.is_file() or _head(out, len(magic)) != magic:
        raise CamelidError(f"output {out} exists and is not a {magic.decode() or 'regular'} file; "
                           "--overwrite only replaces camelid's own output")


@contextlib.contextmanager
def atomic_output_file(out: str | Path, overwrite: bool = False, magic: bytes = b"") -> Iterator[Path]:
    """Yield `OUT.partial` to write into; rename it to OUT when the block completes, remove it on failure
    (`overwrite` and `magic` as in check_output_file)."""
    out = Path(out)
    check_output_file(out, overwrite, magic)
    work = partial_dir(out)
    try:
        yield work
        work.replace(out)
    except BaseException as e:
        work.unlink(missing_ok=True)
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            raise CheckpointError(f"disk full while writing {out}; partial output removed") from e
        raise


def copy_side_files(src: Path, dst: Path, names: tuple[str, ...] = SIDE_FILES) -> list[str]:
    copied = []
    for name in names:
        if (src / name).is_file():
            shutil.copyfile(src / name, dst / name)
            copied.append(name)
    return copied


def sha256_file(path: Path, bufsize: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(bufsize):
            h.update(block)
    return h.hexdigest()


MANIFEST = "SHA256SUMS.json"


def write_manifest(folder: Path) -> dict[str, str]:
    """SHA-256 of every file in the folder, so a download or copy can be verified later."""
    sums = {p.name: sha256_file(p) for p in sorted(folder.iterdir())
            if p.is_file() and p.name not in (MANIFEST, LOCK)}
    write_json(folder / MANIFEST, sums)
    return sums


def verify_manifest(folder: Path) -> None:
    sums = read_json(folder / MANIFEST)
    for name, digest in sums.items():
        if not (folder / name).is_file():
            raise CheckpointError(f"{folder / name}: listed in {MANIFEST} but missing")
        if sha256_file(folder / name) != digest:
            raise CheckpointError(f"{folder / name}: SHA-256 mismatch with {MANIFEST}")


def ensure_free_space(out: Path, nbytes: int) -> None:
    """Fail before writing anything when the output cannot fit, rather than at 90% of a 13 GB write."""
    probe = Path(out).resolve().parent
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < nbytes:
        raise CheckpointError(
            f"not enough disk space for {out}: needs {nbytes / 1e9:.2f} GB, {free / 1e9:.2f} GB free on {probe}"
        )


def _with_progress(chunks: Iterable[tuple[str, torch.Tensor]], total: int, desc: str):
    with tqdm(total=total, unit="B", unit_scale=True, desc=desc, disable=None) as bar:
        for name, chunk in chunks:
            yield name, chunk
            bar.update(chunk.nbytes)


@contextlib.contextmanager
def single_threaded() -> Iterator[None]:
    """Streaming casts and adds are memory-bound: more threads only add synchronisation. On a busy
    2-core machine a 4M-element fp16->fp32 cast took 13 ms with 2 threads and 1.6 ms with one."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def write_model_dir(out: str | Path, specs: Sequence[TensorSpec], chunks: Iterable[tuple[str, torch.Tensor]],
                    config: dict, side_files_from: Sequence[Path] = (), max_shard_size: int | str = "5GB",
                    overwrite: bool = False, desc: str = "writing", inputs: Sequence[str | Path] = ()) -> Path:
    """A complete model folder, atomically: sharded weights streamed from `chunks`, `config`, side
    files (tokenizer, generation config; later folders in `side_files_from` win) and a SHA-256 manifest.
    `inputs`: the folders read, which OUT may not overlap (see `check_output`).
    """
    from camelid.checkpoint.writer import save_sharded

    out = Path(out)
    check_output(out, overwrite, inputs)
    total = sum(s.nbytes for s in specs)
    ensure_free_space(out, total + (1 << 20))
    with atomic_output_dir(out, overwrite=overwrite, inputs=inputs) as work, single_threaded():
        save_sharded(work, specs, _with_progress(chunks, total, desc), max_shard_size=max_shard_size)
        for src in side_files_from:
            copy_side_files(Path(src), work, tuple(n for n in SIDE_FILES if n != "config.json"))
        write_json(work / "config.json", config)
        write_manifest(work)
    return out
