"""Linears a quantized checkpoint leaves unquantized, named the short way every format declares them.

GPTQModel's `dynamic` rules (`formats.gptq.layout.dynamic_excludes`) and AutoAWQ's
`modules_to_not_convert` (`formats.awq.not_converted`) both name a Linear skipped in every decoder
layer once, by its name inside the layer, and any other skipped module by its full name.
"""

from __future__ import annotations

import re

LAYER = re.compile(r"^model\.layers\.\d+\.(.+)$")  # a decoder layer's module; group 1: its name inside the layer


def by_layer_suffix(skipped: list[str], layers: int) -> list[tuple[str, bool]]:
    """`skipped` as (name, is_suffix): modules outside the decoder layers by full name first, then, per
    name inside a layer in first-seen order, that name once (is_suffix) when it is skipped in all
    `layers` layers, else each full name."""
    outside: list[tuple[str, bool]] = []
    by_suffix: dict[str, list[str]] = {}
    for name in skipped:
        m = LAYER.match(name)
        if m:
            by_suffix.setdefault(m.group(1), []).append(name)
        else:
            outside.append((name, False))
    inside = [entry for suffix, members in by_suffix.items()
              for entry in ([(suffix, True)] if len(members) == layers else [(n, False) for n in members])]
    return outside + inside
