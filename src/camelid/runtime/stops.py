"""When a sequence ends before its length: at an EOS id, or at a stop string in its text (the caller's and the
template's end-of-turn string), for `camelid generate`/`chat`, the server and evaluation.

Stop strings are matched on the decoded text, not on ids, as TGI's `StopSequenceCriteria`
(server/text_generation_server/utils/tokens.py) does: a string can end inside a token, and one string has
many tokenizations. While streaming, text that could still become a stop string is held back until it is
decided, so a stream joins to exactly the text that is not streamed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


def eos_token_ids(model, tokenizer) -> frozenset[int]:
    """EOS ids from the tokenizer and the model's generation_config (which may list several)."""
    ids = set()
    for source in (getattr(getattr(model, "generation_config", None), "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(source, int):
            ids.add(source)
        elif source:
            ids.update(source)
    return frozenset(ids)


@dataclass(frozen=True)
class Stops:
    """What ends a sequence besides its length."""

    eos_ids: frozenset[int] = frozenset()
    strings: tuple[str, ...] = ()  # empty strings never match

    @classmethod
    def of(cls, eos_ids: Iterable[int] = (), strings: Iterable[str] = ()) -> Stops:
        return cls(frozenset(eos_ids), tuple(s for s in strings if s))


NO_STOPS = Stops()


def cut_at_stop(text: str, strings: Iterable[str]) -> str:
    """`text` up to (not including) the earliest stop string in it."""
    cuts = [i for i in (text.find(s) for s in strings if s) if i >= 0]
    return text[: min(cuts)] if cuts else text


class StopMatcher:
    """One sequence's stop state, fed each token with the text it added.

    `push` returns the text that is safe to show now: never any part of a stop string, nor a tail that could
    still become one. `reason` is set once the sequence has ended ("eos_token" or "stop_sequence").
    """

    def __init__(self, stops: Stops) -> None:
        self.strings = tuple(s for s in stops.strings if s)
        self.eos_ids = stops.eos_ids
        self.text = ""  # everything pushed so far
        self.sent = 0  # how much of `text` has been returned
        self.reason: str | None = None

    def push(self, token_id: int, piece: str) -> str:
        if self.reason is not None:
            return ""
        cut = self._observe(token_id, piece)
        if self.reason == "eos_token":  # the EOS token's own text is not part of the answer
            return self.flush()
        if cut is not None:
            return self._release(cut)
        if not self.strings:  # nothing to hold back or search for
            return piece
        # Keep back the longest suffix that is a prefix of a stop string.
        hold = max((k for s in self.strings for k in range(1, len(s)) if self.text.endswith(s[:k])), default=0)
        return self._release(len(self.text) - hold)

    def decide(self, token_id: int, piece: str) -> None:
        """Only whether this token ends the sequence (sets `reason`), for a caller that shows every token's text
        itself (the server streams it as TGI does): no hold-back is worked out for text nobody reads."""
        if self.reason is None:
            self._observe(token_id, piece)

    def _observe(self, token_id: int, piece: str) -> int | None:
        """Take in one token and set `reason` if it ends the sequence; where the stop string begins, if one did."""
        if token_id in self.eos_ids:
            self.reason = "eos_token"
            return None
        if not self.strings:
            return None
        start = len(self.text)
        self.text += piece
        # Only a stop string ending in the new piece can be new: search from where it could begin.
        cuts = [i for i in (self.text.find(s, max(0, start - len(s) + 1)) for s in self.strings) if i >= 0]
        if not cuts:
            return None
        self.reason = "stop_sequence"
        return min(cuts)

    def flush(self) -> str:
        """The held-back tail, once the sequence ended without a stop string (length, EOS)."""
        return "" if self.reason == "stop_sequence" else self._release(len(self.text))

    def _release(self, end: int) -> str:
        out = self.text[self.sent : end] if end > self.sent else ""
        self.sent = max(self.sent, end)
        return out
