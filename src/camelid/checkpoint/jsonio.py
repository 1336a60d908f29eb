"""JSON files of a model folder: read naming the file on bad input, written atomically."""

from __future__ import annotations

import json
import os
from pathlib import Path

from camelid.errors import CheckpointError


def read_json(path: str | os.PathLike) -> object:
    """The parsed file; invalid JSON (or bytes that are not UTF-8) is a CheckpointError naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: invalid JSON ({e})") from e


def write_json(path: str | os.PathLike, obj: object) -> None:
    """Atomic JSON write (temp file, then rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)
