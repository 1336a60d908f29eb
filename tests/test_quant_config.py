import json

import pytest

from camelid.errors import CheckpointError
from camelid.runtime.quant_config import read_quant_config


def _write(path, name, obj):
    (path / name).write_text(json.dumps(obj))


def test_sources_synonyms_and_formats(tmp_path):
    _write(tmp_path, "config.json", {"model_type": "llama"})
    assert read_quant_config(tmp_path) is None
    _write(tmp_path, "quant_config.json", {"w_bit": 3, "q_group_size": 64, "desc_act": True})
    c = read_quant_config(tmp_path)
    assert (c.bits, c.group_size, c.desc_act, c.sym, c.v1) == (3, 64, True, None, True)
    _write(tmp_path, "quantize_config.json", {"bits": 8, "group_size": -1, "sym": False, "checkpoint_format": "gptq_v2"})
    c = read_quant_config(tmp_path)  # quantize_config.json is read before quant_config.json
    assert (c.bits, c.group_size, c.sym, c.v1) == (8, -1, False, False)
    _write(tmp_path, "config.json", {"quantization_config": {"bits": 4, "group_size": 128, "format": "gptq_v2",
                                                             "quant_method": "gptq"}})
    c = read_quant_config(tmp_path)  # config.json wins, as in TGI; Transformers 5 names it `format`
    assert (c.bits, c.group_size, c.v1) == (4, 128, False)


@pytest.mark.parametrize("qcfg,match", [
    ({"bits": 5}, "bits=5"), ({"bits": 4, "group_size": 0}, "group_size"),
    ({"bits": 4, "is_marlin_format": True}, "Marlin"), ({"bits": 4, "checkpoint_format": "awq_gemm"}, "format"),
    ({"bits": 4, "quant_method": "bitsandbytes"}, "bitsandbytes"),
])
def test_unsupported_configs_are_named(tmp_path, qcfg, match):
    _write(tmp_path, "config.json", {"quantization_config": qcfg})
    with pytest.raises(CheckpointError, match=match):
        read_quant_config(tmp_path)
