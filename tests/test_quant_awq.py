"""AWQ's pieces on a tiny random Llama layer: scales fuse exactly, the searches never do worse than
their no-op candidate, and the whole fit beats round-to-nearest on the same grid; AWQ as a method of
the layer loop: it resumes after a kill, checks its settings and input, and spills."""

import torch
from helpers import tiny_llama_config

from camelid.quant import awq
from camelid.quant.layer import llama_config, rotary

S = awq.AWQSettings(group_size=32)


def _layer_and_input(seed: int = 0, **overrides):
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    torch.manual_seed(seed)
    cfg = llama_config(tiny_llama_config(**overrides))
    layer = LlamaDecoderLayer(cfg, layer_idx=0).eval()
    for norm in (layer.input_layernorm, layer.post_attention_layernorm):  # non-trivial norms to rescale
        norm.weight.data = torch.rand(cfg.hidden_size) + 0.5
    h = torch.randn(4, 32, cfg.hidden_size)
    h[..., :4] *= 20  # a few outlier channels, the case AWQ is for
    return layer, h, rotary(cfg, 32)


def _out(layer, h, pe):
    with torch.no_grad():
        out = layer(h, attention_mask=None, position_embeddings=pe)
    return out[0] if isinstance(out, tuple) else out


def _quantize_linears(layer):
    for name in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                 "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"):
        lin = layer.get_submodule(name)
        lin.weight.data = awq.quantize_weight(lin.weight.data, S).dequantized()


def test_scales_fuse_into_norms_and_linears_exactly():
    # num_key_value_heads == num_attention_heads: v_proj and o_proj have one shape, so v -> o is a group too
    layer, h, pe = _layer_and_input(num_key_value_heads=4)
    before = _out(layer, h, pe)
    groups = awq.llama_groups(layer, pe)
    assert [g.name for g in groups] == ["qkv", "o", "gate_up", "down"]
    for g in groups:
        awq.apply_scale(g, torch.rand(g.linears[0].in_features) + 0.5)
    assert torch.allclose(_out(layer, h, pe), before, atol=1e-4, rtol=1e-4)
    gqa, _, _ = _layer_and_input()  # 4 heads, 2 kv heads: no v -> o group (llm-awq PR #67)
    assert [g.name for g in awq.llama_groups(gqa, pe)] == ["qkv", "gate_up", "down"]


def test_candidate_scales_are_normalised_and_ratio_zero_is_weight_only():
    x_mean, w_mean = torch.rand(64) + 0.1, torch.rand(64) + 0.1
    s = awq.candidate_scales(x_mean, w_mean, 0.3, duo=True)
    assert torch.allclose(s.max() * s.min(), torch.tensor(1.0))
    assert torch.allclose(awq.candidate_scales(x_mean, w_mean, 0.0, duo=False), torch.ones(64))


