"""camelid release --formats gptq,awq,gguf,fp16 on stories260K: one folder per repository, planned bytes =
written bytes, every card's repositories and measured rows against the files, resume, push to one repo each."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from release_helpers import assert_no_local_paths, card_table, run_card_code
from test_release import DATA, STORIES
from test_release_push import FakeHub

import camelid
from camelid.checkpoint.output import LOCK, partial_dir, sha256_file
from camelid.errors import CamelidError
from camelid.quant import RunOptions
from camelid.release import CardInfo, EvalSpec, resolve_rows
from camelid.release.matrix import read_matrix
from camelid.release.push import push_repositories
from camelid.release.repos import ReleaseRun, build_repositories, plan_siblings
from camelid.release.siblings import STATE, ReleaseFormats

pytest.importorskip("llama_cpp")  # the GGUF repository is measured (and its K-quants made) by llama.cpp
pytestmark = pytest.mark.slow

NAMES = {"gptq": "stories260K-GPTQ", "awq": "stories260K-AWQ", "gguf": "stories260K-GGUF", "fp16": "stories260K"}
REPO_IDS = {f: f"camelid-test/{n}" for f, n in NAMES.items()}
# stories260K's down_proj reads 172 inputs: AWQ's search needs groups that divide every Linear's input
SPEC = ReleaseFormats(("gptq", "awq", "gguf", "fp16"), gguf_types=("f16", "q8_0", "q4_k_m"), awq_group_size=4)
CARD = CardInfo(name="stories260K", creator="Andrej Karpathy", original_repo="karpathy/tinyllamas", license="mit",
                template="tulu", repo_id="camelid-test/stories260K")


def rows(tmp: Path) -> list:
    (tmp / "m.toml").write_text('[[rows]]\nbranch = "main"\nbits = 4\ngroup_size = 32\nact_order = true\n')
    return resolve_rows(read_matrix(tmp / "m.toml"), 512, dataset=str(DATA), seq_len=32, nsamples=4)


def build(out: Path, spec: ReleaseFormats = SPEC) -> dict:
    run = ReleaseRun(RunOptions(device="cpu", progress=False), EvalSpec(windows=4))
    return build_repositories(STORIES, out, rows(out.parent), CARD, spec, run)


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("formats") / "out"
    build(out)
    return out


def _siblings(out: Path) -> dict:
    return json.loads((out / STATE / "siblings.json").read_text())


def _repositories(text: str) -> list[str]:
    block = text.split("## Repositories available", 1)[1].split("<!--", 1)[0]
    return re.findall(r"\]\(https://huggingface\.co/([^)]+)\)", block)


def _table(text: str, first_column: str) -> list[dict]:
    lines = [ln for ln in text.splitlines() if ln.startswith("| ")]
    at = next(i for i, ln in enumerate(lines) if ln.startswith(f"| {first_column} |"))
    cols = [c.strip() for c in lines[at].strip("|").split("|")]
    out = []
    for ln in lines[at + 2:]:
        cells = [c.strip() for c in ln.strip("|").split("|")]
        if len(cells) != len(cols):
            break
        out.append(dict(zip(cols, cells, strict=True)))
    return out


def test_one_folder_per_repository_and_plan_equals_bytes(release):
    assert sorted(p.name for p in release.iterdir()) == sorted([*NAMES.values(), STATE])
    index = _siblings(release)
    assert [(s["format"], s["repo"]) for s in index["siblings"]] == list(REPO_IDS.items())
    records = index["records"]
    for fmt in ("awq", "fp16"):
        folder = release / NAMES[fmt]
        files = {p.name: p.stat().st_size for p in folder.glob("*.safetensors")}
        assert files == records[fmt]["files"] and sum(files.values()) == records[fmt]["planned_size_bytes"]
    gguf = records["gguf"]["files"]
    assert [f["file"] for f in gguf] == ["stories260k.F16.gguf", "stories260k.Q8_0.gguf", "stories260k.Q4_K_M.gguf"]
    for f in gguf:
        size = (release / NAMES["gguf"] / f["file"]).stat().st_size
        assert f["size_bytes"] == size
        assert f["planned_size_bytes"] == (None if f["type"] == "Q4_K_M" else size)  # K-quant mix: llama.cpp's
    # --plan lists the same repositories and sizes
    plan = {p["format"]: p for p in plan_siblings(STORIES, release, rows(release.parent), CARD, SPEC, RunOptions())}
    assert plan["awq"]["branches"][0]["size_bytes"] == records["awq"]["size_bytes"]
    assert plan["fp16"]["branches"][0]["files"] == records["fp16"]["files"]
    assert [f["planned_size_bytes"] for f in plan["gguf"]["files"]] == [f["planned_size_bytes"] for f in gguf]
    assert_no_local_paths(release, STORIES.resolve(), release)


def test_sibling_cards_code_runs_as_written(release, tmp_path):
    # Each card's Python, as a user pastes it: the repo id resolves to the local folder (cwd/camelid-test/...),
    # a GGUF file name to the file in the folder it was downloaded to. (vLLM and llama-cli are not installed.)
    (tmp_path / "camelid-test").symlink_to(release)
    ran = run_card_code((release / NAMES["fp16"] / "README.md").read_text(), tmp_path, ("camelid", "transformers"))
    assert [r.split(": ", 1)[1] for r in ran] == ["from transformers import AutoModelForCausalLM, AutoTokenizer",
                                                  "import camelid"]
    gguf = run_card_code((release / NAMES["gguf"] / "README.md").read_text(), release / NAMES["gguf"], ("llama_cpp",))
    assert gguf == ["python: from llama_cpp import Llama"]
    # AWQ with 4-column groups (stories260K's 172-wide down_proj): GPTQModel's kernels refuse that group size,
    # so the card offers camelid only and says why (a 32-group camelid AWQ in Transformers: test_awq_compat)
    text = (release / NAMES["awq"] / "README.md").read_text()
    assert "AutoModelForCausalLM" not in text and "take group sizes -1, 16, 32, 64, 128, and this one is 4" in text
    assert run_card_code(text, tmp_path, ("camelid", "transformers")) == ["python: import camelid"]
    from camelid.release.sibling_cards import render_awq
    from camelid.release.siblings import Sibling

    record = _siblings(release)["records"]["awq"]
    g128 = render_awq(CARD, Sibling("awq", release / NAMES["awq"], REPO_IDS["awq"]),
                      {**record, "params": {**record["params"], "group_size": 128}}, STORIES, {})
    assert 'AutoModelForCausalLM.from_pretrained("camelid-test/stories260K-AWQ"' in g128


def test_every_card_links_exactly_the_siblings_and_measures_every_row(release):
    records = _siblings(release)["records"]
    gptq = json.loads((release / NAMES["gptq"] / "release.json").read_text())
    cards = {"gptq": release / NAMES["gptq"] / "main" / "README.md",
             **{f: release / NAMES[f] / "README.md" for f in ("awq", "gguf", "fp16")}}
    for fmt, path in cards.items():
        text = path.read_text()
        assert _repositories(text) == [*REPO_IDS.values(), "karpathy/tinyllamas"], fmt
    # GPTQ: its branch table as before, KL and top-1 on every row
    table = card_table(cards["gptq"].read_text())
    m = gptq["branches"]["main"]["measured"]
    assert table["main"]["Top-1 %"] == f"{m['top1_agreement_pct']:.1f}"
    # AWQ: main only, 4-bit 4g here, usage with vLLM and Transformers
    awq = cards["awq"].read_text()
    (row,) = _table(awq, "Branch")
    assert (row["Bits"], row["GS"], row["Size"]) == ("4", "4", f"{records['awq']['size_bytes'] / 1e6:.2f} MB")
    assert row["Top-1 %"] == f"{records['awq']['measured']['top1_agreement_pct']:.1f}"
    assert "vllm serve camelid-test/stories260K-AWQ --quantization awq" in awq
    assert json.loads((release / NAMES["awq"] / "config.json").read_text())["quantization_config"]["version"] == "gemm"
    # GGUF: the files table with the measured columns
    gguf = _table(cards["gguf"].read_text(), "Name")
    assert [r["Quant method"] for r in gguf] == ["F16", "Q8_0", "Q4_K_M"]
    assert [r["Bits"] for r in gguf] == ["16", "8", "4"]
    for r, f in zip(gguf, records["gguf"]["files"], strict=True):
        assert r["Name"].startswith(f"[{f['file']}](https://huggingface.co/camelid-test/stories260K-GGUF/blob/main/")
        assert r["Size"] == f"{f['size_bytes'] / 1e6:.2f} MB"
        assert r["Max RAM required"] == f"{(f['size_bytes'] + 2_500_000_000) / 1e9:.2f} GB"
        assert r["Top-1 %"] == f"{f['measured']['top1_agreement_pct']:.1f}" and float(r["KL"]) >= 0
    assert gguf[2]["Use case"] == "medium, balanced quality - recommended"
    kl = {f["type"]: f["measured"]["kld_mean"] for f in records["gguf"]["files"]}
    assert kl["F16"] < kl["Q8_0"] < kl["Q4_K_M"]
    # fp16: one row, KL ~0 against the fp32 source
    (row,) = _table(cards["fp16"].read_text(), "Branch")
    assert row["Dtype"] == "fp16" and records["fp16"]["measured"]["kld_mean"] < 1e-3


def test_each_repository_loads(release):
    for fmt in ("awq", "fp16"):
        model, tok = camelid.load(release / NAMES[fmt], device="cpu")
        assert model.config.vocab_size == 512
    from camelid.runtime.llamacpp import load_gguf

    model, tok = load_gguf(release / NAMES["gguf"] / "stories260k.Q8_0.gguf")
    assert len(model.greedy(tok("Once upon a time")["input_ids"], 4)) >= 1


def test_rerun_keeps_everything_and_a_half_built_gguf_resumes(release, tmp_path):
    copy = tmp_path / "out"
    shutil.copytree(release, copy)
    sums = {p: sha256_file(p) for p in copy.rglob("*")  # every published file (release.json: the index)
            if p.is_file() and STATE not in p.parts and p.name != "release.json"}
    records = build(copy)
    assert not any(r["built"] for f, r in records.items() if f != "gptq")
    assert not any(b["built"] for b in records["gptq"]["branches"].values())
    assert {p: sha256_file(p) for p in sums} == sums  # nothing rewritten, cards included
    # a run killed while writing GGUF files: the finished F16 file is in the locked partial folder
    gguf = copy / NAMES["gguf"]
    work = partial_dir(gguf)
    work.mkdir()
    shutil.copy2(gguf / "stories260k.F16.gguf", work / "stories260k.F16.gguf")
    (work / LOCK).write_text("{}")  # its writer is gone (no flock): the lock is stale
    kept = (work / "stories260k.F16.gguf").stat().st_mtime_ns
    shutil.rmtree(gguf)
    records = build(copy)
    assert records["gguf"]["built"] and not records["awq"]["built"] and not records["fp16"]["built"]
    assert (gguf / "stories260k.F16.gguf").stat().st_mtime_ns == kept  # not written again
    assert sorted(p.name for p in gguf.glob("*.gguf")) == sorted(f["file"] for f in records["gguf"]["files"])
    assert not work.exists()


def test_push_each_repository_to_its_own_repo(release):
    class Hubs:  # one in-memory Hub repo per repo id, behind HfApi's methods
        def __init__(self):
            self.repos: dict[str, FakeHub] = {}

        def whoami(self):
            return {"name": "tester"}

        def _hub(self, repo_id) -> FakeHub:
            return self.repos.setdefault(repo_id, FakeHub())

        def create_repo(self, repo_id, **kw):
            self._hub(repo_id).create_repo(repo_id, **kw)

        def create_branch(self, repo_id, **kw):
            return self._hub(repo_id).create_branch(repo_id, **kw)

        def list_repo_tree(self, repo_id, **kw):
            return self._hub(repo_id).list_repo_tree(repo_id, **kw)

        def upload_folder(self, repo_id, **kw):
            return self._hub(repo_id).upload_folder(repo_id, **kw)

        def upload_file(self, repo_id, **kw):
            return self._hub(repo_id).upload_file(repo_id=repo_id, **kw)

    hubs = Hubs()
    pushed = push_repositories(release, api=hubs)
    assert [p["repo_id"] for p in pushed] == list(REPO_IDS.values())
    assert sorted(hubs.repos) == sorted(REPO_IDS.values())
    for fmt in ("awq", "gguf", "fp16"):
        local = {p.name: p.read_bytes() for p in (release / NAMES[fmt]).iterdir()}
        remote = {k: v for k, v in hubs.repos[REPO_IDS[fmt]].branches["main"].items() if k != ".gitattributes"}
        assert remote == local
    assert "main" in hubs.repos[REPO_IDS["gptq"]].branches
    again = push_repositories(release, api=hubs)  # resumable: everything already there
    assert all(p["pushed"] == [] for p in again)


def test_bad_formats_and_missing_llama_cpp_fail_before_any_work(tmp_path, monkeypatch):
    with pytest.raises(CamelidError, match="--formats: exl2"):
        ReleaseFormats(("gptq", "exl2"))
    import camelid.runtime.llamacpp as llamacpp

    def absent(what):
        raise CamelidError(f"{what} needs llama-cpp-python: pip install 'camelid[gguf]'")

    monkeypatch.setattr(llamacpp, "require_llama_cpp", absent)
    out = tmp_path / "out"
    with pytest.raises(CamelidError, match=r"GGUF repository .* needs llama-cpp-python: pip install 'camelid\[gguf\]'"):
        build(out, ReleaseFormats(("gptq", "gguf"), gguf_types=("q8_0",)))
    assert not out.exists()
