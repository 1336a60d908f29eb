"""The cards' Performance table on camel45m: `camelid eval suite` on the source and the built branch (a small
MMLU subset, --suite-limit 2), a row attached from an earlier suite result, skipped columns stated, and a
rerun that reuses the recorded rows without loading a model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from release_helpers import assert_no_local_paths

from camelid.eval.suite import COLUMNS, card_average, format_row
from camelid.quant import RunOptions
from camelid.release import CardInfo, EvalSpec, load_matrix, resolve_rows
from camelid.release.performance import SuiteSpec
from camelid.release.repos import ReleaseRun, build_repositories
from camelid.release.siblings import STATE

pytestmark = pytest.mark.slow
SUBJECTS = ("abstract_algebra", "anatomy")


def _eval_root(shared: Path, tmp: Path) -> Path:
    """The eval data root with two MMLU subjects only (the other benchmarks' folders absent: skipped)."""
    root = tmp / "eval"
    for split in ("dev", "test"):
        (root / "mmlu" / split).mkdir(parents=True)
        for s in SUBJECTS:
            shutil.copy(shared / "eval" / "mmlu" / split / f"{s}_{split}.csv", root / "mmlu" / split)
    return root


def _attached(tmp: Path) -> Path:
    """A result in the form `camelid eval suite --json` prints, for a model evaluated elsewhere."""
    scores = {c: None for c, *_ in COLUMNS} | {"MMLU 0-shot": 44.8, "MMLU 5-shot": 47.1, "GSM CoT": 25.0}
    average, missing = card_average(scores)
    path = tmp / "tulu.json"
    path.write_text(json.dumps({"columns": [c for c, *_ in COLUMNS], "scores": scores, "average": average,
                                "average_complete": not missing,
                                "skipped": {c: "not run" for c in missing}, "model": "allenai/tulu-7b"}))
    return path


def _build(shared: Path, out: Path, suite: SuiteSpec) -> dict:
    rows = resolve_rows(load_matrix("llama"), 1024, only=["main"], nsamples=4, seq_len=64,
                        dataset=str(shared / "eval" / "wikitext2" / "wiki.test.raw"))
    card = CardInfo(name="Camel 45M", creator="camelid", license="apache-2.0", template="tulu",
                    repo_id="camelid-test/camel45m-GPTQ")
    run = ReleaseRun(RunOptions(device="cpu", progress=False), EvalSpec(windows=4))
    return build_repositories(shared / "models" / "camel45m", out, rows, card, run=run, suite=suite)


def test_attached_result_is_labelled_by_its_model(tmp_path):
    from camelid.release.performance import read_attached

    path = _attached(tmp_path)
    assert read_attached(str(path))[0] == "allenai/tulu-7b"
    assert read_attached(f"Tulu 7B={path}")[0] == "Tulu 7B"
    suite = json.loads(path.read_text())
    path.write_text(json.dumps({**suite, "model": str(tmp_path / "models" / "camel45m"), "revision": "gptq-4bit"}))
    assert read_attached(str(path))[0] == "camel45m (gptq-4bit)"  # a local folder's name, never this machine's path


def test_performance_table_for_source_branch_and_attached_result(shared_data, tmp_path, monkeypatch):
    out = tmp_path / "camel45m-GPTQ"
    suite = SuiteSpec(data=str(_eval_root(shared_data, tmp_path)), limit=2, attach=(str(_attached(tmp_path)),))
    _build(shared_data, out, suite)
    card = (out / "main" / "README.md").read_text()
    section = card.split("## Performance", 1)[1].split("<!-- performance end -->", 1)[0]
    recorded = {p.parent.name: json.loads(p.read_text()) for p in (out / STATE / "eval").glob("*/suite.json")}
    assert sorted(recorded) == ["GPTQ_main", "source"]
    source, branch = recorded["source"]["suite"], recorded["GPTQ_main"]["suite"]
    for s in (source, branch):  # MMLU ran (2 per subject), the rest was skipped with the suite's reason
        assert s["scores"]["MMLU 0-shot"] is not None and s["scores"]["MMLU 5-shot"] is not None
    expected = [format_row("allenai/tulu-7b", json.loads(_attached(tmp_path).read_text())).splitlines()[2],
                format_row("Camel 45M (source)", source).splitlines()[2],
                format_row("GPTQ main", branch).splitlines()[2]]
    lines = [ln for ln in section.splitlines() if ln.startswith("|")]
    assert lines[:2] == format_row("x", source).splitlines()[:2]  # the seeds' header, from camelid.eval.suite
    assert lines[2:] == expected
    assert "`--limit 2`" in section and "- GSM Direct: not run; no eval/gsm8k" in section  # attached; ours
    assert "- GSM CoT: no eval/gsm8k" in section and "- TydiQA GP: not run; no eval/tydiqa" in section
    assert_no_local_paths(out / "main", tmp_path, shared_data)  # what is published (not OUT/.camelid state)

    # rerun: the recorded rows are reused, no model is loaded for the suite
    import camelid.eval as ev

    monkeypatch.setattr(ev, "open_backend", lambda *a, **k: pytest.fail("suite rerun loaded a model"))
    _build(shared_data, out, suite)
    assert (out / "main" / "README.md").read_text() == card
