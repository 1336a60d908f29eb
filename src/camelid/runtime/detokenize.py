"""Incremental detokenization: the text each new token adds (TGI's `decode_token` with prefix/read offsets).

Decoding a token alone loses SentencePiece's leading space and splits multi-byte characters, so each
token's text is the difference between decoding a short window with and without it.
"""

from __future__ import annotations

from collections.abc import Sequence


class TextStream:
    """The growing text of one sequence; `push(ids)` returns the new text once it is printable."""

    def __init__(self, tokenizer, prompt_ids: Sequence[int] = (), skip_special_tokens: bool = False) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.ids = list(prompt_ids[-5:])  # a little prompt context fixes the first token's spacing
        self.prefix_offset = 0
        self.read_offset = len(self.ids)

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        def decode(ids: list[int]) -> str:
            return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

        prefix = decode(self.ids[self.prefix_offset : self.read_offset])
        full = decode(self.ids[self.prefix_offset :])
        if full.endswith("\ufffd"):
            return ""  # an incomplete UTF-8 sequence: wait for the next token
        if not full.startswith(prefix):
            # Slow SentencePiece decodes the text before a special token differently ("g" + "</s>" gives
            # " g</s>"), so the difference would repeat the previous token: take the new tokens alone.
            new = decode(self.ids[self.read_offset :])
        else:
            new = full[len(prefix) :]
        if new:
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        return new


def decode_generated(tokenizer, prompt_ids: list[int], generated: list[int]) -> str:
    """The final generated text, special tokens skipped, with the first token's leading space kept."""
    context = prompt_ids[-1:]
    prefix = tokenizer.decode(context, skip_special_tokens=True)
    full = tokenizer.decode(context + generated, skip_special_tokens=True)
    return full[len(prefix) :]
