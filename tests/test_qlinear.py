import pytest
import torch
from helpers import random_gptq_layer

from camelid.errors import CamelidError
from camelid.formats.gptq.pack import dequantize, pack_qweight, unpack_qweight
from camelid.runtime import kernels as K
from camelid.runtime.qlinear import GPTQLinear

CPU = torch.device("cpu")
N_IN, N_OUT = 256, 128


def _rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y.double() - ref).abs().max() / ref.abs().max())


@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("group_size", [-1, 32, 64, 128])
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_gptq_linear_matches_dequantized_reference(bits, group_size, act_order, monkeypatch):
    x = torch.randn(5, N_IN, generator=torch.Generator().manual_seed(1))
    for sym in (True, False):
        for v1 in (True, False):
            t = random_gptq_layer(N_IN, N_OUT, bits, group_size, act_order, sym, v1, seed=bits * 100 + group_size)
            if act_order and group_size != -1:
                assert bool((t["g_idx"][1:] < t["g_idx"][:-1]).any())  # really non-monotonic
            w_ref = dequantize(t["qweight"], t["qzeros"], t["scales"], t["g_idx"], bits, v1=v1).double()  # [in, out]
            w = K.unpack_gptq(t["qweight"], t["qzeros"], t["scales"], t["g_idx"], bits, v1, group_size)
            tested = []
            for kernel in K.KERNELS:
                if K.why_not(kernel, w, CPU) is not None:
                    continue
                for dtype in (torch.float32, torch.bfloat16):
                    if kernel == "int4" and dtype == torch.float32:
                        continue  # int4 computes in bf16 whatever the model dtype
                    xd = x.to(dtype)
                    ref = xd.double() @ w_ref
                    # q4x8 has two paths: the integer GEMV below CAMELID_Q4X8_DENSE_ROWS rows, a dense GEMM above
                    # (read once, when the layer is built).
                    for dense_rows in ("1000", "1") if kernel == "q4x8" else ("1000",):
                        monkeypatch.setenv(K.DENSE_ROWS_ENV, dense_rows)
                        layer = GPTQLinear(w, kernel, CPU, dtype)
                        y = layer(xd)
                        assert y.dtype == dtype and y.shape == (5, N_OUT)
                        exact = kernel == "dense" or dense_rows == "1"
                        tol = max(K.KERNEL_TOLERANCE["dense" if exact else kernel], 0 if dtype == torch.float32 else 1e-2)
                        assert _rel_err(y, ref) < tol, (kernel, dense_rows, dtype, sym, v1)
                    tested.append(kernel)
            # The fast kernels really get used where they apply.
            if bits <= 4:
                assert "int4" in tested
                if group_size != 32 and K.cpu_kernels.unavailable_reason() is None:
                    assert "q4x8" in tested
            if group_size == -1:
                assert "int8" in tested


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_chunked_unpack_equals_pack_unpack(bits):
    q = torch.randint(0, 2**bits, (320, 64), dtype=torch.int32)
    qweight = pack_qweight(q, bits)
    assert torch.equal(K._unpack_in_chunks(qweight, bits, rows=64), unpack_qweight(qweight, bits))
    assert torch.equal(K._unpack_in_chunks(qweight, bits, rows=96), q)


def test_act_order_rows_sorted_once_and_activations_permuted():
    t = random_gptq_layer(N_IN, N_OUT, 4, 32, True, True, True)
    w = K.unpack_gptq(t["qweight"], t["qzeros"], t["scales"], t["g_idx"], 4, True, 32)
    assert w.perm is not None and bool((w.g[1:] >= w.g[:-1]).all())
    assert K.int4_group_size(w) == 32
    layer = GPTQLinear(w, "int4", CPU, torch.bfloat16)
    assert layer.perm is not None and layer.weight_packed.dtype == torch.uint8
    dense = GPTQLinear(w, "dense", CPU, torch.float32)
    assert dense.perm is None  # dense weights are stored in the checkpoint's input order


def test_kernel_selection_rule():
    def weight(bits, gs, n_out=N_OUT):
        t = random_gptq_layer(N_IN, n_out, bits, gs, False, True, True)
        return K.unpack_gptq(t["qweight"], t["qzeros"], t["scales"], t["g_idx"], bits, True, gs)

    cuda = torch.device("cuda")
    fast = "q4x8" if K.why_not("q4x8", weight(4, 128), CPU) is None else "int4"
    assert K.choose_kernel(weight(4, 128), CPU) == fast
    assert K.choose_kernel(weight(3, 64), CPU) == fast
    assert K.choose_kernel(weight(4, 32), CPU) == "int4"  # q4x8 reads 64 inputs per step
    assert K.why_not("q4x8", weight(4, 128), cuda) == "q4x8 kernel is CPU only"
    assert K.choose_kernel(weight(8, -1), CPU) == "int8"
    assert K.choose_kernel(weight(8, 128), CPU) == "dense"
    assert K.int4_group_size(weight(4, -1)) == 256  # one group = the same scale repeated
    assert K.choose_kernel(weight(4, 128), cuda, capability=(8, 0)) == "int4"
    assert K.choose_kernel(weight(4, 128), cuda, capability=(7, 5)) == "dense"
    assert K.choose_kernel(weight(8, -1), cuda, capability=(9, 0)) == "dense"
    with pytest.raises(CamelidError, match="does not fit|not fit"):
        K.choose_kernel(weight(8, 128), CPU, requested="int4")
    with pytest.raises(CamelidError, match="unknown kernel"):
        K.choose_kernel(weight(4, 128), CPU, requested="marlin")


def test_without_cpp_kernels_layers_fall_back_to_torch_int4(monkeypatch):
    """What a machine without a C++ compiler runs: CAMELID_CPU_KERNELS=0 takes the same branch."""
    monkeypatch.setenv("CAMELID_CPU_KERNELS", "0")
    t = random_gptq_layer(N_IN, N_OUT, 4, 128, False, True, True)
    w = K.unpack_gptq(t["qweight"], t["qzeros"], t["scales"], t["g_idx"], 4, True, 128)
    assert "CAMELID_CPU_KERNELS=0" in K.why_not("q4x8", w, CPU)
    assert K.choose_kernel(w, CPU) == "int4"
    with pytest.raises(CamelidError, match="C\\+\\+ kernels unavailable"):
        K.choose_kernel(w, CPU, requested="q4x8")
