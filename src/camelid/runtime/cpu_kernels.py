"""Build camelid's C++ CPU kernels (runtime/cpu/q4x8.cpp) for this host at first use, and say whether they run.

The extension is compiled by `torch.utils.cpp_extension.load` with the flags of the CPU's ISA level
(`cpu_features`), into a cache folder keyed by that level, the torch version and the source's hash, so
later processes import it in milliseconds. Without a C++ compiler, or with `CAMELID_CPU_KERNELS=0`, the
build is skipped and the `q4x8` kernel reports itself unavailable: layers fall back to torch's kernels.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import shutil
from pathlib import Path

from camelid.runtime.cpu_features import ISA_CFLAGS, cpu_features

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("cpu") / "q4x8.cpp"
DISABLE_ENV = "CAMELID_CPU_KERNELS"  # "0": never build or load the extension (the no-compiler fallback)
CACHE_ENV = "CAMELID_KERNEL_CACHE"


def cache_root() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "camelid" / "kernels"


def _compiler() -> str | None:
    return shutil.which(os.environ.get("CXX") or "c++") or shutil.which("g++") or shutil.which("clang++")


def unavailable_reason() -> str | None:
    """Why the C++ kernels cannot be used here (checked without building), or None."""
    if os.environ.get(DISABLE_ENV, "1").lower() in ("0", "false", "off", "no"):
        return f"disabled by {DISABLE_ENV}=0"
    if _compiler() is None:
        return "no C++ compiler (c++/g++/clang++, or $CXX) on PATH"
    return None


_errors: dict[str, str] = {}


def load_extension(isa: str | None = None):
    """The compiled q4x8 module for `isa` (default: the host's level, see `cpu_features`), or None when it
    cannot be built; the reason is logged once and kept for `build_error`."""
    return _load(isa or cpu_features().isa)


@functools.cache
def _load(isa: str):
    import torch
    from torch.utils import cpp_extension

    reason = unavailable_reason()
    if reason:
        _errors[isa] = reason
        return None
    # -fopenmp: at::parallel_for is a header template that runs `#pragma omp parallel` in OUR object file
    # (ATen/ParallelOpenMP.h); compiled without it the pragma is ignored and every call runs on one thread
    # (measured: q4x8 11008x4096 at 1 row, 2 threads: 2.25 ms without, the 1-thread time). Linking with
    # -fopenmp asks for libgomp.so.1, the soname torch's wheel already loaded, so one OpenMP runtime (and
    # torch.set_num_threads) governs both.
    cflags = ["-O3", "-fopenmp", *ISA_CFLAGS[isa]]
    digest = hashlib.sha256(SOURCE.read_bytes() + " ".join(cflags).encode()).hexdigest()[:12]
    name = f"camelid_q4x8_{isa}"
    build_dir = cache_root() / f"{name}-torch{torch.__version__.replace('+', '_')}-{digest}"
    build_dir.mkdir(parents=True, exist_ok=True)
    try:
        return cpp_extension.load(name=name, sources=[str(SOURCE)], extra_cflags=cflags, extra_ldflags=["-fopenmp"],
                                  build_directory=str(build_dir),
                                  verbose=False)
    except (RuntimeError, OSError, ImportError) as e:  # compiler errors arrive as RuntimeError
        _errors[isa] = f"build failed ({type(e).__name__}: {str(e).strip().splitlines()[-1][:200] if str(e) else ''})"
        log.warning("camelid C++ kernels for %s unavailable, using torch's kernels: %s", isa, _errors[isa])
        return None


def build_error(isa: str | None = None) -> str | None:
    return _errors.get(isa or cpu_features().isa)


def status() -> dict:
    """What `camelid info` and the benchmarks report: the ISA level, and whether the C++ path runs."""
    feats = cpu_features()
    ext = load_extension()
    return {"cpu": feats.summary(), "cpp_kernels": ext.compiled_path() if ext else None,
            "cpp_kernels_unavailable": None if ext else build_error()}
