"""The variant matrix: one row per branch (GPTQ settings, calibration, description), built in or from a file.

The built-in matrices reproduce the branch tables of published GPTQ releases: `llama` is TheBloke's
Tulu 7B / 30B table (huggingface.co/TheBloke/tulu-7B-GPTQ), `code` the CodeLlama-70B-Instruct one
(huggingface.co/TheBloke/CodeLlama-70B-Instruct-GPTQ). Every row is checked, against the model's
config too, before any work starts.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, fields, replace
from pathlib import Path

from camelid.errors import CamelidError
from camelid.quant.settings import CalibSpec, QuantParams

if sys.version_info >= (3, 11):
    import tomllib
else:  # the same parser, before it joined the standard library
    import tomli as tomllib


@dataclass(frozen=True)
class Row:
    branch: str
    params: QuantParams
    calib: CalibSpec
    description: str = ""
    seq_len_requested: int | None = None  # set when seq_len was capped to the model's context


def branch_name(params: QuantParams) -> str:
    """TheBloke's branch naming; group -1 gives the double dash (`gptq-8bit--1g-actorder_True`)."""
    return params.branch_name()


_PARAM_KEYS = {f.name for f in fields(QuantParams)}
_CALIB_KEYS = {f.name for f in fields(CalibSpec)}
ROW_KEYS = _PARAM_KEYS | _CALIB_KEYS | {"branch", "description"}
_REF = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # a branch name git and the Hub both accept
_GPTQ_NAME = re.compile(r"^gptq-\d+bit--?\d+g-actorder_(True|False)$")

_LLAMA_DESC = {
    (4, 128, False): "4-bit, without Act Order and group size 128g.",
    (4, 32, True): "4-bit, with Act Order and group size 32g. Gives highest possible inference quality, "
                   "with maximum VRAM usage.",
    (4, 64, True): "4-bit, with Act Order and group size 64g. Uses less VRAM than 32g, but with slightly "
                   "lower accuracy.",
    (4, 128, True): "4-bit, with Act Order and group size 128g. Uses even less VRAM than 64g, but with "
                    "slightly lower accuracy.",
    (4, -1, True): "4-bit, with Act Order. No group size, to lower VRAM requirements.",
    (8, -1, True): "8-bit, with Act Order. No group size, to lower VRAM requirements.",
    (8, 128, False): "8-bit, with group size 128g for higher inference quality and without Act Order to "
                     "improve AutoGPTQ speed.",
    (3, -1, True): "3-bit, with Act Order and no group size. Lowest possible VRAM requirements. May be "
                   "lower quality than 3-bit 128g.",
    (3, 128, False): "3-bit, with group size 128g but no act-order. Slightly higher VRAM requirements than "
                     "3-bit None.",
    (3, 128, True): "3-bit, with group size 128g and act-order. Higher quality than 128g-False.",
    (3, 32, True): "3-bit, with group size 32g and act-order. Highest quality 3-bit option.",
}


def _builtin(main: tuple[int, int, bool], others: list[tuple[int, int, bool]], damp: float, calib: CalibSpec
             ) -> list[Row]:
    rows = []
    for i, (bits, group, act) in enumerate([main, *others]):
        p = QuantParams(bits=bits, group_size=group, act_order=act, damp=damp)
        rows.append(Row("main" if i == 0 else branch_name(p), p, calib, _LLAMA_DESC[(bits, group, act)]))
    return rows


BUILTIN: dict[str, list[Row]] = {
    "llama": _builtin((4, 128, False), [(4, 32, True), (4, 64, True), (4, 128, True), (8, -1, True),
                                        (8, 128, False), (3, -1, True), (3, 128, False)],
                      0.01, CalibSpec(dataset="wikitext2", seq_len=2048)),
    "code": _builtin((4, -1, True), [(4, 128, True), (4, 32, True), (3, -1, True), (3, 128, True),
                                     (3, 32, True)],
                     0.1, CalibSpec(dataset="code", seq_len=4096)),
}


def _row_from_dict(entry: dict, defaults: dict, where: str) -> Row:
    if not isinstance(entry, dict):
        raise CamelidError(f"{where}: a row must be a table of settings, got {entry!r}")
    merged = {"seq_len": 2048, **defaults, **entry}  # GPTQ's window length unless the matrix says
    unknown = sorted(set(merged) - ROW_KEYS)
    if unknown:
        raise CamelidError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(ROW_KEYS))}")
    try:
        params = QuantParams(**{k: v for k, v in merged.items() if k in _PARAM_KEYS})
        calib = CalibSpec(**{k: v for k, v in merged.items() if k in _CALIB_KEYS})
    except (TypeError, CamelidError) as e:  # the settings check themselves; say which row
        named = f"{where} ({merged['branch']!r})" if merged.get("branch") else where
        raise CamelidError(f"{named}: {e}") from None
    return Row(str(merged.get("branch") or branch_name(params)), params, calib, str(merged.get("description", "")))


