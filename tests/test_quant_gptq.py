"""GPTQ math on single layers: grids, g_idx, damping, and GPTQ beating RTN on real activations."""

from pathlib import Path

import pytest
import torch

from camelid.checkpoint import open_checkpoint
from camelid.quant.calib import calibration_windows
from camelid.quant.gptq import Hessian, gptq, inverse_cholesky, rtn
from camelid.quant.layer import llama_config, load_layer
from camelid.quant.quantizer import find_params, quantize
from camelid.quant.settings import QuantParams
from camelid.tokenizer import load_tokenizer

REPO = Path(__file__).resolve().parents[1]
STORIES = REPO / "examples" / "stories260K"
CALIB = REPO / "examples" / "data" / "tinystories_sample.txt"


def _stories_inputs(nsamples=16, seq_len=128):
    """Real (correlated) inputs of layer 0's q/k/v projections of stories260K, and the layer."""
    ckpt = open_checkpoint(STORIES)
    ids = calibration_windows(load_tokenizer(STORIES), "file", CALIB, nsamples, seq_len, seed=0)
    layer = load_layer(ckpt, llama_config(ckpt.config), 0)
    with torch.no_grad():
        h = ckpt.read("model.embed_tokens.weight")[ids]
        x = layer.input_layernorm(h).reshape(-1, h.shape[-1])
    return layer, x


@pytest.mark.parametrize("bits", [3, 4])
def test_gptq_output_error_below_rtn_on_real_activations(bits):
    layer, x = _stories_inputs()
    fit, held = x[: x.shape[0] // 2], x[x.shape[0] // 2:]  # error measured on inputs GPTQ did not see
    hess = Hessian(x.shape[1])
    hess.add(fit)
    for name in ("q_proj", "k_proj", "v_proj"):
        w = getattr(layer.self_attn, name).weight.detach()
        for act_order in (False, True):
            g = gptq(w, hess.value(), QuantParams(bits, group_size=32, act_order=act_order))
            r = rtn(w, QuantParams(bits, group_size=32))
            err_g = torch.linalg.norm(held @ (w - g.dequantized()).t())
            err_r = torch.linalg.norm(held @ (w - r.dequantized()).t())
            assert err_g < 0.9 * err_r, (name, act_order, err_g, err_r)


def test_g_idx_act_order_and_static_groups():
    torch.manual_seed(0)
    w = torch.randn(64, 256)
    x = torch.randn(1024, 256) * torch.linspace(0.1, 3, 256)[torch.randperm(256)]
    h = Hessian(256)
    h.add(x)
    plain = gptq(w, h.value(), QuantParams(4, group_size=64))
    assert torch.equal(plain.g_idx, torch.arange(256, dtype=torch.int32) // 64)
    act = gptq(w, h.value(), QuantParams(4, group_size=64, act_order=True))
    perm = torch.argsort(torch.diag(h.value()), descending=True)
    # column perm[k] is quantized k-th, so it belongs to group k // 64: non-monotonic in column order
    assert torch.equal(act.g_idx[perm], (torch.arange(256) // 64).to(torch.int32))
    assert not bool((act.g_idx[1:] >= act.g_idx[:-1]).all())
    assert torch.bincount(act.g_idx).tolist() == [64] * 4
    static = gptq(w, h.value(), QuantParams(4, group_size=64, act_order=True, static_groups=True))
    assert torch.equal(static.g_idx, torch.arange(256, dtype=torch.int32) // 64)
    # every stored code reproduces the dequantized weight through g_idx (what a loader computes)
    for res in (plain, act, static):
        deq = res.scales[res.g_idx.long()].t() * (res.q.float() - res.zeros[res.g_idx.long()].t())
        assert torch.allclose(deq, res.dequantized())


def test_cholesky_failure_raises_damp():
    torch.manual_seed(0)
    x = torch.randn(4, 64)  # 4 samples in 64 dims: H has rank 4
    h = Hessian(64)
    h.add(x)
    with pytest.raises(torch.linalg.LinAlgError):
        torch.linalg.cholesky(h.value())
    factor, damp = inverse_cholesky(h.value(), damp=0.0)
    assert damp > 0 and torch.isfinite(factor).all()
    res = gptq(torch.randn(32, 64), h.value(), QuantParams(4, group_size=32, damp=0.0))
    assert res.damp == damp and torch.isfinite(res.dequantized()).all()


def test_dead_columns_zeroed():
    x = torch.randn(256, 64)
    x[:, 5] = 0
    h = Hessian(64)
    h.add(x)
    res = gptq(torch.randn(16, 64), h.value(), QuantParams(4, group_size=32))
    assert torch.all(res.dequantized()[:, 5] == 0)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_asym_zero_point_never_zero(bits):
    # rows with min ~0 would round to zero-point 0, which v1 cannot store: the grid widens instead
    w = torch.rand(8, 32) + torch.tensor([0.0, 1e-4, 0.5, 1.0, 2.0, 0.0, 0.0, 0.0])[:, None]
    w[5] = 0
    w[6] = -torch.rand(32)
    for mse in (False, True):
        s, z = find_params(w, bits, sym=False, mse=mse)
        maxq = 2**bits - 1
        assert bool((z >= 1).all()) and bool((z <= maxq).all())
        q = quantize(w, s[:, None], z[:, None], maxq)
        if not mse:  # the plain grid clips nothing (the MSE search clips on purpose)
            err = (s[:, None] * (q - z[:, None]) - w).abs()
            assert bool((err <= s[:, None] * 0.501).all())
    s, z = find_params(w, bits, sym=True)
    assert bool((z == (2**bits) // 2).all())


def test_mse_grid_not_worse():
    torch.manual_seed(0)
    w = torch.randn(64, 128) ** 3  # heavy tails: shrinking the range pays off
    for sym in (True, False):
        plain = rtn(w, QuantParams(3, 128, sym=sym))
        mse = rtn(w, QuantParams(3, 128, sym=sym, mse=True))
        e_plain = (plain.dequantized() - w).abs().pow(2.4).sum()
        e_mse = (mse.dequantized() - w).abs().pow(2.4).sum()
        assert e_mse < e_plain


@pytest.mark.parametrize("x2_in_h", [True, False])
def test_stages_walk_the_layer(x2_in_h):
    """The named stages, each starting from what the previous one left, end where the layer's own
    forward does; each stage's input is its group's real input (checked on the Linears by hooks)."""
    from camelid.quant.layer import STAGES, layer_output, rotary

    ckpt = open_checkpoint(STORIES)
    config = llama_config(ckpt.config)
    layer = load_layer(ckpt, config, 0)
    h = torch.randn(2, 16, config.hidden_size)
    pe = rotary(config, 16)
    seen = {}
    hooks = [layer.get_submodule(s.linears[0]).register_forward_pre_hook(
        lambda mod, args, name=s.name: seen.setdefault(name, args[0])) for s in STAGES]
    with torch.no_grad():
        want = layer(h, attention_mask=None, position_embeddings=pe)
    for hk in hooks:
        hk.remove()
    left, cur = None, h
    with torch.no_grad():
        for stage in STAGES:
            x, left_next, h_next = stage.run(layer, cur, left if stage.reads_left else None, pe, x2_in_h)
            torch.testing.assert_close(x, seen[stage.name])
            left = left if left_next is None else left_next
            if h_next is not None and x2_in_h:
                cur = h_next
        got = layer_output(layer, cur, pe, left if x2_in_h else None) if x2_in_h else layer_output(layer, h, pe)
    torch.testing.assert_close(got, want)
