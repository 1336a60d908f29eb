"""camelid's GPTQ checkpoints against the real libraries (Transformers + optimum + GPTQModel on CPU)."""

import os
import shutil
from pathlib import Path

import pytest
import torch

from camelid.checkpoint import open_checkpoint
from camelid.formats.gptq.pack import dequantize
from camelid.formats.gptq.reader import dense_model
from camelid.quant import QuantParams, RunOptions, quantize

os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")
gptqmodel = pytest.importorskip("gptqmodel")
pytest.importorskip("optimum")

pytestmark = pytest.mark.compat
REPO = Path(__file__).resolve().parents[1]
STORIES = REPO / "examples" / "stories260K"
QUIET = RunOptions(progress=False)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """Random fp16 Llama with kernel-friendly dims (hidden 128) and an MLP width (352) that a group of
    128 does not divide, so down_proj must stay fp16. Uses stories260K's 512-token tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=128, intermediate_size=352, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=512, max_position_embeddings=256, tie_word_embeddings=False)
    path = tmp_path_factory.mktemp("tiny") / "model"
    LlamaForCausalLM(cfg).to(torch.float16).save_pretrained(path)
    for name in ("tokenizer.model", "tokenizer_config.json"):
        shutil.copy(STORIES / name, path / name)
    return path


def _calibration(n=16, seq=64):
    return torch.randint(3, 512, (n, seq), generator=torch.Generator().manual_seed(0))


def _inputs():
    return torch.randint(3, 512, (2, 48), generator=torch.Generator().manual_seed(1))


def _module_dequant_matches(gm_model, path: Path, bits: int) -> int:
    """Compare every quantized module's own dequantized weight with camelid's reader; returns count."""
    ckpt = open_checkpoint(path)
    checked = 0
    for name, mod in gm_model.named_modules():
        if not hasattr(mod, "dequantize_weight") or not hasattr(mod, "qweight"):
            continue
        name = name.removeprefix("model.") if not name.startswith("model.layers") else name
        prefix = name if name + ".qweight" in ckpt else "model." + name
        ours = dequantize(*(ckpt.read(f"{prefix}.{t}") for t in ("qweight", "qzeros", "scales", "g_idx")), bits)
        theirs = mod.dequantize_weight().float()  # [in, out] like ours
        assert theirs.shape == ours.shape, prefix
        # they compute in fp16: equal up to fp16 rounding of the product
        torch.testing.assert_close(theirs, ours, atol=ours.abs().max().item() * 2**-10, rtol=0)
        checked += 1
    return checked


@pytest.mark.parametrize("bits,act_order,sym", [(4, False, True), (4, True, True), (3, True, False)])
def test_camelid_checkpoint_runs_in_transformers(tiny, tmp_path, bits, act_order, sym):
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    out = quantize(tiny, tmp_path / "q", QuantParams(bits=bits, group_size=128, act_order=act_order, sym=sym),
                   options=QUIET, calibration=_calibration())
    model = AutoModelForCausalLM.from_pretrained(out, device_map="cpu", dtype=torch.float16)
    layer = model.model.layers[0]
    assert type(layer.mlp.down_proj) is torch.nn.Linear  # declared unquantized: loaded as plain Linear
    assert type(layer.self_attn.q_proj).__module__.startswith("gptqmodel")
    x = _inputs()
    with torch.no_grad():
        got = model(x).logits.float()
        want = dense_model(out)(x).logits
        orig = LlamaForCausalLM.from_pretrained(tiny, dtype=torch.float32)(x).logits
    scale = want.abs().max().item()
    quant_effect = (orig - want).abs().max().item()
    assert (got - want).abs().max().item() < 0.02 * scale  # fp16 kernels vs fp32 reference
    assert (got - want).abs().max().item() < 0.25 * quant_effect  # and far closer than to the fp model


def test_gptqmodel_loader_reads_camelid_checkpoint(tiny, tmp_path):
    from gptqmodel import BACKEND, GPTQModel

    out = quantize(tiny, tmp_path / "q", QuantParams(bits=4, group_size=128, act_order=True), options=QUIET,
                   calibration=_calibration())
    gm = GPTQModel.load(str(out), device="cpu", backend=BACKEND.TORCH, dtype=torch.float16)
    assert type(gm.model.model.layers[1].mlp.down_proj) is torch.nn.Linear  # `dynamic` "-:" rule honoured
    assert _module_dequant_matches(gm.model, out, 4) == 2 * 6


@pytest.mark.parametrize("bits,desc_act", [(4, True), (3, False)])
def test_gptqmodel_checkpoint_dequantizes_through_camelid(tiny, tmp_path, bits, desc_act):
    from gptqmodel import BACKEND, GPTQModel, QuantizeConfig

    calib = [{"input_ids": r.tolist(), "attention_mask": [1] * len(r)} for r in _calibration()]
    qc = QuantizeConfig(bits=bits, group_size=64, desc_act=desc_act, sym=True, damp_percent=0.01)
    model = GPTQModel.load(str(tiny), quantize_config=qc, device="cpu")
    model.quantize(calib, batch_size=4)
    out = tmp_path / "gm"
    model.save(str(out))
    gm = GPTQModel.load(str(out), device="cpu", backend=BACKEND.TORCH, dtype=torch.float16)
    assert _module_dequant_matches(gm.model, out, bits) == 2 * 7
    x = _inputs()
    with torch.no_grad():
        got = gm.model(x).logits.float()
        want = dense_model(out)(x).logits
    assert (got - want).abs().max().item() < 0.02 * want.abs().max().item()
