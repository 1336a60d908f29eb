"""The layer loop end to end on the bundled stories260K: output format, resume, CLI, calibration input."""

import csv
import json
from pathlib import Path

import pytest
import torch
from helpers import crash_after_layer
from safetensors.torch import load_file

from camelid.cli import main as camelid
from camelid.errors import CamelidError
from camelid.formats.gptq.reader import dense_model
from camelid.quant import CalibSpec, QuantParams, RunOptions, loop, quantize
from camelid.quant.calib import calibration_windows, read_texts, sample_windows

REPO = Path(__file__).resolve().parents[1]
STORIES = REPO / "examples" / "stories260K"
CALIB = REPO / "examples" / "data" / "tinystories_sample.txt"
CAL = CalibSpec(dataset="file", dataset_path=str(CALIB), seq_len=64, nsamples=8)
QUIET = RunOptions(progress=False)


def test_stories260k_checkpoint_layout(tmp_path):
    out = quantize(STORIES, tmp_path / "q", QuantParams(4, 32, act_order=True), CAL, QUIET)
    t = load_file(out / "model.safetensors")
    p = "model.layers.0.self_attn.k_proj"  # in 64, out 32 (4 KV heads x 8)
    assert t[p + ".qweight"].dtype == torch.int32 and t[p + ".qweight"].shape == (64 * 4 // 32, 32)
    assert t[p + ".qzeros"].dtype == torch.int32 and t[p + ".qzeros"].shape == (2, 32 * 4 // 32)
    assert t[p + ".scales"].dtype == torch.float16 and t[p + ".scales"].shape == (2, 32)
    assert t[p + ".g_idx"].dtype == torch.int32 and t[p + ".g_idx"].shape == (64,)
    assert (t[p + ".qzeros"] == 0x77777777).all()  # symmetric 4-bit: zero 8 stored as 7 in every nibble
    # the MLP is 172 wide: not packable, stays fp16 and is declared so for both loaders
    assert t["model.layers.0.mlp.down_proj.weight"].dtype == torch.float16
    assert "model.layers.0.mlp.down_proj.qweight" not in t
    qcfg = json.loads((out / "quantize_config.json").read_text())
    for key in ("bits", "group_size", "desc_act", "damp_percent", "sym", "true_sequential", "static_groups",
                "model_name_or_path", "model_file_base_name", "quant_method", "checkpoint_format", "meta"):
        assert key in qcfg
    assert qcfg["quant_method"] == "gptq" and qcfg["checkpoint_format"] == "gptq" and qcfg["desc_act"] is True
    assert qcfg["meta"]["quantizer"][0].startswith("camelid:") and qcfg["meta"]["damp_used"] >= 0.01
    assert qcfg["meta"]["nsamples"] == 8 and qcfg["meta"]["seq_len"] == 64
    assert r"-:.*\.mlp\.down_proj$" in qcfg["dynamic"]
    assert qcfg["modules_in_block_to_quantize"] == [["self_attn.k_proj", "self_attn.v_proj", "self_attn.q_proj"],
                                                    ["self_attn.o_proj"]]
    assert json.loads((out / "config.json").read_text())["quantization_config"] == qcfg
    assert (out / "tokenizer.model").is_file()
    rows = list(csv.DictReader(open(out / "quant_log.csv")))
    assert len(rows) == 5 * 4 and set(rows[0]) == {"layer", "module", "loss", "damp", "seconds"}
    assert not (tmp_path / "q.partial").exists()


def test_quantized_model_stays_close(tmp_path):
    ids = sample_windows(torch.arange(2000) % 500 + 3, 2, 64, seed=1)
    out = quantize(STORIES, tmp_path / "q", QuantParams(8, 32), CAL, QUIET)
    from transformers import LlamaForCausalLM

    fp = LlamaForCausalLM.from_pretrained(STORIES, dtype=torch.float32).eval()
    with torch.no_grad():
        a = fp(ids).logits.log_softmax(-1)
        b = dense_model(out)(ids).logits.log_softmax(-1)
    kl = (a.exp() * (a - b)).sum(-1).mean()
    assert kl < 1e-3


def test_resume_after_interruption(tmp_path, monkeypatch):
    ref = quantize(STORIES, tmp_path / "ref", QuantParams(3, 32), CAL, QUIET)
    real_save = loop.save_progress
    monkeypatch.setattr(loop, "save_progress", crash_after_layer(2))
    with pytest.raises(KeyboardInterrupt):
        quantize(STORIES, tmp_path / "q", QuantParams(3, 32), CAL, QUIET)
    assert not (tmp_path / "q").exists() and (tmp_path / "q.partial").is_dir()
    monkeypatch.setattr(loop, "save_progress", real_save)
    loaded = []
    real_load = loop.load_layer
    monkeypatch.setattr(loop, "load_layer", lambda ckpt, cfg, i, *a: loaded.append(i) or real_load(ckpt, cfg, i, *a))
    out = quantize(STORIES, tmp_path / "q", QuantParams(3, 32), CAL, QUIET)
    assert loaded == [3, 4]  # continued after the last finished layer
    a, b = load_file(ref / "model.safetensors"), load_file(out / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (ref / "quant_log.csv").read_text().count("\n") == (out / "quant_log.csv").read_text().count("\n")
    # a rerun with other settings refuses the stale partial output instead of mixing the two
    monkeypatch.setattr(loop, "save_progress", crash_after_layer(2))
    with pytest.raises(KeyboardInterrupt):
        quantize(STORIES, tmp_path / "r", QuantParams(3, 32), CAL, QUIET)
    monkeypatch.setattr(loop, "save_progress", real_save)
    with pytest.raises(CamelidError, match="other settings"):
        quantize(STORIES, tmp_path / "r", QuantParams(4, 32), CAL, QUIET)


def test_non_sequential_rtn_and_spill(tmp_path):
    a = quantize(STORIES, tmp_path / "a", QuantParams(4, 32, true_sequential=False), CAL,
                 RunOptions(spill=True, progress=False))
    b = quantize(STORIES, tmp_path / "b", QuantParams(4, 32, true_sequential=False), CAL, QUIET)
    ta, tb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert all(torch.equal(ta[k], tb[k]) for k in ta)  # spilling to disk changes nothing
    r = quantize(STORIES, tmp_path / "r", QuantParams(4, 32, method="rtn"), options=QUIET)
    assert json.loads((r / "quantize_config.json").read_text())["meta"]["method"] == "rtn"


def test_cli_quantize_and_errors(tmp_path, capsys):
    out = tmp_path / "cli"
    rc = camelid(["quantize", str(STORIES), str(out), "--bits", "2", "--group-size", "-1", "--asym",
                  "--dataset", str(CALIB), "--seq-len", "64", "--nsamples", "4", "--static-groups", "--act-order"])
    assert rc == 0 and (out / "model.safetensors").is_file()
    qcfg = json.loads((out / "quantize_config.json").read_text())
    assert (qcfg["bits"], qcfg["group_size"], qcfg["sym"], qcfg["static_groups"]) == (2, -1, False, True)
    # existing output, missing calibration file, tied lm_head: clear errors, nothing written
    assert camelid(["quantize", str(STORIES), str(out), "--dataset", str(CALIB)]) == 2
    assert camelid(["quantize", str(STORIES), str(tmp_path / "x"), "--dataset", str(tmp_path / "nope.txt"),
                    "--group-size", "32"]) == 2
    assert camelid(["quantize", str(STORIES), str(tmp_path / "y"), "--lm-head", "--dataset", str(CALIB)]) == 2
    assert camelid(["quantize", str(STORIES), str(tmp_path / "z"), "--dataset", str(CALIB), "--seq-len", "4096"]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "not found" in err and "tied" in err and "longer than the model's context" in err
    assert not any((tmp_path / n).exists() for n in ("x", "y", "z", "x.partial", "y.partial", "z.partial"))


def test_calibration_files(tmp_path):
    from camelid.quant.calib import instruction_renderer
    from camelid.tokenizer import load_tokenizer

    (tmp_path / "a.jsonl").write_text('{"text": "hello"}\n{"text": "world"}\n')
    assert read_texts(tmp_path / "a.jsonl") == ["hello", "world"]
    recs = [{"instruction": "Add 2 and 3.", "input": "", "output": "5"},
            {"instruction": "Sort.", "input": "3 1 2", "output": "1 2 3"}]
    (tmp_path / "b.json").write_text(json.dumps(recs))
    tok = load_tokenizer(STORIES)
    texts = read_texts(tmp_path / "b.json", instruction_renderer(tok, "alpaca"))
    assert "### Instruction:\nAdd 2 and 3.\n\n### Response:\n5" in texts[0]
    assert "### Instruction:\nSort.\n\n3 1 2\n\n### Response:\n1 2 3" in texts[1]
    tulu = read_texts(tmp_path / "b.json", instruction_renderer(tok, "tulu"))[0]
    assert "<|user|>\nAdd 2 and 3.\n<|assistant|>\n5" in tulu
    with pytest.raises(CamelidError, match="unknown prompt template"):
        instruction_renderer(tok, "nope")
    with pytest.raises(CamelidError, match="tokenizer and prompt template"):
        read_texts(tmp_path / "b.json")
    (tmp_path / "c.json").write_text('[{"prompt": "x"}]')
    with pytest.raises(CamelidError, match="neither"):
        read_texts(tmp_path / "c.json")
    # the code set as shipped (Alpaca records) renders through the same path
    ids = calibration_windows(tok, "code", tmp_path / "b.json", nsamples=2, seq_len=8)
    assert ids.shape == (2, 8)
    ids = torch.arange(1000)
    a, b = sample_windows(ids, 4, 100, seed=3), sample_windows(ids, 4, 100, seed=3)
    assert torch.equal(a, b) and a.shape == (4, 100) and torch.equal(a[:, 1] - a[:, 0], torch.ones(4, dtype=torch.long))


def test_lm_head_quantized_on_untied_model(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=256, max_position_embeddings=128, tie_word_embeddings=False)
    LlamaForCausalLM(cfg).save_pretrained(tmp_path / "m")
    ids = torch.randint(0, 256, (8, 32), generator=torch.Generator().manual_seed(0))
    out = quantize(tmp_path / "m", tmp_path / "q", QuantParams(8, 32, lm_head=True), options=QUIET, calibration=ids)
    t = load_file(out / "model.safetensors")
    assert t["lm_head.qweight"].shape == (64 * 8 // 32, 256) and "lm_head.weight" not in t
    assert json.loads((out / "quantize_config.json").read_text())["lm_head"] is True
    fp = LlamaForCausalLM.from_pretrained(tmp_path / "m").eval()
    with torch.no_grad():
        a, b = fp(ids).logits, dense_model(out)(ids).logits
    assert (a - b).abs().max() < 0.05 * a.abs().max()


MLP = ("mlp.up_proj", "mlp.gate_proj", "mlp.down_proj")


@pytest.mark.parametrize("params,calib", [
    (QuantParams(4, 32, act_order=True), CAL),
    (QuantParams(3, -1, sym=False, damp=0.05, static_groups=True, true_sequential=False, mse=True), CAL),
    (QuantParams(8, 64, method="rtn"), CalibSpec(seed=3, template="tulu")),
])
def test_quantize_config_fields_with_skipped_modules(tmp_path, params, calib):
    """Every quantize_config.json field, on stories260K whose MLP (172 wide) cannot be packed: the
    skipped Linears are declared for GPTQModel (`dynamic`) and Transformers (`modules_in_block_...`)."""
    out = quantize(STORIES, tmp_path / "q", params, calib, QUIET)
    qcfg = json.loads((out / "quantize_config.json").read_text())
    gptq = params.method == "gptq"
    expected = {
        "bits": params.bits, "group_size": params.group_size, "desc_act": params.act_order, "sym": params.sym,
        "damp_percent": params.damp, "true_sequential": params.true_sequential,
        "static_groups": params.static_groups, "lm_head": False, "model_name_or_path": str(STORIES),
        "model_file_base_name": "model", "quant_method": "gptq", "checkpoint_format": "gptq", "format": "gptq",
        "pack_dtype": "int32",
        "dynamic": {r"-:.*\.mlp\.up_proj$": {}, r"-:.*\.mlp\.gate_proj$": {}, r"-:.*\.mlp\.down_proj$": {}},
        "modules_in_block_to_quantize": [["self_attn.k_proj", "self_attn.v_proj", "self_attn.q_proj"],
                                         ["self_attn.o_proj"]],
    }
    assert {k: v for k, v in qcfg.items() if k != "meta"} == expected
    meta = dict(qcfg["meta"])
    assert meta.pop("quantizer")[0].startswith("camelid:")
    assert meta.pop("compute_dtype") in ("bfloat16", "float32")
    damp_used = meta.pop("damp_used")
    assert damp_used >= params.damp if gptq else damp_used == 0.0  # RTN has no Hessian to damp
    assert meta == {
        "method": params.method, "mse": params.mse,
        "dataset": str(CALIB) if gptq else None, "seq_len": 64 if gptq else None, "nsamples": 8 if gptq else None,
        "seed": calib.seed, "template": calib.template, "damp_auto_increment": 0.01,
        "static_groups": params.static_groups, "true_sequential": params.true_sequential,
        "unquantized_modules": [f"model.layers.{i}.{m}" for i in range(5) for m in MLP],
    }
    assert json.loads((out / "config.json").read_text())["quantization_config"] == qcfg
    t = load_file(out / "model.safetensors")
    assert all(t[f"model.layers.{i}.{m}.weight"].dtype == torch.float16 for i in range(5) for m in MLP)
    assert not any(k.startswith("model.layers.0.mlp.") and k.endswith("qweight") for k in t)


@pytest.mark.slow
def test_gptq_beats_rtn_at_4_bit_on_held_out_text(shared_data, tmp_path):
    """4-bit g128 on camel45m: GPTQ's KL to the fp model on held-out text (wikitext-2 test; calibration
    from the valid split) is below RTN's. (At 8 bits both are close to fp; this is where GPTQ matters.)"""
    from transformers import LlamaForCausalLM

    from camelid.eval.likelihood import kl_divergence
    from camelid.tokenizer import load_tokenizer

    model = shared_data / "models" / "camel45m"
    wiki = shared_data / "eval" / "wikitext2"
    tok = load_tokenizer(model)
    ids = calibration_windows(tok, "file", wiki / "wikitext-2-v1.valid.tokens.txt", 16, 128, seed=0)
    held_out = (wiki / "wikitext-2-v1.test.tokens.txt").read_text()[:20000]
    fp = LlamaForCausalLM.from_pretrained(model, dtype=torch.float32).eval()
    kl = {}
    for method in ("rtn", "gptq"):
        out = quantize(model, tmp_path / method, QuantParams(4, 128, method=method), options=QUIET, calibration=ids)
        kl[method] = kl_divergence(dense_model(out), fp, tok, held_out, seq_len=128)["kld_mean"]
    assert 0 < kl["gptq"] < 0.9 * kl["rtn"], kl
