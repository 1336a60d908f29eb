import json

import pytest
import torch
from helpers import tiny_llama_config, write_tiny_gptq_llama
from transformers import LlamaConfig, LlamaForCausalLM

import camelid
from camelid.errors import CamelidError
from camelid.runtime import describe_kernels
from camelid.runtime.qlinear import GPTQLinear

IDS = torch.tensor([[1, 17, 300, 42, 7, 99, 250, 3]])


def _reference_logits(dense: dict, dtype: torch.dtype, **overrides) -> torch.Tensor:
    model = LlamaForCausalLM(LlamaConfig(**tiny_llama_config(**overrides))).to(dtype).eval()
    missing, unexpected = model.load_state_dict({k: v.to(dtype) for k, v in dense.items()}, strict=False)
    assert set(missing) <= {"lm_head.weight"} and not unexpected  # lm_head only when tied
    model.tie_weights()
    with torch.no_grad():
        return model(IDS).logits.double()


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS).logits.double()


@pytest.mark.parametrize("bits,group_size,sym,v1,act_order", [
    (4, 32, True, True, False), (4, 64, False, False, True), (3, 32, False, True, True),
    (2, -1, True, True, False), (8, -1, True, False, False), (8, 32, False, True, True),
])
def test_gptq_checkpoint_logits_match_dequantized_model(tmp_path, bits, group_size, sym, v1, act_order):
    dense = write_tiny_gptq_llama(tmp_path, bits=bits, group_size=group_size, sym=sym, v1=v1, act_order=act_order)
    ref = _reference_logits(dense, torch.float32)
    # fp32 model, exact kernels (dense / int8): fp32 accuracy.
    model, _ = camelid.load(tmp_path, dtype="float32", kernel="dense")
    assert torch.allclose(_logits(model), ref, atol=1e-4, rtol=1e-4)
    # default: bf16 model with the fastest kernel that applies.
    model, _ = camelid.load(tmp_path)
    info = describe_kernels(model)
    assert model.dtype == torch.bfloat16 and info["quantized_layers"] == 14
    expected = "int4" if bits <= 4 else ("int8" if group_size == -1 else "dense")
    assert info["kernels"] == {expected: 14}
    logits = _logits(model)
    assert float((logits - ref).abs().max() / ref.abs().max()) < 5e-2
    assert bool(logits[0, -1].argmax() == ref[0, -1].argmax())


def test_unquantized_layers_stay_linear_and_no_fp_weights_built(tmp_path):
    dense = write_tiny_gptq_llama(tmp_path, bits=4, group_size=32, skip=("down_proj", "layers.1.self_attn.q_proj"))
    model, _ = camelid.load(tmp_path, dtype="float32", kernel="dense")
    layer0 = model.model.layers[0]
    assert type(layer0.mlp.down_proj) is torch.nn.Linear and isinstance(layer0.mlp.up_proj, GPTQLinear)
    assert type(model.model.layers[1].self_attn.q_proj) is torch.nn.Linear
    assert not hasattr(layer0.mlp.up_proj, "weight")  # no fp weight kept beside the quantized one
    assert torch.allclose(_logits(model), _reference_logits(dense, torch.float32), atol=1e-4, rtol=1e-4)
    assert describe_kernels(model)["unquantized_linears"] == 4  # 2 down_proj, 1 q_proj, lm_head


def test_tied_embeddings_and_quantize_config_json_only(tmp_path):
    dense = write_tiny_gptq_llama(tmp_path, config_overrides={"tie_word_embeddings": True})
    cfg = json.loads((tmp_path / "config.json").read_text())
    del cfg["quantization_config"]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    model, tok = camelid.load(tmp_path, dtype="float32", kernel="dense")
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    ref = _reference_logits(dense, torch.float32, tie_word_embeddings=True)
    assert torch.allclose(_logits(model), ref, atol=1e-4, rtol=1e-4)
    assert tok("Once upon").input_ids[0] == 1
    out = model.generate(IDS[:, :3], max_new_tokens=4, do_sample=False, attention_mask=torch.ones(1, 3, dtype=torch.long))
    assert out.shape == (1, 7)


def test_bad_gptq_checkpoints_give_clear_errors(tmp_path):
    write_tiny_gptq_llama(tmp_path, bits=8, group_size=32)
    with pytest.raises(CamelidError, match="kernel 'int4' cannot run"):
        camelid.load(tmp_path, kernel="int4")
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["quantization_config"]["checkpoint_format"] = "marlin"
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CamelidError, match="Marlin"):
        camelid.load(tmp_path)
    cfg["quantization_config"] = {"quant_method": "awq", "bits": 4}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CamelidError, match="awq"):
        camelid.load(tmp_path)
