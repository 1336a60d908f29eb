"""Text plumbing shared by the server and `camelid generate`: incremental detokenization and stop matching."""

from __future__ import annotations

from camelid.runtime.detokenize import TextStream, decode_generated
from camelid.runtime.stops import StopMatcher, Stops, cut_at_stop
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


def test_stop_matcher_holds_back_possible_stops_only():
    m = StopMatcher(Stops.of(strings=["<|user|>"]))
    assert m.push(5, "Hello <|") == "Hello "
    assert m.push(6, "us") == ""
    assert m.push(7, "ed it") == "<|used it"  # not a stop after all: released
    assert m.reason is None and m.flush() == ""
    m = StopMatcher(Stops.of(strings=["<|user|>"]))
    assert m.push(5, "Bye\n<|us") == "Bye\n"
    assert m.push(6, "er|> more") == ""  # the stop itself is never sent
    assert m.reason == "stop_sequence" and m.push(7, "later") == "" and m.flush() == ""


def test_stop_matcher_earliest_stop_eos_and_flush():
    # Of two stop strings the earliest in the text wins, even when both complete in the same piece.
    m = StopMatcher(Stops.of(strings=["c d", "b"]))
    assert m.push(1, "a ") == "a " and m.push(2, "b c d e") == ""
    assert m.reason == "stop_sequence" and m.text.startswith("a b")
    # A partial match is released when the sequence ends by EOS or by length.
    m = StopMatcher(Stops.of(eos_ids={2}, strings=["###"]))
    assert m.push(1, "x #") == "x " and m.push(2, "</s>") == "#" and m.reason == "eos_token"
    m = StopMatcher(Stops.of(strings=["###", ""]))  # an empty stop string never matches
    assert m.push(1, "y ##") == "y " and m.flush() == "##" and m.reason is None
    assert cut_at_stop("one. two. three", [".", " t"]) == "one" and cut_at_stop("abc", ["", "z"]) == "abc"


def test_stop_matcher_decide_ends_where_push_does():
    """The server only asks whether a token ends the sequence: `decide` must end it on the same token as `push`."""
    stops = Stops.of(eos_ids={9}, strings=["<|user|>", "\n\n"])
    for pieces in (["Hi <|", "us", "er|> x"], ["a\n", "\nb"], ["<|use", "d it", "\n"], ["x", "y"]):
        for ids in ([1] * len(pieces), [1] * (len(pieces) - 1) + [9]):
            pushed, decided = StopMatcher(stops), StopMatcher(stops)
            for i, piece in zip(ids, pieces, strict=True):
                pushed.push(i, piece)
                decided.decide(i, piece)
                assert decided.reason == pushed.reason, (pieces, ids)
            assert decided.sent == 0  # nothing released: the server streams the pieces itself
