"""A checkpoint written by GPTQModel runs in camelid with the same logits as in GPTQModel's own loader."""

import json

import pytest
import torch

import camelid
from camelid.runtime import describe_kernels

pytestmark = pytest.mark.compat
IDS = torch.tensor([[1, 17, 300, 42, 7, 99, 250, 3, 480, 11]])


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS).logits.double()


def test_gptqmodel_checkpoint_same_logits_as_gptqmodel(gptqmodel_checkpoint):
    from gptqmodel import BACKEND, GPTQModel

    qcfg = json.loads((gptqmodel_checkpoint / "quantize_config.json").read_text())
    assert qcfg["desc_act"] and not qcfg["sym"] and qcfg["checkpoint_format"] == "gptq"
    # GPTQModel's reference torch kernel dequantizes to fp16 and runs F.linear: the same math as
    # camelid's dense kernel at fp16, so the logits agree to the last bit.
    theirs = GPTQModel.load(str(gptqmodel_checkpoint), device="cpu", dtype=torch.float16, backend=BACKEND.TORCH)
    ref = _logits(theirs.model)
    ours, _ = camelid.load(gptqmodel_checkpoint, dtype="float16", kernel="dense")
    assert describe_kernels(ours)["act_order_layers"] == 0  # dense weights keep the checkpoint order
    assert torch.allclose(_logits(ours), ref, atol=2e-3, rtol=0)
    # The default fast path (bf16, int4 tinygemm, act-order rows sorted at load) within bf16 noise.
    fast, _ = camelid.load(gptqmodel_checkpoint)
    info = describe_kernels(fast)
    assert info["kernels"] == {"int4": 14} and info["act_order_layers"] == 14
    got = _logits(fast)
    assert float((got - ref).abs().max() / ref.abs().max()) < 2e-2
    assert torch.equal(got[0].argmax(-1), ref[0].argmax(-1))
