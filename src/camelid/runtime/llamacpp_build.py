"""CMAKE_ARGS that build llama-cpp-python (the `gguf` extra) from source for this host's CPU features.

Never -march=native: with GGML_NATIVE on, ggml compiles for the build machine (an AVX-512 build dies with
SIGILL on an AVX2 CPU) and re-enables AMX, whose path segfaulted on the Sapphire Rapids Xeon camelid is
tested on. With GGML_NATIVE off, each ggml switch is set from /proc/cpuinfo and AMX stays off. `make test`
runs

    CMAKE_ARGS="$(python -m camelid.runtime.llamacpp_build)" pip install --no-binary llama-cpp-python ...
"""

from __future__ import annotations

# ggml's x86 switches (llama.cpp ggml/CMakeLists.txt) and the /proc/cpuinfo flags each one compiles for
# (ggml/src/ggml-cpu/CMakeLists.txt: GGML_AVX512 adds -mavx512f -mavx512cd -mavx512vl -mavx512dq -mavx512bw).
# A switch is ON only when the CPU has every flag it needs, the AVX-512 extensions only on top of GGML_AVX512.
GGML_SWITCHES: dict[str, frozenset[str]] = {
    "GGML_SSE42": frozenset({"sse4_2"}),
    "GGML_AVX": frozenset({"avx"}),
    "GGML_AVX2": frozenset({"avx2"}),
    "GGML_BMI2": frozenset({"bmi2"}),
    "GGML_FMA": frozenset({"fma"}),
    "GGML_F16C": frozenset({"f16c"}),
    "GGML_AVX_VNNI": frozenset({"avx_vnni"}),
    "GGML_AVX512": frozenset({"avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw"}),
}
AVX512_EXTENSIONS = {"GGML_AVX512_VBMI": "avx512vbmi", "GGML_AVX512_VNNI": "avx512_vnni",
                     "GGML_AVX512_BF16": "avx512_bf16"}
ALWAYS_OFF = ("GGML_NATIVE", "GGML_AMX_TILE", "GGML_AMX_INT8", "GGML_AMX_BF16")


def llamacpp_cmake_args(flags: frozenset[str]) -> str:
    """`-D` options for a CPU with these /proc/cpuinfo flags (on ARM every x86 switch is OFF and ggml builds
    its portable baseline)."""
    on = {opt: needs <= flags for opt, needs in GGML_SWITCHES.items()}
    on |= {opt: on["GGML_AVX512"] and flag in flags for opt, flag in AVX512_EXTENSIONS.items()}
    on |= dict.fromkeys(ALWAYS_OFF, False)
    return " ".join(f"-D{opt}={'ON' if v else 'OFF'}" for opt, v in on.items())


def main() -> None:
    from camelid.runtime.cpu_features import cpu_features

    print(llamacpp_cmake_args(cpu_features().flags))


if __name__ == "__main__":
    main()
