import pytest
import torch

from camelid.errors import CamelidError
from camelid.runtime import cpu_kernels
from camelid.runtime.cpu_features import ISA_FLAGS, best_isa, cpu_features, parse_features

# /proc/cpuinfo flags of an AVX2-only AMD EPYC (abridged) and of a Sapphire Rapids Xeon (abridged).
EPYC = frozenset("fpu sse sse2 ssse3 sse4_1 sse4_2 avx f16c fma avx2 bmi2 sha_ni".split())
XEON = EPYC | ISA_FLAGS["avx512_vnni"] | {"avx_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16"}

needs_cpp = pytest.mark.skipif(cpu_kernels.unavailable_reason() is not None,
                               reason=f"C++ kernels unavailable: {cpu_kernels.unavailable_reason()}")


def test_isa_level_from_flags():
    assert best_isa(EPYC) == "avx2"
    assert best_isa(EPYC | {"avx_vnni"}) == "avx_vnni"
    assert best_isa(XEON) == "avx512_vnni"
    assert best_isa(frozenset({"asimd"})) == "generic"
    xeon = parse_features("Xeon", XEON, None)
    assert xeon.bf16_gemm and not xeon.forced
    epyc = parse_features("EPYC", EPYC, None)
    assert epyc.isa == "avx2" and not epyc.bf16_gemm


def test_forced_isa_is_checked_against_the_host():
    forced = parse_features("Xeon", XEON, "avx2")
    assert forced.isa == "avx2" and forced.forced and not forced.bf16_gemm  # behaves as an AVX2-only host
    with pytest.raises(CamelidError, match="lacks avx512"):
        parse_features("EPYC", EPYC, "avx512_vnni")
    with pytest.raises(CamelidError, match="choose from"):
        parse_features("EPYC", EPYC, "sse9")


def _levels() -> list[str]:
    # The host's level and, when it has more, the AVX2 path every x86-64-v3 CPU runs.
    host = cpu_features().isa
    return [host] + (["avx2"] if host != "avx2" and ISA_FLAGS["avx2"] <= cpu_features().flags else [])


def _random_q4(n_out: int, n_in: int, kb: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(0, 16, (n_out, n_in), generator=g, dtype=torch.int32)
    s = torch.rand(n_out, n_in // kb, generator=g) * 0.02 + 0.005
    z = torch.randint(0, 17, (n_out, n_in // kb), generator=g).float()
    w = (q.float() - z.repeat_interleave(kb, 1)) * s.repeat_interleave(kb, 1)
    halves = q.view(n_out, n_in // 64, 2, 32)
    packed = (halves[:, :, 0] | halves[:, :, 1] << 4).to(torch.uint8).reshape(n_out, n_in // 2).contiguous()
    return packed, s.contiguous(), (s * z).contiguous(), w


@needs_cpp
@pytest.mark.parametrize("isa", _levels())
@pytest.mark.parametrize("kb", [64, 128, 256])
def test_q4x8_mm_matches_reference_on_each_isa(isa, kb):
    ext = cpu_kernels.load_extension(isa)
    assert ext is not None, cpu_kernels.build_error(isa)
    assert ext.compiled_path().startswith("avx2" if isa in ("avx2", "avx_vnni") else "avx512" if "512" in isa else "generic")
    packed, s, sz, w = _random_q4(40, 512, kb)
    for rows in (1, 2, 3, 4, 5, 9):  # every register-block remainder, and more than one block of 4
        x = torch.randn(rows, 512, generator=torch.Generator().manual_seed(rows))
        y = ext.q4x8_mm(x, packed, s, sz, kb)
        ref = x.double() @ w.double().t()
        assert float((y - ref).abs().max() / ref.abs().max()) < 2e-2  # kernels.KERNEL_TOLERANCE["q4x8"]


@needs_cpp
@pytest.mark.parametrize("isa", _levels())
def test_q4_dequant_is_exact(isa):
    ext = cpu_kernels.load_extension(isa)
    packed, s, sz, w = _random_q4(24, 256, 64, seed=3)
    out = torch.empty(24, 256)
    ext.q4_dequant(packed, s, sz, 64, out)
    assert torch.allclose(out, w, rtol=0, atol=1e-6)
    out16 = torch.empty(24, 256, dtype=torch.bfloat16)
    ext.q4_dequant(packed, s, sz, 64, out16)
    assert torch.equal(out16, out.to(torch.bfloat16))  # same round-to-nearest-even as torch
