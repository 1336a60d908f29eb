"""The cards' Performance table: the Tulu paper's row (`camelid.eval.suite`) for the source model and each
variant the release evaluated, and rows attached from earlier `camelid eval suite --json` runs.

Suite runs are resumable twice over: each setting's per-example records live under
OUT/.camelid/eval/<variant>/ (the eval runner skips finished examples), and a finished variant's row is
kept in OUT/.camelid/eval/<variant>/suite.json with the key of what it measured (weights, data, limit).
The header and the rows come from `camelid.eval.suite` (`table_header`, `table_row`), the one owner of that format.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from camelid.checkpoint import write_json
from camelid.errors import CamelidError

SUITE_KEYS = ("columns", "scores", "average", "average_complete", "skipped")


@dataclass(frozen=True)
class SuiteSpec:
    data: str | None = None  # the eval data root (mmlu/ gsm8k/ bbh/ ...); None: run no suite
    limit: int | None = None  # examples per subject/task (smoke runs)
    attach: tuple[str, ...] = ()  # "[LABEL=]RESULTS.json" from `camelid eval suite --json`

    @property
    def active(self) -> bool:
        return self.data is not None or bool(self.attach)


def read_attached(item: str) -> tuple[str, dict]:
    """`LABEL=FILE` or `FILE`: a suite result (the JSON `camelid eval suite --json` prints). Its label is
    LABEL, else the file's `model` (and `revision`) when it names them, else the file's name."""
    label, sep, file = item.partition("=")
    path = Path(file if sep else item)
    try:
        suite = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CamelidError(f"--performance {path}: cannot read a suite result ({e})") from e
    missing = [k for k in SUITE_KEYS if not isinstance(suite, dict) or k not in suite]
    if missing:
        raise CamelidError(f"--performance {path}: not a `camelid eval suite --json` result (no {', '.join(missing)})")
    if not sep:
        named = suite.get("model")
        if named and (named.startswith((".", "~")) or Path(named).is_absolute()):
            named = Path(named).name  # a local folder: its name, not this machine's path, goes on the card
        label = f"{named} ({suite['revision']})" if named and suite.get("revision") else named or path.stem
    return label, suite


def check_suite(spec: SuiteSpec) -> list[tuple[str, dict]]:
    """Before any work: the data root exists and every attached result reads."""
    if spec.data is not None and not Path(spec.data).is_dir():
        raise CamelidError(f"--suite-data {spec.data}: not a folder (the eval data root: mmlu/ gsm8k/ bbh/ ...)")
    if spec.limit is not None and spec.limit < 1:
        raise CamelidError(f"--suite-limit must be >= 1, got {spec.limit}")
    return [read_attached(a) for a in spec.attach]


def _public(why: str) -> str:
    """A skip reason without this machine's paths (a published card carries none): `no /x/y/eval/tydiqa`
    -> `no eval/tydiqa`."""
    return re.sub(r"(?:/[^\s/]+)*/([^\s/]+/[^\s/]+)", r"\1", why)


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("_")


def run_variant(label: str, model_dir: Path, weights_key: str, spec: SuiteSpec, state: Path, device: str,
                progress: bool = True) -> dict:
    """The suite row of one model folder (kept from an earlier run when it measured the same thing)."""
    from camelid.eval import EvalSettings, open_backend, run_suite

    folder = state / "eval" / _slug(label)
    key = hashlib.sha256(json.dumps([weights_key, Path(spec.data).resolve().name, spec.limit]).encode()).hexdigest()
    done = folder / "suite.json"
    if done.is_file():
        kept = json.loads(done.read_text())
        if kept.get("key") == key:
            return kept["suite"]
    backend = open_backend(str(model_dir), device=device)
    suite = run_suite(backend, spec.data, EvalSettings(task="mmlu", limit=spec.limit), folder, progress)
    suite = {k: suite[k] for k in (*SUITE_KEYS, "results")}
    write_json(done, {"key": key, "label": label, "suite": suite})
    return suite


def performance_table(entries: list[tuple[str, dict]], limit: int | None, not_evaluated: str | None) -> dict | None:
    """What the cards' Performance section shows: the seeds' header, one row per evaluated model, and each
    column left empty with the reasons the suite gave."""
    from camelid.eval.suite import table_header, table_row

    if not entries:
        return None
    skipped: dict[str, list[str]] = {}
    for _, suite in entries:
        for column in suite["columns"]:
            if suite["scores"].get(column) is None:
                why = _public(suite["skipped"].get(column, "not run"))
                if why not in skipped.setdefault(column, []):
                    skipped[column].append(why)
    return {"header": table_header(entries[0][1]["columns"]), "rows": [table_row(label, suite) for label, suite in entries],
            "limit": limit,
            "skipped": [(c, "; ".join(w)) for c, w in skipped.items()], "not_evaluated": not_evaluated}
