"""Output folders that appear whole or not at all, plus the side files every model folder carries."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import shutil
from collections.abc import Iterator
from pathlib import Path

from camelid.checkpoint.writer import write_json
from camelid.errors import CamelidError, CheckpointError

TOKENIZER_FILES = (
    "tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
    "added_tokens.json", "chat_template.jinja", "chat_template.json",
)
SIDE_FILES = ("config.json", "generation_config.json", *TOKENIZER_FILES)


def partial_dir(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


@contextlib.contextmanager
def atomic_output_dir(out: str | Path, overwrite: bool = False, resume: bool = False) -> Iterator[Path]:
    """Yield `OUT.partial/` to write into; rename it to OUT when the block completes.

    On failure the partial folder is removed, unless `resume` is set: then it is kept so that a
    rerun can continue where the failed one stopped (long jobs such as quantization).
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise CamelidError(f"output {out} already exists (use --overwrite to replace it)")
    work = partial_dir(out)
    if work.exists() and not resume:
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    try:
        yield work
    except BaseException as e:
        if not resume:
            shutil.rmtree(work, ignore_errors=True)
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            raise CheckpointError(f"disk full while writing {out}; partial output removed") from e
        raise
    if out.exists():
        shutil.rmtree(out)
    work.rename(out)


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
    sums = {p.name: sha256_file(p) for p in sorted(folder.iterdir()) if p.is_file() and p.name != MANIFEST}
    write_json(folder / MANIFEST, sums)
    return sums


def verify_manifest(folder: Path) -> None:
    import json

    sums = json.loads((folder / MANIFEST).read_text())
    for name, digest in sums.items():
        if not (folder / name).is_file():
            raise CheckpointError(f"{folder / name}: listed in {MANIFEST} but missing")
        if sha256_file(folder / name) != digest:
            raise CheckpointError(f"{folder / name}: SHA-256 mismatch with {MANIFEST}")
