import json
from pathlib import Path

import pytest
import torch

import camelid
from camelid.errors import CamelidError

STORIES = Path(__file__).resolve().parents[1] / "examples" / "stories260K"


def test_load_dense_stories260k_greedy_matches_llama2c(shared_data):
    model, tok = camelid.load(STORIES)
    assert model.dtype == torch.float32 and not model.training
    golden = json.loads((shared_data / "models" / "stories260K" / "golden_greedy_llama2c.json").read_text())
    ids = torch.tensor([[tok.bos_token_id]])
    out = model.generate(ids, max_new_tokens=200, do_sample=False, attention_mask=torch.ones_like(ids))
    assert tok.decode(out[0, 1:], skip_special_tokens=True) == golden["expected_stdout"]


def test_slow_tokenizer_collapses_spaces_like_sentencepiece():
    _, tok = camelid.load(STORIES)
    assert tok("Hello   world").input_ids == tok("Hello world").input_ids
    assert tok("Hello world").input_ids[0] == tok.bos_token_id


def test_load_errors_are_clear(tmp_path):
    with pytest.raises(CamelidError, match="not found"):
        camelid.load(tmp_path / "missing")
    with pytest.raises(CamelidError, match="unknown dtype"):
        camelid.load(STORIES, dtype="float13")


def test_folder_with_tokenizer_json_keeps_sentencepiece(tmp_path):
    import shutil

    from camelid.tokenizer import LlamaSentencePieceTokenizer, load_tokenizer

    shutil.copytree(STORIES, tmp_path / "m")
    text = "Once  upon a time.</s>\nThe end"
    want = load_tokenizer(tmp_path / "m")(text)["input_ids"]
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(tmp_path / "m").save_pretrained(tmp_path / "m")  # writes tokenizer.json
    assert (tmp_path / "m" / "tokenizer.json").exists()
    tok = load_tokenizer(tmp_path / "m")
    assert isinstance(tok, LlamaSentencePieceTokenizer) and tok(text)["input_ids"] == want
