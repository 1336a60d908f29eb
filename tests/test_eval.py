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
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(2)
    return AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.float32).eval(), AutoTokenizer.from_pretrained(MODEL)


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
