"""Per-example records (JSONL, appended as examples finish) and the results file of one evaluation.

A run folder holds `run.json` (what is being measured), `records.jsonl` (one line per finished example:
prompt, raw output, extracted answer, gold, score) and, at the end, `results.json` (metrics, protocol
version, data file hashes, model, template, settings). A rerun with the same run.json skips the examples
already recorded; a run folder made with other settings is refused rather than mixed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from camelid.checkpoint.jsonio import write_json
from camelid.errors import CamelidError

# Bump when a prompt, extraction or metric changes: results with another version are not comparable.
PROTOCOL_VERSION = "camelid-tulu-eval/1"


class RecordStore:
    """records.jsonl of one run folder. Lines are flushed and fsynced as they are written; a torn last line
    (the run was killed mid-write) is dropped on reopen."""

    def __init__(self, run_dir: Path, run_info: dict) -> None:
        self.dir = Path(run_dir)
        self.path = self.dir / "records.jsonl"
        info_path = self.dir / "run.json"
        self.dir.mkdir(parents=True, exist_ok=True)
        if info_path.exists():
            old = json.loads(info_path.read_text(encoding="utf-8"))
            if old != json.loads(json.dumps(run_info)):
                diff = sorted(k for k in set(old) | set(run_info) if old.get(k) != run_info.get(k))
                raise CamelidError(f"{self.dir} holds records of a different run (differs in {diff}); "
                                   "use another --out or delete that folder")
        else:
            write_json(info_path, run_info)
        self.done: dict[str, dict] = {}
        if self.path.exists():
            good = 0
            with open(self.path, "rb") as f:
                for line in f:
                    try:
                        rec = json.loads(line)
                    except ValueError:
                        break  # torn write: everything from here is redone
                    self.done[rec["id"]] = rec
                    good += len(line)
            with open(self.path, "r+b") as f:
                f.truncate(good)

    def append(self, records: list[dict]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            for rec in records:
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
                self.done[rec["id"]] = rec
            f.flush()
            os.fsync(f.fileno())
