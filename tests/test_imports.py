"""Every camelid module imports on its own, first, in a fresh process (no hidden import cycles), and the
format-level modules import without transformers.

Paying torch's and transformers' import (~1.5 and ~2 s of CPU) once per module would cost over a minute on
two cores, so a fresh interpreter imports the third-party libraries once and forks one child per module:
each child starts with no camelid module loaded (checked) and imports only its module. Third-party
modules being loaded already cannot hide a cycle among camelid's own modules.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import camelid

SRC = Path(camelid.__file__).resolve().parent
# What a checkpoint format and the shared owners need: torch at most, never transformers.
NO_TRANSFORMERS = ("camelid", "camelid.device", "camelid.dtypes", "camelid.errors", "camelid.checkpoint",
                   "camelid.checkpoint.source", "camelid.checkpoint.summary", "camelid.formats",
                   "camelid.formats.declared", "camelid.formats.gptq", "camelid.formats.gptq.config",
                   "camelid.formats.gptq.layout", "camelid.formats.gptq.pack", "camelid.formats.gptq.reader",
                   "camelid.quant", "camelid.quant.settings", "camelid.quant.methods", "camelid.quant.loop",
                   "camelid.runtime",
                   # what an evaluation task needs besides a model: templates, sampling settings, stops
                   "camelid.chat", "camelid.chat.templates", "camelid.runtime.sampling", "camelid.runtime.stops",
                   # GGUF export: its peak memory is a target (benchmarks/gguf_export.py), transformers is +160 MB
                   "camelid.export", "camelid.export.gguf", "camelid.export.gguf_tensors",
                   "camelid.export.gguf_vocab", "camelid.runtime.llamacpp")

FORK_EACH = r"""
import importlib, json, os, sys, traceback
preload, modules = sys.argv[1].split(","), sys.argv[2].split(",")
for name in filter(None, preload):
    importlib.import_module(name)
assert not [m for m in sys.modules if m.startswith("camelid")], "a preload imported camelid"
for module in modules:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            importlib.import_module(module)
            out = {"ok": True, "transformers": "transformers" in sys.modules}
        except BaseException:
            out = {"ok": False, "error": traceback.format_exc(limit=8)}
        os.write(w, json.dumps(out).encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        got = f.read()
    os.waitpid(pid, 0)
    print(json.dumps({module: json.loads(got) if got else {"ok": False, "error": "child died"}}))
"""


def all_modules() -> list[str]:
    names = []
    for path in sorted(SRC.rglob("*.py")):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def import_each(modules: list[str], preload: tuple[str, ...]) -> dict[str, dict]:
    """A fresh interpreter that imports `preload`, then one forked child per module."""
    env = {**os.environ, "PYTHONPATH": str(SRC.parent) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    r = subprocess.run([sys.executable, "-c", FORK_EACH, ",".join(preload), ",".join(modules)],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    results = {}
    for line in r.stdout.splitlines():
        if line.startswith("{"):
            results.update(json.loads(line))
    return results


def test_every_module_imports_first_on_its_own():
    modules = all_modules()
    assert {"camelid.formats.gptq.pack", "camelid.quant.api", "camelid.serve.app"} <= set(modules)
    results = import_each(modules, preload=("torch", "transformers"))
    assert set(results) == set(modules)
    failed = {m: r["error"] for m, r in results.items() if not r["ok"]}
    assert not failed, failed


def test_format_level_modules_import_without_transformers():
    results = import_each([*NO_TRANSFORMERS, "camelid.quant.api"], preload=("torch",))
    assert all(r["ok"] for r in results.values()), results
    assert results.pop("camelid.quant.api")["transformers"]  # the check sees transformers where it is used
    assert not [m for m, r in results.items() if r["transformers"]]
