"""The settings of one quantization run. (The checkpoint they produce is `camelid.formats.gptq`'s.)"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class QuantParams:
    bits: int = 4
    group_size: int = 128
    act_order: bool = False
    damp: float = 0.01
    sym: bool = True
    true_sequential: bool = True
    static_groups: bool = False
    mse: bool = False
    lm_head: bool = False
    method: str = "gptq"

    def as_dict(self) -> dict:
        return asdict(self)