def read_matrix(path: str | Path) -> list[Row]:
    """A matrix file: TOML or YAML with optional `defaults` and a list `rows` (keys: ROW_KEYS)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise CamelidError(f"matrix file {path}: {e.strerror}") from e
    try:
        if path.suffix == ".toml":
            data = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        elif path.suffix == ".json":
            data = json.loads(text)
        else:
            raise CamelidError(f"matrix file {path}: use .toml, .yaml/.yml or .json")
    except (ValueError, tomllib.TOMLDecodeError) as e:
        raise CamelidError(f"matrix file {path}: cannot parse ({e})") from e
    except Exception as e:  # yaml.YAMLError without importing yaml at module level
        if type(e).__module__.startswith("yaml"):
            raise CamelidError(f"matrix file {path}: cannot parse ({e})") from e
        raise
    if not isinstance(data, dict) or not isinstance(data.get("rows"), list) or not data["rows"]:
        raise CamelidError(f"matrix file {path}: needs a non-empty list `rows` (TOML: [[rows]] tables)")
    extra = sorted(set(data) - {"defaults", "rows"})
    if extra:
        raise CamelidError(f"matrix file {path}: unknown top-level key(s) {', '.join(extra)}")
    defaults = data.get("defaults") or {}
    return [_row_from_dict(e, defaults, f"{path} row {i + 1}") for i, e in enumerate(data["rows"])]


def load_matrix(spec: str | Path) -> list[Row]:
    """`llama`, `code` or a matrix file."""
    if str(spec) in BUILTIN:
        return list(BUILTIN[str(spec)])
    if not Path(spec).is_file():
        raise CamelidError(f"--matrix {spec!r}: neither a built-in ({', '.join(BUILTIN)}) nor a file")
    return read_matrix(spec)


def check_row(row: Row) -> None:
    """Settings a GPTQ checkpoint cannot have, named by the row's branch."""
    p, c, where = row.params, row.calib, f"matrix row {row.branch!r}"
    if not _REF.match(row.branch) or ".." in row.branch or row.branch.endswith((".lock", ".")):
        raise CamelidError(f"{where}: not a valid branch name (letters, digits, '.', '_', '-')")
    if _GPTQ_NAME.match(row.branch) and row.branch != branch_name(p):
        raise CamelidError(f"{where}: the name says {row.branch} but the settings give {branch_name(p)}")
    # bits, group size, damp, flags, nsamples: QuantParams and CalibSpec refuse bad values when built.
    # What a release asks beyond them: a GPTQ method, and windows long enough to hold a next token.
    checks = [
        (p.method in ("gptq", "rtn"), f"method must be gptq or rtn, got {p.method!r}"),
        (isinstance(c.seq_len, int) and c.seq_len >= 2, f"seq_len must be an integer >= 2, got {c.seq_len!r}"),
    ]
    for ok, message in checks:
        if not ok:
            raise CamelidError(f"{where}: {message}")


def check_rows(rows: list[Row]) -> set[str]:
    """Every row checked and branch names unique; returns the names."""
    if not rows:
        raise CamelidError("the matrix has no rows")
    seen: set[str] = set()
    for row in rows:
        check_row(row)
        if row.branch in seen:
            raise CamelidError(f"matrix row {row.branch!r}: duplicate branch name")
        seen.add(row.branch)
    return seen


def resolve_rows(rows: list[Row], context: int | None, *, only: list[str] | None = None,
                 seq_len: int | None = None, nsamples: int | None = None, dataset: str | None = None,
                 dataset_path: str | None = None, template: str | None = None) -> list[Row]:
    """Checked rows with the command line's overrides applied (they win over every row), `only` picked,
    and seq lens above the model's context capped to it (the row remembers what it asked for)."""
    seen = check_rows(rows)
    if only:
        missing = [b for b in only if b not in seen]
        if missing:
            raise CamelidError(f"--only {', '.join(missing)}: not in the matrix ({', '.join(r.branch for r in rows)})")
        rows = [r for r in rows if r.branch in only]
    out = []
    for row in rows:
        over = {k: v for k, v in (("seq_len", seq_len), ("nsamples", nsamples), ("dataset", dataset),
                                  ("dataset_path", dataset_path), ("template", template)) if v is not None}
        row = replace(row, calib=replace(row.calib, **over))
        check_row(row)
        if context is not None and row.calib.seq_len > context:
            row = replace(row, calib=replace(row.calib, seq_len=context), seq_len_requested=row.calib.seq_len)
        out.append(row)
    return out
