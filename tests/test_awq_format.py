"""The AutoAWQ GEMM format: packing against AutoAWQ's own loop, config as its tools read and write it,
and checkpoints written by an independent AutoAWQ-layout writer running in camelid.load."""

import json

import pytest
import torch
from awq_reference import awq_layer, pack_like_from_linear, write_tiny_awq_llama
from helpers import tiny_llama_config
from transformers import LlamaConfig, LlamaForCausalLM

import camelid
from camelid.errors import CamelidError, CheckpointError
from camelid.formats import awq
from camelid.runtime import describe_kernels, plan_kernels

IDS = torch.tensor([[1, 17, 300, 42, 7, 99, 250, 3]])


def test_packing_matches_autoawq_loop_and_round_trips():
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 16, (24, 64), generator=g, dtype=torch.int32)
    packed = awq.pack_columns(codes)
    assert torch.equal(packed, pack_like_from_linear(codes))
    assert packed.dtype == torch.int32 and packed.shape == (24, 8) and bool((packed < 0).any())  # top nibble >= 8
    assert torch.equal(awq.unpack_columns(packed), codes)
    # nibble 1 of each word holds column 2 (AWQ_ORDER), not column 1 as a sequential packer would
    one = torch.zeros(1, 8, dtype=torch.int32)
    one[0, 2] = 5
    assert int(awq.pack_columns(one)[0, 0]) == 5 << 4


def test_layer_tensors_dequantize_to_reference():
    w = torch.randn(64, 96, generator=torch.Generator().manual_seed(1))
    ref_tensors, ref_dense = awq_layer(w, 32)
    q, z = awq.unpack_linear(ref_tensors["qweight"], ref_tensors["qzeros"], ref_tensors["scales"], 32)
    ours = awq.pack_linear("x", q.t(), ref_tensors["scales"], z)
    assert all(torch.equal(ours[f"x.{k}"], ref_tensors[k]) for k in ref_tensors)
    wt = awq.dequantize(ref_tensors["qweight"], ref_tensors["qzeros"], ref_tensors["scales"], 32)
    assert torch.equal(wt.t(), ref_dense)
    assert float((ref_dense - w).abs().max()) < 0.5 * float(ref_tensors["scales"].float().max()) + 1e-6


def test_config_written_as_autoawq_and_read_with_synonyms(tmp_path):
    qcfg = awq.AWQConfig(group_size=64, modules_to_not_convert=("mlp.down_proj",))
    awq.write_config(tmp_path, {"model_type": "llama", "torch_dtype": "float32"}, qcfg)
    written = json.loads((tmp_path / "config.json").read_text())
    assert written["quantization_config"] == {"quant_method": "awq", "zero_point": True, "group_size": 64, "bits": 4,
                                              "version": "gemm", "modules_to_not_convert": ["mlp.down_proj"]}
    assert written["torch_dtype"] == "float16"
    assert awq.read_config(tmp_path) == qcfg
    # AutoAWQ 0.1.x: quant_config.json alone, internal names, upper-case version, no quant_method
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (tmp_path / "quant_config.json").write_text(json.dumps({"zero_point": True, "q_group_size": 128, "w_bit": 4,
                                                            "version": "GEMM"}))
    assert awq.read_config(tmp_path) == awq.AWQConfig(group_size=128)


@pytest.mark.parametrize("raw,match", [
    ({"quant_method": "awq", "bits": 8}, "4-bit"), ({"quant_method": "awq", "version": "gemv"}, "gemv"),
    ({"quant_method": "awq", "zero_point": False}, "zero point"), ({"quant_method": "awq", "group_size": -1}, "group_size"),
    ({"quant_method": "awq", "modules_to_not_convert": "lm_head"}, "list"),
])
def test_unsupported_configs_are_named(raw, match):
    with pytest.raises(CheckpointError, match=match):
        awq.AWQConfig.from_dict(raw, "x/config.json")


def test_not_converted_names_and_substring_clash():
    layers = [f"model.layers.{i}." for i in range(11)]
    every = [p + "mlp.down_proj" for p in layers]
    assert awq.not_converted(every, 11, []) == ("mlp.down_proj",)
    assert awq.not_converted([], 11, []) is None
    with pytest.raises(CheckpointError, match="substring"):
        awq.not_converted(["model.layers.1.mlp.up"], 11, ["model.layers.1.mlp.up_proj"])
    assert awq.not_converted(["model.layers.1.mlp.up_proj"], 11, ["model.layers.10.mlp.up_proj"]) == \
        ("model.layers.1.mlp.up_proj",)  # full Linear names of different layers never nest


def _reference_logits(dense: dict) -> torch.Tensor:
    model = LlamaForCausalLM(LlamaConfig(**tiny_llama_config())).float().eval()
    model.load_state_dict(dense, strict=True)
    with torch.no_grad():
        return model(IDS).logits.double()


@pytest.mark.parametrize("group_size,config_file", [(32, "config.json"), (64, "quant_config.json")])
def test_foreign_awq_checkpoint_runs_in_camelid(tmp_path, group_size, config_file):
    dense = write_tiny_awq_llama(tmp_path, group_size=group_size, skip=("layers.1.mlp.down_proj",),
                                 config_file=config_file)
    ref = _reference_logits(dense)
    model, _ = camelid.load(tmp_path, dtype="float32", kernel="dense")
    with torch.no_grad():
        assert torch.allclose(model(IDS).logits.double(), ref, atol=1e-4, rtol=1e-4)
    assert type(model.model.layers[1].mlp.down_proj) is torch.nn.Linear
    fast, _ = camelid.load(tmp_path)  # bf16 on a quantized kernel: q4x8 where built (groups of 64+), else int4
    kernels = describe_kernels(fast)["kernels"]
    assert sum(kernels.values()) == 13 and set(kernels) <= {"q4x8", "int4"}
    assert plan_kernels(tmp_path, device="cpu")["kernels"] == kernels
    with torch.no_grad():
        got = fast(IDS).logits.double()
    assert float((got - ref).abs().max() / ref.abs().max()) < 5e-2
    assert torch.equal(got[0, -1].argmax(), ref[0, -1].argmax())


def test_gptq_tensors_under_an_awq_config_are_refused(tmp_path):
    from helpers import write_tiny_gptq_llama

    write_tiny_gptq_llama(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "awq", "bits": 4, "group_size": 32}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    (tmp_path / "quantize_config.json").unlink()
    with pytest.raises(CamelidError, match="AWQ qweight .* do not fit group_size 32"):
        camelid.load(tmp_path)
