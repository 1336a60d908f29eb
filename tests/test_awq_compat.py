"""A checkpoint written by camelid's AWQ runs in Transformers (through GPTQModel's AWQ kernels, as
Transformers 5 requires: `quantizers/quantizer_awq.py`) with the logits camelid computes."""

import json

import pytest
import torch
from helpers import write_tiny_llama

import camelid
from camelid.quant import QuantParams, RunOptions, quantize
from camelid.runtime import describe_kernels

pytestmark = pytest.mark.compat
IDS = torch.tensor([[1, 17, 300, 42, 7, 99, 250, 3, 480, 11]])


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS).logits.double()


@pytest.fixture(scope="module")
def camelid_awq(tmp_path_factory):
    root = tmp_path_factory.mktemp("awq")
    ids = torch.randint(3, 512, (4, 64), generator=torch.Generator().manual_seed(0))
    return quantize(write_tiny_llama(root / "base"), root / "awq", QuantParams(group_size=32, method="awq"),
                    options=RunOptions(device="cpu", progress=False), calibration=ids)


def test_camelid_awq_loads_in_transformers_with_camelid_logits(camelid_awq):
    pytest.importorskip("gptqmodel")
    from transformers import AutoModelForCausalLM, AwqConfig

    qcfg = json.loads((camelid_awq / "config.json").read_text())["quantization_config"]
    assert qcfg == {"quant_method": "awq", "zero_point": True, "group_size": 32, "bits": 4, "version": "gemm",
                    "modules_to_not_convert": None}
    # GPTQModel's torch AWQ kernel dequantizes to the model dtype and runs a matmul: camelid's dense
    # kernel at fp16 is the same math.
    exact = AutoModelForCausalLM.from_pretrained(camelid_awq, dtype=torch.float16, device_map="cpu",
                                                 quantization_config=AwqConfig(bits=4, group_size=32,
                                                                               backend="torch_awq"))
    assert "Awq" in type(exact.model.layers[0].self_attn.q_proj).__name__
    ours, _ = camelid.load(camelid_awq, dtype="float16", kernel="dense")
    ref = _logits(exact)
    assert torch.allclose(_logits(ours), ref, atol=3e-3, rtol=0)
    # Transformers' default CPU pick (GPTQModel's int4pack ATen kernel) against camelid's default
    # (bf16 int4 tinygemm): both within bf16 noise of the exact logits.
    default = AutoModelForCausalLM.from_pretrained(camelid_awq, dtype=torch.float16, device_map="cpu")
    fast, _ = camelid.load(camelid_awq)
    assert describe_kernels(fast)["kernels"] == {"int4": 14}
    for got in (_logits(default), _logits(fast)):
        assert float((got - ref).abs().max() / ref.abs().max()) < 2e-2
        assert torch.equal(got[0].argmax(-1), ref[0].argmax(-1))


@pytest.fixture(scope="module")
def gptqmodel_awq(tmp_path_factory):
    """A tiny Llama AWQ-quantized by GPTQModel (its AWQ scale and clip search, AutoAWQ GEMM format). On
    CPU it needs its portable torch kernel named: the default GEMM backend is CUDA-only ("AWQ: CUDA is
    not available", `models/base.py` `quantize`)."""
    pytest.importorskip("gptqmodel")
    import os

    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")
    from gptqmodel import BACKEND, GPTQModel, QuantizeConfig
    from gptqmodel.quantization.config import FORMAT, METHOD

    root = tmp_path_factory.mktemp("gptqmodel-awq")
    base = write_tiny_llama(root / "base")
    qc = QuantizeConfig(bits=4, group_size=32, method=METHOD.AWQ, format=FORMAT.GEMM, sym=False)
    model = GPTQModel.load(str(base), quantize_config=qc, device="cpu")
    ids = torch.randint(3, 512, (8, 64), generator=torch.Generator().manual_seed(0))
    model.quantize([{"input_ids": r.tolist(), "attention_mask": [1] * len(r)} for r in ids], batch_size=4,
                   backend=BACKEND.AWQ_TORCH)
    model.save(str(root / "awq"))
    return root / "awq"


def test_gptqmodel_awq_checkpoint_runs_in_camelid_with_transformers_logits(gptqmodel_awq):
    from transformers import AutoModelForCausalLM, AwqConfig

    qcfg = json.loads((gptqmodel_awq / "config.json").read_text())["quantization_config"]
    assert (qcfg["quant_method"], qcfg["version"], qcfg["zero_point"], qcfg["group_size"]) == ("awq", "gemm", True, 32)
    assert qcfg["meta"]["quantizer"][0].startswith("gptqmodel:")
    exact = AutoModelForCausalLM.from_pretrained(gptqmodel_awq, dtype=torch.float16, device_map="cpu",
                                                 quantization_config=AwqConfig(bits=4, group_size=32,
                                                                               backend="torch_awq"))
    assert "Awq" in type(exact.model.layers[0].self_attn.q_proj).__name__
    ref = _logits(exact)
    # the same fp16 dequantize-then-matmul on both sides: equal up to fp16 accumulation order
    ours, _ = camelid.load(gptqmodel_awq, dtype="float16", kernel="dense")
    assert torch.allclose(_logits(ours), ref, atol=3e-3, rtol=0)
    fast, _ = camelid.load(gptqmodel_awq)  # camelid's default CPU kernel (bf16 int4): within bf16 noise
    assert describe_kernels(fast)["kernels"] == {"int4": 14}
    got = _logits(fast)
    err = float((got - ref).abs().max())
    assert err / float(ref.abs().max()) < 2e-2
    # a random model's logits are nearly flat: the top token must agree wherever it leads by more
    # than the kernels' difference can move it
    top2 = ref[0].topk(2, dim=-1).values
    clear = (top2[:, 0] - top2[:, 1]) > 2 * err
    assert bool(clear.any()) and torch.equal(got[0].argmax(-1)[clear], ref[0].argmax(-1)[clear])