def test_clip_search_is_no_worse_than_not_clipping():
    g = torch.Generator().manual_seed(0)
    w, x = torch.randn(48, 64, generator=g), torch.randn(600, 64, generator=g)
    max_val = awq.search_clip(x, w, S)
    org = w.abs().reshape(48, 2, 32).amax(-1)
    assert bool((max_val <= org + 1e-6).all() and (max_val >= 0.5 * org - 1e-6).all())
    xs = x[::max(1, x.shape[0] // S.n_sample_token)]

    def err(wq):  # the search's objective: per (row, group) partial products, summed here
        return float(((xs.reshape(-1, 1, 2, 32) * (wq - w).reshape(1, 48, 2, 32)).sum(-1)).pow(2).mean())
    assert err(awq.fake_quantize(awq.apply_clip(w, max_val, 32), S)) <= err(awq.fake_quantize(w, S)) + 1e-9


def test_fit_beats_round_to_nearest_on_the_same_grid():
    layer, h, pe = _layer_and_input()
    ref = _out(layer, h, pe)
    rtn, _, _ = _layer_and_input()
    _quantize_linears(rtn)
    nxt, fit = awq.fit_layer(layer, h, pe, S)
    assert torch.equal(nxt, ref)  # the next layer gets the unchanged layer's output
    assert set(fit.scales) == {"qkv", "gate_up", "down"} and set(fit.clips) == {
        "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"}
    fresh, _, _ = _layer_and_input()
    awq.apply_fit(fresh, fit, S.group_size)  # the fit carried over to another copy gives the same weights
    assert torch.allclose(fresh.mlp.down_proj.weight, layer.mlp.down_proj.weight)
    _quantize_linears(fresh)
    err_awq, err_rtn = float((_out(fresh, h, pe) - ref).pow(2).mean()), float((_out(rtn, h, pe) - ref).pow(2).mean())
    assert err_awq < 0.9 * err_rtn, (err_awq, err_rtn)


def test_cli_method_awq_writes_an_awq_checkpoint_camelid_runs(tmp_path):
    import json
    from pathlib import Path

    from helpers import write_tiny_llama

    import camelid
    from camelid.cli import main
    from camelid.runtime import describe_kernels

    sample = Path(__file__).resolve().parents[1] / "examples" / "data" / "tinystories_sample.txt"
    base = write_tiny_llama(tmp_path / "base")
    assert main(["quantize", str(base), str(tmp_path / "q"), "--method", "awq", "--group-size", "32", "--dataset",
                 "file", "--dataset-path", str(sample), "--nsamples", "4", "--seq-len", "32", "--device", "cpu"]) == 0
    cfg = json.loads((tmp_path / "q" / "config.json").read_text())
    assert cfg["quantization_config"]["quant_method"] == "awq" and cfg["torch_dtype"] == "float16"
    model, _ = camelid.load(tmp_path / "q")
    assert describe_kernels(model)["kernels"] == {"int4": 14}
    assert (tmp_path / "q" / "quant_log.csv").read_text().count("\n") == 1 + 2 * 7  # one row per Linear


IDS = torch.randint(3, 512, (4, 64), generator=torch.Generator().manual_seed(0))

def _awq(base, out, **options):
    from camelid.quant import QuantParams, RunOptions, quantize

    return quantize(base, out, QuantParams(group_size=32, method="awq"), calibration=IDS,
                    options=RunOptions(device="cpu", progress=False, **options))


def test_killed_awq_run_resumes_to_the_same_checkpoint(tmp_path, monkeypatch):
    import pytest
    from helpers import crash_after_layer, write_tiny_llama
    from safetensors.torch import load_file

    from camelid.quant import loop

    base = write_tiny_llama(tmp_path / "base", num_hidden_layers=3)
    ref = _awq(base, tmp_path / "ref")
    real_save = loop.save_progress
    monkeypatch.setattr(loop, "save_progress", crash_after_layer(1))
    with pytest.raises(KeyboardInterrupt):
        _awq(base, tmp_path / "q")
    assert not (tmp_path / "q").exists() and (tmp_path / "q.partial").is_dir()
    monkeypatch.setattr(loop, "save_progress", real_save)
    loaded = []
    real_load = loop.load_layer
    monkeypatch.setattr(loop, "load_layer", lambda ckpt, cfg, i, *a: loaded.append(i) or real_load(ckpt, cfg, i, *a))
    out = _awq(base, tmp_path / "q", spill=True)  # spilling the activations changes nothing either
    assert loaded == [2]  # continued after the last finished layer, which is read once
    a, b = load_file(ref / "model.safetensors"), load_file(out / "model.safetensors")
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert (ref / "config.json").read_bytes() == (out / "config.json").read_bytes()


def test_awq_settings_quantizer_name_and_non_finite_weights(tmp_path):
    import json

    import pytest
    from helpers import write_tiny_llama
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from camelid.errors import CamelidError, CheckpointError
    from camelid.formats.gptq.config import QUANTIZER
    from camelid.quant import QuantParams

    for bad, match in (({"bits": 3}, "4-bit"), ({"group_size": -1}, "positive"), ({"act_order": True}, "act-order"),
                       ({"lm_head": True}, "lm-head")):
        with pytest.raises(CamelidError, match=match):
            QuantParams(method="awq", **bad)
    base = write_tiny_llama(tmp_path / "base")
    with pytest.raises(CamelidError, match="quantizes none"):  # 128 and 256 inputs: no group of 96 divides both
        from camelid.quant import RunOptions, quantize

        quantize(base, tmp_path / "none", QuantParams(group_size=96, method="awq"), calibration=IDS,
                 options=RunOptions(device="cpu", progress=False))
    out = _awq(base, tmp_path / "q")
    with safe_open(out / "model.safetensors", "pt") as f:
        assert f.metadata() == {"format": "pt", "quantizer": QUANTIZER}
    assert json.loads((out / "config.json").read_text())["quantization_config"]["group_size"] == 32
    weights = load_file(base / "model.safetensors")
    weights["model.layers.1.mlp.up_proj.weight"][3, 5] = float("nan")
    save_file(weights, base / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="up_proj.weight has 1 NaN"):
        _awq(base, tmp_path / "nan")
