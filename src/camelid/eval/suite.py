"""The paper's row: eleven settings over six benchmarks, and the Average as the Tulu cards compute it.

The cards' "Average" is not the mean of the eleven columns: it is the mean over the six benchmarks of each
benchmark's mean over its settings (MMLU 0/5-shot, GSM direct/CoT, BBH direct/CoT, TyDiQA GP/CB, Codex
P@1/P@10, AlpacaFarm alone); Tulu 30B's row gives 44.7 that way (allenai/tulu-30b model card).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from camelid.errors import CamelidError
from camelid.eval.runner import run_eval
from camelid.eval.settings import EvalSettings

# (column, benchmark, data subfolder, settings overrides)
COLUMNS = (
    ("MMLU 0-shot", "MMLU", "mmlu", {"task": "mmlu", "shots": 0}),
    ("MMLU 5-shot", "MMLU", "mmlu", {"task": "mmlu", "shots": 5}),
    ("GSM Direct", "GSM", "gsm8k", {"task": "gsm8k", "cot": False}),
    ("GSM CoT", "GSM", "gsm8k", {"task": "gsm8k", "cot": True}),
    ("BBH Direct", "BBH", "bbh", {"task": "bbh", "cot": False}),
    ("BBH CoT", "BBH", "bbh", {"task": "bbh", "cot": True}),
    ("TydiQA GP", "TydiQA", "tydiqa", {"task": "tydiqa", "closed_book": False}),
    ("TydiQA CB", "TydiQA", "tydiqa", {"task": "tydiqa", "closed_book": True}),
    ("Codex-Eval P@1", "Codex", "humaneval", {"task": "codex", "pass_at": 1}),
    ("Codex-Eval P@10", "Codex", "humaneval", {"task": "codex", "pass_at": 10}),
    ("AlpacaFarm vs Davinci-003", "AlpacaFarm", "alpacafarm", {"task": "alpacafarm"}),
)


def card_average(scores: dict[str, float | None]) -> tuple[float | None, list[str]]:
    """(Average, benchmarks missing from it): the mean over benchmarks of the mean over their settings."""
    by_bench: dict[str, list[float]] = {}
    missing = []
    for column, bench, _, _ in COLUMNS:
        if scores.get(column) is None:
            missing.append(column)
        else:
            by_bench.setdefault(bench, []).append(scores[column])
    means = [sum(v) / len(v) for v in by_bench.values()]
    return (sum(means) / len(means) if means else None), missing


def run_suite(backend, data_root: str | Path, base: EvalSettings, out: str | Path | None = None,
              progress: bool = True) -> dict:
    """Every column whose data folder exists under `data_root` (and, for AlpacaFarm, with a judge)."""
    data_root = Path(data_root)
    scores: dict[str, float | None] = {}
    skipped: dict[str, str] = {}
    results = {}
    for column, _, folder, overrides in COLUMNS:
        if not (data_root / folder).is_dir():
            scores[column], skipped[column] = None, f"no {data_root / folder}"
            continue
        if overrides["task"] == "alpacafarm" and not base.judge_url:
            scores[column], skipped[column] = None, "no --judge"
            continue
        # The paper's settings per column; the user's --shots/--cot are for single tasks, not the suite.
        settings = replace(base, **{"shots": None, "cot": True, "closed_book": False, "pass_at": 1, **overrides})
        try:
            res = run_eval(backend, data_root / folder, settings, out, progress)
        except CamelidError as e:
            scores[column], skipped[column] = None, str(e)
            continue
        results[column] = res
        scores[column] = res["metrics"]["score"]
    average, missing = card_average(scores)
    described = backend.describe()
    # `model` and `revision` label the row where it is attached to a card (camelid release --performance)
    return {"model": described.get("model"), "revision": described.get("revision"), "backend": described,
            "columns": [c for c, *_ in COLUMNS], "scores": scores, "average": average,
            "average_complete": not missing, "skipped": skipped,
            "results": {c: r["metrics"] for c, r in results.items()}}


def table_header(columns: list[str]) -> str:
    """The seeds' Markdown header: Model, the columns, Average."""
    cols = ["Model", *columns, "Average"]
    return "| " + " | ".join(cols) + " |\n" + "|---" * len(cols) + "|"


def table_row(name: str, suite: dict) -> str:
    """One model's Markdown row under `table_header` (the Average flagged `*` if a column is missing)."""
    cells = ["-" if suite["scores"][c] is None else f"{suite['scores'][c]:.1f}" for c in suite["columns"]]
    avg = "-" if suite["average"] is None else f"{suite['average']:.1f}" + ("" if suite["average_complete"] else "*")
    return f"| {name} | " + " | ".join([*cells, avg]) + " |"


def format_row(name: str, suite: dict) -> str:
    """Header and row, and what a flagged Average is over."""
    lines = [table_header(suite["columns"]), table_row(name, suite)]
    if not suite["average_complete"]:
        lines.append("* over the benchmarks measured; missing: " + ", ".join(
            f"{c} ({suite['skipped'].get(c, '')})" for c in suite["columns"] if suite["scores"][c] is None))
    return "\n".join(lines)
