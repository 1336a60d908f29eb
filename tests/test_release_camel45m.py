"""camelid release on camel45m: the 4-row matrix end to end (card vs files, card code blocks, each branch in
Transformers via GPTQModel and in camelid), and a build killed during its second branch then resumed."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from release_helpers import REPO, _env, assert_no_local_paths, check_card_agrees, run_card_code

import camelid
from camelid.quant import RunOptions
from camelid.release import CardInfo, EvalSpec, build_release, load_matrix, resolve_rows

pytestmark = pytest.mark.slow
BRANCHES = ["main", "gptq-4bit-32g-actorder_True", "gptq-3bit-128g-actorder_False", "gptq-8bit--1g-actorder_True"]
REPO_ID = "camelid-test/camel45m-GPTQ"


def camel_rows(shared_data: Path, only: list[str], nsamples: int = 4, seq_len: int = 64):
    # the llama matrix (TheBloke's Tulu 7B rows), small calibration for a quick test
    return resolve_rows(load_matrix("llama"), 1024, only=only, nsamples=nsamples, seq_len=seq_len,
                        dataset=str(shared_data / "eval" / "wikitext2" / "wiki.test.raw"))


@pytest.fixture(scope="module")
def camel(shared_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("camel") / REPO_ID
    card = CardInfo(name="Camel 45M", creator="camelid", license="apache-2.0", template="tulu", repo_id=REPO_ID)
    build_release(shared_data / "models" / "camel45m", out, camel_rows(shared_data, BRANCHES), card,
                  RunOptions(device="cpu", progress=False), EvalSpec(windows=4))
    return out


def test_camel45m_card_agrees_with_files(camel, shared_data):
    record = check_card_agrees(camel)
    assert sorted(record["branches"]) == sorted(BRANCHES)  # in the matrix order
    for b in record["branches"].values():
        m = b["measured"]
        assert m["windows"] == 4 and 0 <= m["kld_mean"] and 0 < m["top1_agreement_pct"] <= 100
    kl = {b: e["measured"]["kld_mean"] for b, e in record["branches"].items()}
    assert kl["gptq-8bit--1g-actorder_True"] < kl["main"] < kl["gptq-3bit-128g-actorder_False"]
    assert_no_local_paths(camel, camel.parent, shared_data)


@pytest.mark.compat
def test_camel45m_branches_load_in_transformers_and_camelid(camel):
    pytest.importorskip("gptqmodel")
    pytest.importorskip("optimum")
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")
    from transformers import AutoModelForCausalLM

    x = torch.randint(3, 32000, (1, 32), generator=torch.Generator().manual_seed(0))
    for branch in BRANCHES:
        ours, _ = camelid.load(camel, revision=branch, device="cpu", dtype="float32")
        hf = AutoModelForCausalLM.from_pretrained(camel / branch, device_map="cpu", dtype=torch.float16)
        assert type(hf.model.layers[0].self_attn.q_proj).__module__.startswith("gptqmodel"), branch
        with torch.no_grad():
            want, got = ours(x).logits, hf(x).logits.float()
        assert (got - want).abs().max() < 0.05 * want.abs().max(), branch  # fp16 kernels vs fp32
        del ours, hf


def test_camel45m_card_code_blocks_run(camel):
    ran = run_card_code((camel / "main" / "README.md").read_text(), camel.parent.parent)
    assert len(ran) >= 4


_BUILD = """
import sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from test_release_camel45m import build_two
build_two(Path({shared!r}), Path({out!r}))
"""


def build_two(shared_data: Path, out: Path) -> dict:
    rows = camel_rows(shared_data, ["main", "gptq-3bit-128g-actorder_False"], nsamples=16, seq_len=128)
    return build_release(shared_data / "models" / "camel45m", out, rows, CardInfo(name="Camel 45M"),
                         RunOptions(device="cpu", progress=False), EvalSpec(windows=2))


def test_kill_during_second_branch_then_resume(shared_data, tmp_path):
    out = tmp_path / "rel"
    second = "gptq-3bit-128g-actorder_False"
    progress = out / f"{second}.partial" / "state" / "progress.json"
    code = _BUILD.format(tests=str(REPO / "tests"), shared=str(shared_data), out=str(out))
    proc = subprocess.Popen([sys.executable, "-c", code], env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 600
    while not progress.exists():
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # mid-branch: at least one layer of the second branch is done
    proc.wait()
    state = json.loads(progress.read_text())
    assert 1 <= state["layers_done"] < 4
    first = out / "main" / "model.safetensors"
    stamp = first.stat().st_mtime_ns
    record = build_two(shared_data, out)
    assert {b: e["built"] for b, e in record["branches"].items()} == {"main": False, second: True}
    assert first.stat().st_mtime_ns == stamp  # the first branch was not redone
    # the second resumed through quantize's own resume: the layers finished before the kill kept their log
    with open(out / second / "quant_log.csv") as f:
        log = list(csv.DictReader(f))
    assert log[: len(state["log"])] == [{k: str(v) for k, v in r.items()} for r in state["log"]]
    check_card_agrees(out)
