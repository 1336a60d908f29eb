import json
from pathlib import Path

import pytest
import torch
from helpers import tiny_llama_config, write_tiny_gptq_llama
from transformers import LlamaConfig, LlamaForCausalLM, pipeline

import camelid
from camelid.errors import CamelidError
from camelid.runtime import describe_kernels, plan_kernels
from camelid.runtime import kernels as K
from camelid.runtime.qlinear import GPTQLinear

STORIES_DIR = Path(__file__).resolve().parents[1] / "examples" / "stories260K"
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
    q4x8 = group_size in (-1, 64, 128) and K.cpu_kernels.unavailable_reason() is None
    expected = ("q4x8" if q4x8 else "int4") if bits <= 4 else ("int8" if group_size == -1 else "dense")
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
    generated = pipeline("text-generation", model=model, tokenizer=tok)("Once upon", max_new_tokens=5, do_sample=False)
    assert generated[0]["generated_text"].startswith("Once upon")


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


def test_plan_kernels_matches_what_load_chooses(tmp_path):
    write_tiny_gptq_llama(tmp_path / "a", bits=8, group_size=32, act_order=True, skip=("down_proj",))
    plan = plan_kernels(tmp_path / "a", device="cpu")
    model, _ = camelid.load(tmp_path / "a")
    assert plan["kernels"] == describe_kernels(model)["kernels"] == {"dense": 12}
    assert set(plan["not_faster"]) == {n for n, m in model.named_modules() if isinstance(m, GPTQLinear)}
    assert "int4: 8-bit codes do not fit 4 bits" in next(iter(plan["not_faster"].values()))
    assert plan["cpu"]["cpu"]["isa"] and "cpp_kernels" in plan["cpu"]
    write_tiny_gptq_llama(tmp_path / "b", bits=4, group_size=-1)
    fast = "int4" if K.cpu_kernels.unavailable_reason() else "q4x8"
    assert plan_kernels(tmp_path / "b", device="cpu")["kernels"] == {fast: 14}
    assert plan_kernels(tmp_path / "b", device="cpu", kernel="int4")["kernels"] == {"int4": 14}
    assert plan_kernels(tmp_path / "b", device="cpu", kernel="int8")["kernels"] == {"int8": 14}
    assert plan_kernels(STORIES_DIR)["quantized"] is False


def test_dense_head_gets_ordinary_strides_for_last_token_logits(tmp_path):
    # Transformers slices hidden[:, -1:, :] for the head; torch's CPU bf16 linear is ~50x slower on that
    # view's strides, so camelid.load re-views the head input (same values, canonical strides).
    write_tiny_gptq_llama(tmp_path)
    model, _ = camelid.load(tmp_path)
    seen = []
    model.lm_head.register_forward_pre_hook(lambda m, args: seen.append(args[0].stride()))
    with torch.no_grad():
        last = model(IDS, logits_to_keep=1).logits
        full = model(IDS).logits
    assert seen[0] == (128, 128, 1)  # not (8 * 128, 128, 1)
    assert torch.equal(last[0, -1], full[0, -1])


def test_info_cli_reports_kernels(tmp_path, capsys):
    from camelid.cli import main

    write_tiny_gptq_llama(tmp_path / "q", bits=4, group_size=32, skip=("down_proj",))
    assert main(["info", str(tmp_path / "q"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["quantization"]["bits"] == 4
    assert summary["kernels"]["kernels"] == {"int4": 12}  # 2 layers x 6 packed Linears; down_proj stays fp16
    assert main(["info", str(tmp_path / "q"), "--kernel", "dense"]) == 0
    assert '"dense": 12' in capsys.readouterr().out
