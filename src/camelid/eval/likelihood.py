"""Perplexity and KL divergence of a causal LM on a text, windowed as the GPTQ papers do.

GPTQ protocol (IST-DASLab gptq `datautils.py`/`llama.py`): the text is `"\\n\\n".join` of the dataset's lines,
tokenized once (one BOS at the very start), cut into non-overlapping `seq_len` windows with the tail
dropped; each window is scored on its own (no carried context) and PPL = exp(mean token NLL).
Logits are turned into float32 log-probabilities whatever the model's dtype.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F

from camelid.errors import CamelidError
from camelid.textio import read_text_file

# Tokens per forward pass: float32 log-probs of 4096 tokens at vocab 32000 are 0.5 GB (KL holds ~4 such).
TOKENS_PER_BATCH = 4096


def read_gptq_text(path: str | Path) -> str:
    """`"\\n\\n".join` of a file's lines as the GPTQ scripts see them via `datasets` (wikitext rows keep their
    newline; blank rows are ""). On wikitext-2-raw-v1 test this gives the usual 341,469 LLaMA tokens."""
    lines = read_text_file(path, "eval data").splitlines(keepends=True)
    return "\n\n".join(line if line.strip() else "" for line in lines)


def gptq_windows(tokenizer, text: str, seq_len: int) -> torch.Tensor:
    """[n, seq_len] token windows: one tokenization of the whole text, non-overlapping, tail dropped."""
    if seq_len < 2:
        raise CamelidError(f"seq_len must be at least 2, got {seq_len}")
    ids = torch.tensor(tokenizer(text, add_special_tokens=True, verbose=False)["input_ids"], dtype=torch.long)
    n = ids.numel() // seq_len
    if n == 0:
        raise CamelidError(f"the text has {ids.numel()} tokens, fewer than one window of {seq_len}; lower --seq-len")
    return ids[: n * seq_len].view(n, seq_len)


def document_windows(tokenizer, text: str, seq_len: int, doc_sep: str) -> list[torch.Tensor]:
    """Per-document scoring (e.g. TinyStories split on "<|endoftext|>"): each stripped document tokenized
    with its own BOS, cut into pieces of at most seq_len tokens (the last piece kept)."""
    pieces = []
    for doc in text.split(doc_sep):
        if doc.strip():
            ids = torch.tensor(tokenizer(doc.strip(), add_special_tokens=True)["input_ids"], dtype=torch.long)
            pieces += [p for p in ids.split(seq_len) if p.numel() > 1]
    if not pieces:
        raise CamelidError(f"no documents found between separators {doc_sep!r}")
    return pieces


def _check_length(model, seq_len: int) -> None:
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit is not None and seq_len > limit:
        raise CamelidError(f"seq_len {seq_len} exceeds the model's max_position_embeddings {limit}; lower --seq-len")


def _batches(windows: torch.Tensor | list[torch.Tensor]):
    """Stacks of equal-length windows, a bounded number of tokens per forward pass."""
    if isinstance(windows, list):  # variable-length documents: one at a time
        for w in windows:
            yield w[None]
        return
    per = max(1, TOKENS_PER_BATCH // windows.shape[1])
    yield from windows.split(per)


def _device(model) -> torch.device:
    # `.device` as Transformers models have it; llama.cpp's GGUF models (camelid.runtime.llamacpp) too.
    return model.device if hasattr(model, "device") else next(model.parameters()).device


def _log_probs(model, batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    """float32 log-probs on `device` (where the metrics are reduced; only scalars leave it)."""
    logits = model(input_ids=batch.to(_device(model)), use_cache=False).logits
    return F.log_softmax(logits.to(device, torch.float32), dim=-1)


def _nll(log_probs: torch.Tensor, batch: torch.Tensor) -> float:
    """Summed next-token NLL over a batch (the window's first token has no prediction)."""
    return -log_probs[:, :-1].gather(-1, batch[:, 1:, None].to(log_probs.device)).double().sum().item()


def _windows(model, tokenizer, text, seq_len, doc_sep):
    _check_length(model, seq_len)
    return gptq_windows(tokenizer, text, seq_len) if doc_sep is None else document_windows(
        tokenizer, text, seq_len, doc_sep)


@torch.inference_mode()
def perplexity(model, tokenizer, text: str, seq_len: int = 2048, doc_sep: str | None = None) -> dict:
    """PPL of `model` on `text` (already joined, see `read_gptq_text`), GPTQ windows unless `doc_sep`."""
    windows = _windows(model, tokenizer, text, seq_len, doc_sep)
    device = _device(model)
    nll, count = 0.0, 0
    for batch in _batches(windows):
        nll += _nll(_log_probs(model, batch, device), batch)
        count += batch.shape[0] * (batch.shape[1] - 1)
    return {"ppl": math.exp(nll / count), "nll": nll / count, "windows": len(windows),
            "seq_len": seq_len, "tokens_scored": count,
            "protocol": "gptq" if doc_sep is None else f"documents split on {doc_sep!r}"}


@torch.inference_mode()
def kl_divergence(model, reference_model, tokenizer, text: str, seq_len: int = 2048,
                  doc_sep: str | None = None) -> dict:
    """How far `model` (e.g. quantized) drifts from `reference_model` (e.g. fp16) on the same windows.

    KL(P_ref || P_model) of the next-token distributions at every position (mean, median, p99), the share of
    positions where both pick the same top-1 token, and both perplexities from the same forward passes.
    """
    windows = _windows(model, tokenizer, text, seq_len, doc_sep)
    device = _device(model)
    kls, agree, nll, nll_ref, count = [], 0, 0.0, 0.0, 0
    for batch in _batches(windows):
        lp, lp_ref = _log_probs(model, batch, device), _log_probs(reference_model, batch, device)
        if lp.shape != lp_ref.shape:
            raise CamelidError(f"model and reference disagree on vocabulary: {lp.shape[-1]} vs {lp_ref.shape[-1]}")
        kls.append(F.kl_div(lp, lp_ref, log_target=True, reduction="none").sum(-1).flatten().cpu())
        agree += (lp.argmax(-1) == lp_ref.argmax(-1)).sum().item()
        nll += _nll(lp, batch)
        nll_ref += _nll(lp_ref, batch)
        count += batch.shape[0] * (batch.shape[1] - 1)
    kl = torch.cat(kls).clamp_min(0)  # float rounding can give -1e-9 for identical distributions
    return {"kld_mean": kl.mean().item(), "kld_median": kl.median().item(),
            "kld_p99": kl.kthvalue(max(1, math.ceil(0.99 * kl.numel()))).values.item(),
            "top1_agreement_pct": 100.0 * agree / kl.numel(), "ppl": math.exp(nll / count),
            "ppl_reference": math.exp(nll_ref / count), "windows": len(windows), "seq_len": seq_len,
            "positions": kl.numel()}
