"""Every camelid module imports on its own, first, in a fresh interpreter (no hidden import cycles), and the
format-level modules import without transformers."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import camelid

SRC = Path(camelid.__file__).resolve().parent
# What a checkpoint format and the shared owners need: torch at most, never transformers.
NO_TRANSFORMERS = ("camelid", "camelid.device", "camelid.dtypes", "camelid.errors", "camelid.checkpoint",
                   "camelid.formats", "camelid.formats.declared", "camelid.formats.gptq",
                   "camelid.formats.gptq.config", "camelid.formats.gptq.layout", "camelid.formats.gptq.pack",
                   "camelid.formats.gptq.reader", "camelid.quant", "camelid.runtime")


def all_modules() -> list[str]:
    names = []
    for path in sorted(SRC.rglob("*.py")):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def import_alone(module: str) -> tuple[str, int, str]:
    code = (f"import sys; import {module}; "
            "print('transformers' in sys.modules, sum(m.startswith('camelid') for m in sys.modules))")
    env = {**os.environ, "PYTHONPATH": str(SRC.parent) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    return module, r.returncode, r.stdout.strip().splitlines()[-1] if r.returncode == 0 else r.stderr[-2000:]


def test_every_module_imports_first_in_a_fresh_interpreter():
    modules = all_modules()
    assert "camelid.formats.gptq.pack" in modules and "camelid.quant.engine" in modules
    # one interpreter per module; a few at a time (each pays torch's import, ~1.5 s of CPU)
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        results = list(pool.map(import_alone, modules))
    failed = {m: out for m, rc, out in results if rc != 0}
    assert not failed, failed
    loads_transformers = {m for m, _, out in results if out.split()[0] == "True"}
    assert not loads_transformers & set(NO_TRANSFORMERS), sorted(loads_transformers & set(NO_TRANSFORMERS))
    assert "camelid.quant.engine" in loads_transformers  # the check can see transformers when it is there
