"""Perplexity (GPTQ protocol) and KL divergence on the bundled stories260K model."""

import copy
import json
import math
from pathlib import Path

import pytest
import torch

from camelid.errors import CamelidError
from camelid.eval import gptq_windows, kl_divergence, perplexity, read_gptq_text

MODEL = Path(__file__).resolve().parents[1] / "examples" / "stories260K"
SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "data" / "tinystories_sample.txt"


@pytest.fixture(scope="module")
def stories():
    import camelid

    torch.set_num_threads(2)
    return camelid.load(MODEL, device="cpu")


def test_gptq_text_wikitext2_token_count(shared_data):
    # The GPTQ scripts' "\n\n".join of the datasets rows, tokenized by the slow (SentencePiece) LLaMA tokenizer
    # with its BOS, gives the well-known 341,469 tokens (166 windows of 2048).
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(shared_data / "tokenizers" / "llama2" / "tokenizer.model"))
    text = read_gptq_text(shared_data / "eval" / "wikitext2" / "wiki.test.raw")
    n = 1 + len(sp.encode(text))
    assert n == 341469 and n // 2048 == 166


def test_ppl_matches_transformers_loss(stories):
    model, tok = stories
    text = read_gptq_text(SAMPLE)
    windows = gptq_windows(tok, text, 128)
    ids = tok(text)["input_ids"]
    assert windows.shape == (len(ids) // 128, 128) and windows[0, 0] == tok.bos_token_id  # tail dropped
    # Independent reference: Transformers' own loss per window (labels=input_ids), GPTQ's exp(mean).
    with torch.no_grad():
        losses = [model(input_ids=w[None], labels=w[None]).loss.item() for w in windows]
    result = perplexity(model, tok, text, seq_len=128)
    assert result["windows"] == len(windows)
    assert result["ppl"] == pytest.approx(math.exp(sum(losses) / len(losses)), rel=1e-5)


def test_ppl_per_document_reproduces_reference(stories):
    # shared/data README: stories260K fp32 ppl about 3.69 on this sample. It is the per-story number
    # (each story with its own BOS, split on <|endoftext|>); GPTQ windows over the joined text give ~7.
    model, tok = stories
    result = perplexity(model, tok, SAMPLE.read_text(), seq_len=512, doc_sep="<|endoftext|>")
    assert result["windows"] == 5
    assert result["ppl"] == pytest.approx(3.69, abs=0.01)


def test_kld_self_zero_and_perturbed_positive(stories):
    model, tok = stories
    text = read_gptq_text(SAMPLE)
    same = kl_divergence(model, model, tok, text, seq_len=256)
    assert same["kld_mean"] == 0 and same["top1_agreement_pct"] == 100
    assert same["ppl"] == same["ppl_reference"] == pytest.approx(perplexity(model, tok, text, 256)["ppl"])
    noisy = copy.deepcopy(model)
    with torch.no_grad():
        for p in noisy.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=torch.Generator().manual_seed(0)))
    drift = kl_divergence(noisy, model, tok, text, seq_len=256)
    assert drift["kld_mean"] > 0.01 and drift["top1_agreement_pct"] < 100
    assert drift["ppl_reference"] == pytest.approx(same["ppl"]) and drift["ppl"] != drift["ppl_reference"]
    # Same numbers computed directly, window by window.
    kl, agree = [], []
    with torch.no_grad():
        for w in gptq_windows(tok, text, 256):
            p_ref = torch.log_softmax(model(w[None]).logits.float(), -1)
            p_q = torch.log_softmax(noisy(w[None]).logits.float(), -1)
            kl.append((p_ref.exp() * (p_ref - p_q)).sum(-1).flatten())
            agree.append((p_ref.argmax(-1) == p_q.argmax(-1)).flatten())
    assert drift["kld_mean"] == pytest.approx(torch.cat(kl).mean().item(), rel=1e-4)
    assert drift["top1_agreement_pct"] == pytest.approx(100 * torch.cat(agree).float().mean().item())


def test_eval_errors(stories):
    model, tok = stories
    with pytest.raises(CamelidError, match="fewer than one window"):
        perplexity(model, tok, "Once upon a time", seq_len=64)
    with pytest.raises(CamelidError, match="max_position_embeddings"):
        perplexity(model, tok, read_gptq_text(SAMPLE), seq_len=2048)
    with pytest.raises(CamelidError, match="not found"):
        read_gptq_text("/nonexistent/file.txt")


def test_cli_eval_ppl_and_kld(capsys):
    from camelid.cli import main

    assert main(["eval", "ppl", str(MODEL), "--data", str(SAMPLE), "--seq-len", "256"]) == 0
    ppl = json.loads(capsys.readouterr().out)
    assert ppl["windows"] == 7 and ppl["protocol"] == "gptq" and 1 < ppl["ppl"] < 20
    assert main(["eval", "kld", str(MODEL), "--reference", str(MODEL), "--data", str(SAMPLE), "--seq-len", "256"]) == 0
    kld = json.loads(capsys.readouterr().out)
    assert kld["kld_mean"] == 0 and kld["top1_agreement_pct"] == 100 and kld["ppl"] == pytest.approx(ppl["ppl"])
    assert main(["eval", "ppl", str(MODEL), "--data", "/nonexistent.txt"]) == 2
    assert "not found" in capsys.readouterr().err


def _write_rtn_stories(out: Path, bits: int) -> Path:
    """stories260K with its attention Linears round-to-nearest quantized (per channel), GPTQ v1 format."""
    from helpers import rtn_gptq_layer
    from safetensors.torch import load_file, save_file

    tensors = {}
    for name, t in load_file(MODEL / "model.safetensors").items():
        # The MLP (172 wide) cannot be packed (GPTQ packs 32 rows/columns at a time): it stays fp32, as
        # unquantized layers do; the attention projections (64 x 64) are quantized.
        if name.startswith("model.layers.") and ".self_attn." in name and name.endswith("proj.weight"):
            prefix = name.removesuffix(".weight")
            tensors |= {f"{prefix}.{k}": v for k, v in rtn_gptq_layer(t, bits, group_size=-1).items()}
        else:
            tensors[name] = t
    out.mkdir()
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    qcfg = {"bits": bits, "group_size": -1, "desc_act": False, "sym": True, "quant_method": "gptq",
            "checkpoint_format": "gptq"}
    cfg = json.loads((MODEL / "config.json").read_text()) | {"quantization_config": qcfg}
    (out / "config.json").write_text(json.dumps(cfg))
    for name in ("tokenizer.model", "tokenizer_config.json"):
        (out / name).write_bytes((MODEL / name).read_bytes())
    return out


def test_kld_of_quantized_checkpoints_orders_by_bits(tmp_path, capsys):
    # GPTQ checkpoints loaded by camelid.load: fewer bits, more drift from the fp32 original.
    from camelid.cli import main

    results = {}
    for bits in (8, 4, 2):
        ckpt = _write_rtn_stories(tmp_path / f"rtn{bits}", bits)
        assert main(["eval", "kld", str(ckpt), "--reference", str(MODEL), "--data", str(SAMPLE),
                     "--seq-len", "256"]) == 0
        results[bits] = json.loads(capsys.readouterr().out)
    assert 0 < results[8]["kld_mean"] < results[4]["kld_mean"] < results[2]["kld_mean"]
    assert results[8]["top1_agreement_pct"] > results[4]["top1_agreement_pct"] > results[2]["top1_agreement_pct"]
    assert results[8]["ppl"] == pytest.approx(results[8]["ppl_reference"], rel=0.01)
    assert results[2]["ppl"] > results[4]["ppl"] > results[8]["ppl_reference"]
