"""Reading benchmark files in their published formats; a missing or malformed file is a CamelidError that
names the file and the format expected, and nothing else is read into the run."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

from camelid.errors import CamelidError


def require_file(path: Path, expected: str) -> Path:
    if not path.is_file():
        raise CamelidError(f"eval data not found: {path} (expected {expected})")
    return path


def read_jsonl(path: Path, expected: str, keys: tuple[str, ...] = ()) -> list[dict]:
    """Rows of a JSON-lines file (`.gz` read transparently), each a JSON object holding `keys`."""
    require_file(path, expected)
    opener = gzip.open if path.suffix == ".gz" else open
    rows = []
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError as e:
                    raise CamelidError(f"{path}:{n}: not JSON ({e}); expected {expected}") from None
                missing = [k for k in keys if not isinstance(row, dict) or k not in row]
                if missing:
                    raise CamelidError(f"{path}:{n}: missing {missing}; expected {expected}")
                rows.append(row)
    except (OSError, EOFError) as e:
        raise CamelidError(f"{path}: cannot read ({e}); expected {expected}") from None
    if not rows:
        raise CamelidError(f"{path}: no rows; expected {expected}")
    return rows


def read_json(path: Path, expected: str):
    require_file(path, expected)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise CamelidError(f"{path}: not JSON ({e}); expected {expected}") from None


def read_csv(path: Path, expected: str) -> list[list[str]]:
    require_file(path, expected)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            return [row for row in csv.reader(f) if row]
    except (csv.Error, UnicodeDecodeError) as e:
        raise CamelidError(f"{path}: not CSV ({e}); expected {expected}") from None
