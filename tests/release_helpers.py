"""Checks shared by the release tests: the card against the files, its code blocks run, no local paths."""

from __future__ import annotations

import json
import re
import shlex
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def _env() -> dict:
    """This checkout's camelid for subprocesses that run from another folder."""
    import os

    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}


def card_blocks(text: str) -> list[tuple[str, str]]:
    """(language, code) of every fenced block of a markdown text."""
    return re.findall(r"^```(\w*)\n(.*?)^```$", text, flags=re.M | re.S)


def card_table(text: str) -> dict[str, dict[str, str]]:
    """The provided-files table: {branch: {column: cell}}."""
    lines = [ln for ln in text.splitlines() if ln.startswith("| ")]
    header_at = next(i for i, ln in enumerate(lines) if ln.startswith("| Branch | Bits |"))
    cols = [c.strip() for c in lines[header_at].strip("|").split("|")]
    table = {}
    for ln in lines[header_at + 2:]:
        cells = [c.strip() for c in ln.strip("|").split("|")]
        if len(cells) != len(cols):
            break
        row = dict(zip(cols, cells, strict=True))
        branch = re.sub(r"^\[(.*?)\]\(.*\)$", r"\1", row["Branch"])
        table[branch] = row
    return table


def front_matter(text: str) -> dict:
    m = re.match(r"^---\n(.*?)\n---\n", text, flags=re.S)
    assert m, "card has no YAML front matter"
    return yaml.safe_load(m.group(1))


def check_card_agrees(out: Path) -> dict:
    """The card's table against each branch's quantize_config.json and weight files; returns release.json."""
    record = json.loads((out / "release.json").read_text())
    cards = {b: (out / b / "README.md").read_text() for b in record["branches"]}
    assert len(set(cards.values())) == 1, "the card differs between branches"
    text = next(iter(cards.values()))
    table = card_table(text)
    assert list(table) == list(record["branches"])
    for branch, row in table.items():
        folder = out / branch
        q = json.loads((folder / "quantize_config.json").read_text())
        assert json.loads((folder / "config.json").read_text())["quantization_config"] == q
        assert int(row["Bits"]) == q["bits"]
        assert row["GS"] == ("None" if q["group_size"] == -1 else str(q["group_size"]))
        assert row["Act Order"] == ("Yes" if q["desc_act"] else "No")
        assert float(row["Damp %"]) == q["damp_percent"]
        assert row["Seq Len"].rstrip("*") == str(q["meta"]["seq_len"])
        weights = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
        entry = record["branches"][branch]
        assert entry["size_bytes"] == weights == entry["planned_size_bytes"]  # to the byte, before rounding
        shown = f"{weights / 1e9:.2f} GB" if weights >= 10**8 else f"{weights / 1e6:.2f} MB"
        assert row["Size"] == shown
        m = entry["measured"]
        assert float(row["KL"]) == pytest.approx(m["kld_mean"], rel=0.06, abs=5e-5) and row["PPL"] == f"{m['ppl']:.4f}"
        assert row["Top-1 %"] == f"{m['top1_agreement_pct']:.1f}"
        assert row["ExLlama"] == ("Yes" if q["bits"] == 4 else "No")
        assert (folder / "size_vs_kl.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    meta = front_matter(text)
    required = ["model_name", "model_type", "prompt_template", "quantized_by", "inference", "tags", "pipeline_tag"]
    card = record["card"]
    required += ["model_creator"] * bool(card["creator"]) + ["license"] * bool(card["license"])
    required += ["base_model", "base_model_relation"] * bool(card["original_repo"])
    for key in required:
        assert key in meta, key
    assert meta["inference"] is False
    return record


def assert_no_local_paths(out: Path, *roots: Path) -> None:
    needles = {str(r) for r in roots} | {str(REPO), "/work/", "/tmp/", "/home/"}
    for path in out.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for needle in needles:
                assert needle.encode() not in data, f"{path} carries the local path {needle}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_card_code(text: str, cwd: Path, libraries: tuple[str, ...] = ("camelid",)) -> list[str]:
    """Run every card block that uses camelid (or another of `libraries`), as written, from `cwd` (where
    the release folder sits): Python blocks in a fresh interpreter, `camelid ...` shell lines as commands;
    `camelid serve` is started, asked for /health and /generate, then stopped (its --port swapped for a
    free one). Returns the commands run."""
    ran = []
    imports = re.compile(r"^(import|from) (" + "|".join(map(re.escape, libraries)) + r")\b", flags=re.M)
    for lang, code in card_blocks(text):
        if lang == "python" and imports.search(code):
            proc = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True,
                                  timeout=600, env=_env())
            assert proc.returncode == 0, f"card Python block failed:\n{code}\n{proc.stderr[-3000:]}"
            ran.append("python: " + code.splitlines()[0])
        elif lang == "shell":
            for line in code.splitlines():
                if not line.startswith("camelid "):
                    continue
                argv = shlex.split(line)
                if argv[1] == "serve":
                    _serve_once(argv, cwd)
                else:
                    proc = subprocess.run([sys.executable, "-m", "camelid.cli", *argv[1:]], cwd=cwd,
                                          capture_output=True, text=True, timeout=600, env=_env())
                    assert proc.returncode == 0, f"card command failed: {line}\n{proc.stderr[-3000:]}"
                ran.append(line)
    return ran


def _serve_once(argv: list[str], cwd: Path) -> None:
    port = free_port()
    argv = list(argv)
    argv[argv.index("--port") + 1] = str(port)
    proc = subprocess.Popen([sys.executable, "-m", "camelid.cli", *argv[1:]], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env())
    try:
        deadline = time.monotonic() + 300
        while True:
            assert proc.poll() is None, f"camelid serve exited: {proc.stdout.read()[-3000:]}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "camelid serve did not come up"
            time.sleep(0.5)
        body = json.dumps({"inputs": "Once upon a time", "parameters": {"max_new_tokens": 4}}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/generate", data=body,
                                     headers={"content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=120) as r:
            assert r.status == 200 and "generated_text" in json.loads(r.read())
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
