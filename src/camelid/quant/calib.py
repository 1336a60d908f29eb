"""Calibration data: a text corpus, tokenized once, cut into seeded random windows of seq_len tokens.

The windowing is the GPTQ reference's (IST-DASLab `datautils.py`): the corpus is joined with blank
lines, tokenized as one stream, and each sample starts at a uniformly random offset.
Sources: plain text; `.jsonl`/`.json` records with a `text` field; Alpaca-style
instruction/input/output records rendered with a prompt template of `camelid.chat`. Named sets (`wikitext2`, `code`)
read `--dataset-path` when given, else the Hugging Face `datasets` library (needs the Hub).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from camelid.errors import CamelidError
from camelid.textio import read_text_file

NAMED_SETS = {
    # name: (datasets args, field) used when no local file is given
    "wikitext2": (("wikitext", "wikitext-2-raw-v1"), "train", "text"),
    "code": (("sahil280114/codealpaca",), "train", None),
}

def instruction_renderer(tokenizer, template: str = "alpaca") -> Callable[[dict], str]:
    """Render an instruction/input/output record as one user/assistant exchange with a prompt template
    of camelid's registry (`camelid.chat`), exactly as chat and training see it."""
    from camelid.chat.templates import TEMPLATES, render_template

    if template not in TEMPLATES:
        raise CamelidError(f"unknown prompt template {template!r}; choose from {sorted(TEMPLATES)}")

    def render(rec: dict) -> str:
        user = rec["instruction"] + ("\n\n" + rec["input"] if rec.get("input") else "")
        messages = [{"role": "user", "content": user}, {"role": "assistant", "content": rec.get("output", "")}]
        return render_template(tokenizer, messages, template, add_generation_prompt=False)

    return render


def record_text(rec: object, render: Callable[[dict], str] | None = None) -> str:
    if isinstance(rec, str):
        return rec
    if isinstance(rec, dict):
        if isinstance(rec.get("text"), str):
            return rec["text"]
        if isinstance(rec.get("instruction"), str):
            if render is None:
                raise CamelidError("instruction records need a tokenizer and prompt template to render")
            return render(rec)
    raise CamelidError(f"calibration record has neither a 'text' nor an 'instruction' field: {str(rec)[:80]}")


def read_texts(path: str | Path, render: Callable[[dict], str] | None = None) -> list[str]:
    """Texts of a local calibration file (.txt/.raw: the whole file; .jsonl/.json: one per record)."""
    path = Path(path)
    text = read_text_file(path, "calibration file")
    try:
        if path.suffix == ".jsonl":
            records: Iterable = [json.loads(line) for line in text.splitlines() if line.strip()]
        elif path.suffix == ".json":
            records = json.loads(text)
            if isinstance(records, dict):
                records = records.get("data", records.get("train", [records]))
        else:
            return [text]
    except ValueError as e:
        raise CamelidError(f"{path}: not valid JSON/JSONL ({e})") from e
    if not isinstance(records, list):
        raise CamelidError(f"{path}: expected a list of records, got {type(records).__name__}")
    return [record_text(r, render) for r in records]


def _hub_texts(name: str, render: Callable[[dict], str]) -> list[str]:
    args, split, field = NAMED_SETS[name]
    try:
        import datasets
    except ImportError:
        raise CamelidError(f"--dataset {name} needs --dataset-path FILE (or the `datasets` package "
                           "and Hub access)") from None
    try:
        ds = datasets.load_dataset(*args, split=split)
    except Exception as e:  # offline / hub errors come in many types
        raise CamelidError(f"cannot load {name} from the Hugging Face Hub ({e.__class__.__name__}); "
                           "pass a local copy with --dataset-path FILE") from e
    return [r[field] if field else record_text(r, render) for r in ds]


def load_texts(dataset: str, dataset_path: str | Path | None = None,
               render: Callable[[dict], str] | None = None) -> list[str]:
    if dataset_path is not None:
        return read_texts(dataset_path, render)
    if dataset in NAMED_SETS:
        return _hub_texts(dataset, render)
    return read_texts(dataset, render)


def sample_windows(token_ids: torch.Tensor, nsamples: int, seq_len: int, seed: int = 0) -> torch.Tensor:
    """[nsamples, seq_len] windows at seeded random offsets of a 1-D token stream."""
    n = token_ids.numel()
    if n < seq_len + 1:
        raise CamelidError(f"calibration text has {n} tokens, fewer than --seq-len {seq_len} + 1; "
                           "use more text or a shorter --seq-len")
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, n - seq_len, (nsamples,), generator=gen)
    return torch.stack([token_ids[s:s + seq_len] for s in starts.tolist()])


def calibration_windows(tokenizer, dataset: str, dataset_path: str | Path | None = None, nsamples: int = 128,
                        seq_len: int = 2048, seed: int = 0, template: str = "alpaca") -> torch.Tensor:
    texts = load_texts(dataset, dataset_path, instruction_renderer(tokenizer, template))
    ids = tokenizer("\n\n".join(texts), return_tensors="pt", verbose=False)["input_ids"][0]
    return sample_windows(ids, nsamples, seq_len, seed)
