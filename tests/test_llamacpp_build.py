"""The CMAKE_ARGS `make test` builds llama-cpp-python with: this CPU's features, never native, never AMX."""

import subprocess
import sys

from camelid.runtime.llamacpp_build import llamacpp_cmake_args

AVX2 = frozenset("sse4_2 avx avx2 bmi2 fma f16c".split())
SAPPHIRE_RAPIDS = AVX2 | frozenset("avx_vnni avx512f avx512cd avx512vl avx512dq avx512bw avx512vbmi avx512_vnni "
                                   "avx512_bf16 amx_tile amx_int8 amx_bf16".split())


def _options(flags) -> dict[str, str]:
    return dict(opt.removeprefix("-D").split("=") for opt in llamacpp_cmake_args(flags).split())


def test_avx2_cpu_gets_no_avx512():
    opts = _options(AVX2)
    assert opts["GGML_AVX2"] == opts["GGML_FMA"] == opts["GGML_BMI2"] == "ON"
    assert all(opts[k] == "OFF" for k in ("GGML_AVX512", "GGML_AVX512_VNNI", "GGML_AVX_VNNI", "GGML_NATIVE"))


def test_amx_and_native_stay_off_on_a_xeon():
    opts = _options(SAPPHIRE_RAPIDS)
    assert opts["GGML_AVX512"] == opts["GGML_AVX512_BF16"] == opts["GGML_AVX512_VNNI"] == "ON"
    assert all(opts[k] == "OFF" for k in ("GGML_NATIVE", "GGML_AMX_TILE", "GGML_AMX_INT8", "GGML_AMX_BF16"))


def test_avx512_needs_all_five_base_extensions():
    # GGML_AVX512 compiles with -mavx512f -mavx512cd -mavx512vl -mavx512dq -mavx512bw: F alone (Knights
    # Landing) is not enough, and the extensions follow it.
    opts = _options(AVX2 | {"avx512f", "avx512cd", "avx512_vnni"})
    assert opts["GGML_AVX512"] == opts["GGML_AVX512_VNNI"] == "OFF"


def test_arm_builds_the_portable_baseline():
    assert set(_options(frozenset({"fp", "asimd", "sve"})).values()) == {"OFF"}


def test_module_prints_the_hosts_args():
    out = subprocess.run([sys.executable, "-m", "camelid.runtime.llamacpp_build"], capture_output=True, text=True,
                         check=True).stdout
    assert "-DGGML_NATIVE=OFF" in out and "-DGGML_AMX_TILE=OFF" in out
