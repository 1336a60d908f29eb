"""argparse `type=` checks: every command-line number is checked by type and range before any work, so a
bad value is argparse's one-line usage error (exit 2) naming the option, never a traceback mid-run."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

from camelid.errors import CamelidError


def _number(text: str, kind: type) -> int | float:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not {'an integer' if kind is int else 'a number'}: {text!r}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def int_at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = _number(text, int)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    parse.__name__ = f"integer >= {low}"  # argparse names the type in "invalid <name> value" messages
    return parse


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)


def port(text: str) -> int:
    value = _number(text, int)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a TCP port, 1-65535, got {value}")
    return value


def group_size(text: str) -> int:
    value = _number(text, int)
    if value != -1 and value < 1:
        raise argparse.ArgumentTypeError(f"must be positive, or -1 for one group per row, got {value}")
    return value


def float_in(low: float, high: float, low_open: bool = False, high_open: bool = False) -> Callable[[str], float]:
    """A finite float in [low, high] (ends open as asked); NaN fails every comparison and is refused."""

    def parse(text: str) -> float:
        value = _number(text, float)
        above = value > low if low_open else value >= low
        below = value < high if high_open else value <= high
        if not (above and below):
            interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
            raise argparse.ArgumentTypeError(f"must be in {interval}, got {text}")
        return value

    parse.__name__ = "number"
    return parse


finite_float = float_in(-math.inf, math.inf, True, True)


def size(text: str) -> str:
    """A shard size such as 5GB, 500MB or a byte count (checked here, used as written)."""
    from camelid.checkpoint import parse_size

    try:
        parse_size(text)
    except CamelidError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def utf8(text: str) -> str:
    from camelid.textio import check_utf8_arg

    try:
        return check_utf8_arg(text, "the argument")
    except CamelidError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
