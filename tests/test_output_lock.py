"""One writer per OUT: a second quantize run into the same OUT refuses at once and leaves the first's output as
it would be alone; a killed run's lock does not block its resume; another model into its partial OUT is refused."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from helpers import STORIES, crash_after_layer
from safetensors.torch import load_file, save_file

from camelid.checkpoint.output import LOCK
from camelid.errors import CamelidError
from camelid.quant import CalibSpec, QuantParams, RunOptions, loop, quantize

CALIB = Path(__file__).resolve().parents[1] / "examples" / "data" / "tinystories_sample.txt"
CAL = CalibSpec(dataset="file", dataset_path=str(CALIB), seq_len=64, nsamples=8)
QUIET = RunOptions(progress=False)


def _q(src, out, bits):
    return quantize(src, out, QuantParams(bits=bits, group_size=32), CAL, QUIET)


def _files(folder: Path) -> dict[str, bytes]:
    """Every output file's bytes, except the per-module timings (quant_log.csv's `seconds`) and the manifest
    that hashes them."""
    out = {}
    for p in sorted(folder.iterdir()):
        if p.name == "SHA256SUMS.json":
            continue
        data = p.read_bytes()
        if p.name == "quant_log.csv":
            data = b"\n".join(b",".join(line.split(b",")[:-1]) for line in data.splitlines())
        out[p.name] = data
    return out


def _hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def alone(tmp_path_factory) -> Path:
    return _q(STORIES, tmp_path_factory.mktemp("alone") / "q", 4)


def test_second_writer_refuses_first_is_unharmed(tmp_path, monkeypatch, alone):
    out = tmp_path / "q"
    real_save = loop.save_progress
    second_tried = threading.Event()

    def hold_after_layer_0(work, progress, hidden, layer):
        real_save(work, progress, hidden, layer)
        if layer == 0:
            second_tried.wait(120)  # the first run is mid-way when the second one starts

    monkeypatch.setattr(loop, "save_progress", hold_after_layer_0)
    first: dict = {}
    thread = threading.Thread(target=lambda: first.setdefault("out", _q(STORIES, out, 4)))
    thread.start()
    try:
        while not (out.with_name("q.partial") / "state" / "progress.json").exists():
            assert thread.is_alive()
            thread.join(0.05)
        with pytest.raises(CamelidError, match="being written by another camelid run") as e:
            _q(STORIES, out, 8)  # the case: --bits 8 three seconds later
        assert f'"pid": {os.getpid()}' in str(e.value)  # who holds it
    finally:
        second_tried.set()
        thread.join(300)
    assert first["out"] == out
    assert _files(out) == _files(alone)  # byte for byte what a run alone writes
    assert not (out / LOCK).exists()


def _interrupted(tmp_path: Path, monkeypatch, name: str = "q") -> Path:
    real_save = loop.save_progress
    monkeypatch.setattr(loop, "save_progress", crash_after_layer(1))
    with pytest.raises(KeyboardInterrupt):
        _q(STORIES, tmp_path / name, 4)
    monkeypatch.setattr(loop, "save_progress", real_save)
    return tmp_path / f"{name}.partial"


def _die_holding_lock(lock: Path) -> int:
    """A process that takes the lock as a writer does, then is killed (SIGKILL: no cleanup runs)."""
    code = ("import fcntl, json, os, socket, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
            "fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB); os.ftruncate(fd, 0); "
            "os.write(fd, json.dumps({'pid': os.getpid(), 'host': socket.gethostname()}).encode()); "
            "print('locked', flush=True); time.sleep(600)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(lock)], stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline() == b"locked\n"
        with pytest.raises(CamelidError, match="being written by another camelid run"):  # alive: refused
            _q(STORIES, lock.parent.with_name(lock.parent.name.removesuffix(".partial")), 4)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    return proc.pid


def test_killed_runs_stale_lock_does_not_block_resume(tmp_path, monkeypatch, alone):
    partial = _interrupted(tmp_path, monkeypatch)
    pid = _die_holding_lock(partial / LOCK)
    assert json.loads((partial / LOCK).read_text())["pid"] == pid  # the dead writer's lock file is still there
    out = _q(STORIES, tmp_path / "q", 4)  # taken over: the run resumes and completes
    assert _files(out) == _files(alone)


def test_another_model_into_a_partial_out_is_refused(tmp_path, monkeypatch, alone):
    partial = _interrupted(tmp_path, monkeypatch)
    other = tmp_path / "other"  # same config, shapes and flags; one weight differs
    shutil.copytree(STORIES, other)
    w = load_file(other / "model.safetensors")
    w["model.layers.4.mlp.down_proj.weight"][0, 0] += 1.0
    save_file(w, other / "model.safetensors", metadata={"format": "pt"})
    before = _hashes(partial)
    with pytest.raises(CamelidError, match="unfinished run with other settings"):
        _q(other, tmp_path / "q", 4)
    # the partial run is left as it was (the lock file names whoever last held it, so it is not compared)
    assert {k: v for k, v in _hashes(partial).items() if k != LOCK} == {k: v for k, v in before.items() if k != LOCK}
    assert _files(_q(STORIES, tmp_path / "q", 4)) == _files(alone)
