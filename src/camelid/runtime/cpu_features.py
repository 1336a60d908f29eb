"""The host CPU: its model name, SIMD feature flags, and the instruction-set level camelid's C++ kernels target.

Kernels are chosen at run time from these features, never fixed at install: the same wheel runs on an
AVX2 laptop and an AMX Xeon. `CAMELID_CPU_ISA=avx2` (or any level in `ISA_LEVELS` the host supports)
selects a lower level than the host's best, so the AVX2 path builds, runs and is tested on an AVX-512
machine too.
"""

from __future__ import annotations

import functools
import os
import platform
from dataclasses import dataclass
from pathlib import Path

from camelid.errors import CamelidError

# Best first. Each level needs all of its flags (Linux /proc/cpuinfo names) and compiles with its cflags.
ISA_LEVELS = ("avx512_vnni", "avx512", "avx_vnni", "avx2", "generic")
ISA_FLAGS = {
    "avx512_vnni": frozenset({"avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni"}),
    "avx512": frozenset({"avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512dq"}),
    "avx_vnni": frozenset({"avx2", "fma", "f16c", "avx_vnni"}),
    "avx2": frozenset({"avx2", "fma", "f16c"}),
    "generic": frozenset(),
}
ISA_CFLAGS = {
    "avx512_vnni": ["-mavx2", "-mfma", "-mf16c", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx512vnni"],
    "avx512": ["-mavx2", "-mfma", "-mf16c", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq"],
    "avx_vnni": ["-mavx2", "-mfma", "-mf16c", "-mavxvnni"],
    "avx2": ["-mavx2", "-mfma", "-mf16c"],
    "generic": [],
}
# Flags worth printing next to a benchmark: what decides which kernels are fast.
REPORTED_FLAGS = ("avx2", "fma", "f16c", "avx_vnni", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16",
                  "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16", "asimd", "sve")
ISA_ENV = "CAMELID_CPU_ISA"


@dataclass(frozen=True)
class CPUFeatures:
    model: str
    flags: frozenset[str]
    isa: str  # the level the C++ kernels build for: the host's best, or CAMELID_CPU_ISA
    forced: bool  # isa came from CAMELID_CPU_ISA

    @property
    def bf16_gemm(self) -> bool:
        """Whether dense bf16 GEMMs run natively (AVX512-BF16 or AMX); else prefill dequantizes to fp32.
        A forced level below avx512 behaves as a host without them."""
        native = bool(self.flags & {"avx512_bf16", "amx_bf16"})
        return native and self.isa in ("avx512_vnni", "avx512")

    def describe(self) -> str:
        """One line for a benchmark's header: model, the flags that decide kernel speed, ISA level, CPU count."""
        flags = " ".join(self.summary()["flags"]) or "no AVX2"
        return f"{self.model} ({flags}; ISA level {self.isa}{', forced' if self.forced else ''}), {os.cpu_count()} CPUs"

    def summary(self) -> dict:
        return {"model": self.model, "isa": self.isa, "isa_forced": self.forced,
                "flags": [f for f in REPORTED_FLAGS if f in self.flags], "bf16_gemm": self.bf16_gemm}


def _read_cpuinfo(path: Path = Path("/proc/cpuinfo")) -> tuple[str, frozenset[str]]:
    model, flags = platform.processor() or platform.machine(), frozenset()
    try:
        text = path.read_text()
    except OSError:
        return model, flags
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model in ("", platform.processor(), platform.machine()):
            model = value.strip()
        elif key in ("flags", "Features") and not flags:  # x86 / ARM spelling
            flags = frozenset(value.split())
    return model, flags


def best_isa(flags: frozenset[str]) -> str:
    return next(level for level in ISA_LEVELS if ISA_FLAGS[level] <= flags)


def parse_features(model: str, flags: frozenset[str], forced: str | None) -> CPUFeatures:
    best = best_isa(flags)
    if not forced:
        return CPUFeatures(model, flags, best, False)
    if forced not in ISA_LEVELS:
        raise CamelidError(f"{ISA_ENV}={forced!r}: choose from {', '.join(ISA_LEVELS)}")
    missing = ISA_FLAGS[forced] - flags
    if missing:
        raise CamelidError(f"{ISA_ENV}={forced!r}: this CPU lacks {', '.join(sorted(missing))} (its best is {best})")
    return CPUFeatures(model, flags, forced, True)


@functools.lru_cache(maxsize=1)
def cpu_features() -> CPUFeatures:
    model, flags = _read_cpuinfo()
    if not flags:  # not Linux: torch knows the x86 level, not VNNI
        import torch

        cap = torch.backends.cpu.get_cpu_capability()
        flags = ISA_FLAGS["avx512"] if cap.startswith("AVX512") else ISA_FLAGS["avx2"] if cap == "AVX2" else frozenset()
    return parse_features(model, flags, os.environ.get(ISA_ENV) or None)
