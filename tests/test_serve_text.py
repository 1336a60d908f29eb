"""Text plumbing of the server: incremental detokenization and stop-sequence hold-back in streams."""

from __future__ import annotations

from camelid.runtime.detokenize import TextStream, decode_generated
from camelid.serve.openai_api import StopTrimmer
from camelid.tokenizer import load_tokenizer
from tests.serve_helpers import STORIES


def test_token_texts_join_to_the_decoded_text():
    tok = load_tokenizer(STORIES)
    prompt = tok("Once upon a time")["input_ids"]
    generated = tok("there was a girl named Lily. She said \"hi!\"\nThe end", add_special_tokens=False)["input_ids"]
    stream = TextStream(tok, prompt)
    pieces = [stream.push(i) for i in generated]
    assert "".join(pieces) == decode_generated(tok, prompt, generated)
    assert pieces[0].startswith(" ")  # SentencePiece's leading space survives token-by-token decoding


def test_stop_trimmer_holds_back_possible_stops_only():
    t = StopTrimmer(["<|user|>"])
    assert t.push("Hello <|", last=False) == "Hello "
    assert t.push("us", last=False) == ""
    assert t.push("ed it", last=True) == "<|used it"  # not a stop after all: released
    t = StopTrimmer(["<|user|>"])
    assert t.push("Bye\n<|us", last=False) == "Bye\n"
    assert t.push("er|> more", last=False) == ""  # the stop itself is never sent
    assert t.stopped and t.push("later", last=True) == ""
