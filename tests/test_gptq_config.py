import json

import pytest

from camelid.errors import CamelidError, CheckpointError
from camelid.formats.gptq import (
    QUANTIZER,
    GPTQConfig,
    declare_unquantized,
    dynamic_excludes,
    read_config,
    write_config,
)


def _write(path, name, obj):
    (path / name).write_text(json.dumps(obj))


def test_sources_synonyms_and_formats(tmp_path):
    _write(tmp_path, "config.json", {"model_type": "llama"})
    assert read_config(tmp_path) is None
    _write(tmp_path, "quant_config.json", {"w_bit": 3, "q_group_size": 64, "desc_act": True})
    c = read_config(tmp_path)
    assert (c.bits, c.group_size, c.desc_act, c.sym, c.v1) == (3, 64, True, None, True)
    _write(tmp_path, "quantize_config.json", {"bits": 8, "group_size": -1, "sym": False, "checkpoint_format": "gptq_v2"})
    c = read_config(tmp_path)  # quantize_config.json is read before quant_config.json
    assert (c.bits, c.group_size, c.sym, c.v1) == (8, -1, False, False)
    _write(tmp_path, "config.json", {"quantization_config": {"bits": 4, "group_size": 128, "format": "gptq_v2",
                                                             "quant_method": "gptq"}})
    c = read_config(tmp_path)  # config.json wins, as in TGI; Transformers 5 names it `format`
    assert (c.bits, c.group_size, c.v1) == (4, 128, False)


@pytest.mark.parametrize("qcfg,match", [
    ({"bits": 5}, "bits=5"), ({"bits": 4, "group_size": 0}, "group_size"),
    ({"bits": 4, "is_marlin_format": True}, "Marlin"), ({"bits": 4, "checkpoint_format": "awq_gemm"}, "format"),
    ({"bits": 4, "quant_method": "bitsandbytes"}, "bitsandbytes"),
])
def test_unsupported_configs_are_named(tmp_path, qcfg, match):
    _write(tmp_path, "config.json", {"quantization_config": qcfg})
    with pytest.raises(CheckpointError, match=match):
        read_config(tmp_path)


def test_act_order_synonym_and_v1_default(tmp_path):
    _write(tmp_path, "quantize_config.json", {"bits": 4, "group_size": 32, "act_order": True})
    c = read_config(tmp_path)
    assert (c.desc_act, c.v1, c.checkpoint_format) == (True, True, "gptq")


@pytest.mark.parametrize("raw", ['"gptq"', '[4, 128]', '{"bits": 4,'])
def test_malformed_quantization_config_names_the_file(tmp_path, raw):
    (tmp_path / "config.json").write_text('{"quantization_config": ' + raw + "}" if raw[0] != "{" else raw)
    with pytest.raises(CheckpointError, match="config.json"):
        read_config(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "quantize_config.json").write_text(raw)
    with pytest.raises(CheckpointError, match="quantize_config.json"):
        read_config(tmp_path)


def test_written_config_reads_back_and_both_files_agree(tmp_path):
    # stories260K at 4 bits g32: the MLP's 172-wide projections cannot be packed in any layer
    skipped = [f"model.layers.{i}.mlp.{m}" for i in range(5) for m in ("up_proj", "gate_proj", "down_proj")]
    groups = (("self_attn.k_proj", "self_attn.v_proj", "self_attn.q_proj"), ("self_attn.o_proj",),
              ("mlp.up_proj", "mlp.gate_proj"), ("mlp.down_proj",))
    dynamic, in_block = declare_unquantized(skipped, 5, groups)
    assert dynamic == {r"-:.*\.mlp\.up_proj$": {}, r"-:.*\.mlp\.gate_proj$": {}, r"-:.*\.mlp\.down_proj$": {}}
    assert in_block == [["self_attn.k_proj", "self_attn.v_proj", "self_attn.q_proj"], ["self_attn.o_proj"]]
    qcfg = GPTQConfig(bits=4, group_size=32, desc_act=True, sym=False, damp_percent=0.01, true_sequential=True,
                      static_groups=False, model_name_or_path="m", dynamic=dynamic,
                      modules_in_block_to_quantize=in_block, meta={"quantizer": [QUANTIZER], "method": "gptq"})
    write_config(tmp_path, {"model_type": "llama", "torch_dtype": "float32"}, qcfg)
    block = json.loads((tmp_path / "quantize_config.json").read_text())
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["quantization_config"] == block and config["dtype"] == config["torch_dtype"] == "float16"
    assert list(block)[:4] == ["bits", "group_size", "desc_act", "sym"]
    assert (block["format"], block["checkpoint_format"], block["modules_in_block_to_quantize"]) == ("gptq", "gptq", in_block)
    back = read_config(tmp_path)
    assert back == qcfg and hash(back) == hash(qcfg)
    assert back.source.endswith("config.json:quantization_config")
    (tmp_path / "config.json").unlink()
    assert read_config(tmp_path) == qcfg  # quantize_config.json alone says the same


def test_skips_that_differ_between_layers_are_refused():
    # GPTQModel's `dynamic` can name one layer's module, but Transformers' per-block list cannot
    assert dynamic_excludes(["model.layers.1.mlp.down_proj"], 2) == {r"-:^model\.layers\.1\.mlp\.down_proj$": {}}
    with pytest.raises(CamelidError, match="differ between layers"):
        declare_unquantized(["model.layers.1.mlp.down_proj"], 2, (("self_attn.q_proj",), ("mlp.down_proj",)))
