"""The one rule for text camelid reads (data files, prompts on the command line, chat's stdin): UTF-8,
strictly. Invalid bytes are an error naming the source and the byte, never replaced silently (a binary
file scored as text gives a meaningless perplexity) and never a UnicodeDecodeError traceback.
"""

from __future__ import annotations

from pathlib import Path

from camelid.errors import CamelidError


def decode_utf8(data: bytes, source: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CamelidError(f"{source} is not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start})") from None


def read_text_file(path: str | Path, what: str = "text file") -> str:
    path = Path(path)
    if not path.is_file():
        raise CamelidError(f"{what} not found: {path}")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CamelidError(f"cannot read {what} {path}: {e.strerror}") from None
    return decode_utf8(data, f"{what} {path}")


def check_utf8_arg(text: str, source: str) -> str:
    """A command-line string: Python decodes argv with surrogateescape, so invalid bytes arrive as lone
    surrogates; those are refused here."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raw = text.encode("utf-8", "surrogateescape")
        decode_utf8(raw, source)  # raises, naming the byte
    return text
