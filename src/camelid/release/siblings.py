"""The repositories of one release, as the cards list them: `<Name>-GPTQ` (the branch matrix),
`<Name>-AWQ` (main only: 4-bit, 128g GEMM), `<Name>-GGUF` (one file per llama.cpp type) and `<Name>`
(the unquantised fp16 model). TheBloke's cards name and describe them so (e.g.
huggingface.co/TheBloke/zephyr-7B-beta-GGUF, "Repositories available").

A release of the GPTQ format alone keeps the layout it always had: OUT is the GPTQ repository. With
other formats OUT holds one folder per repository, named as on the Hub.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from camelid.errors import CamelidError

FORMATS = ("gptq", "awq", "gguf", "fp16")
SUFFIX = {"gptq": "-GPTQ", "awq": "-AWQ", "gguf": "-GGUF", "fp16": ""}
STATE = ".camelid"  # OUT/.camelid: records of the non-GPTQ siblings and of the eval suite runs
DEFAULT_GGUF_TYPES = ("q4_k_m", "q8_0")


@dataclass(frozen=True)
class ReleaseFormats:
    formats: tuple[str, ...] = ("gptq",)
    gguf_types: tuple[str, ...] = DEFAULT_GGUF_TYPES  # camelid.export.GGUF_TYPES keys
    awq_group_size: int = 128  # TheBloke's AWQ cards: "I currently release 128g GEMM models only"

    def __post_init__(self) -> None:
        formats = tuple(dict.fromkeys(f.strip().lower() for f in self.formats if f.strip()))
        unknown = [f for f in formats if f not in FORMATS]
        if not formats or unknown:
            raise CamelidError(f"--formats: {', '.join(unknown) or 'none given'}; choose from {', '.join(FORMATS)}")
        object.__setattr__(self, "formats", tuple(f for f in FORMATS if f in formats))  # the cards' order
        if "gguf" in self.formats and not self.gguf_types:
            raise CamelidError("--gguf-types: give at least one type (e.g. q4_k_m,q8_0)")

    @property
    def single(self) -> bool:
        """GPTQ alone: OUT is the GPTQ repository itself (the layout of releases before other formats)."""
        return self.formats == ("gptq",)


@dataclass(frozen=True)
class Sibling:
    format: str
    folder: Path  # where it is written
    repo: str  # Hub id (owner/name) or, for a local release, the folder's name

    @property
    def hub(self) -> bool:
        return self.repo.count("/") == 1


def release_base(repo_id: str | None, fallback: str) -> tuple[str | None, str]:
    """(owner, base name) of the release: `owner/Name-GPTQ`, `owner/Name-AWQ` ... share `owner/Name`."""
    name = repo_id or fallback
    owner, _, base = name.rpartition("/") if "/" in name else (None, "", name)
    base = re.sub(r"-(GPTQ|AWQ|GGUF)$", "", base, flags=re.I)
    return owner or None, base


def siblings(out: Path, spec: ReleaseFormats, repo_id: str | None, fallback: str) -> list[Sibling]:
    """Each repository's folder and id, in the cards' order."""
    if spec.single:
        return [Sibling("gptq", out, repo_id or out.name)]
    owner, base = release_base(repo_id, fallback)
    out_sibs = []
    for f in spec.formats:
        name = base + SUFFIX[f]
        out_sibs.append(Sibling(f, out / name, f"{owner}/{name}" if owner else name))
    return out_sibs


def _bits_text(bits: list[int]) -> str:
    bits = sorted(set(bits))
    return ", ".join(map(str, bits[:-1])) + (" and " if len(bits) > 1 else "") + str(bits[-1])


def repositories(sibs: list[Sibling], gguf_bits: list[int], creator: str | None) -> list[dict]:
    """The "Repositories available" entries: exactly the siblings this release has."""
    labels = {
        "awq": "AWQ model(s) for GPU inference",
        "gptq": "GPTQ models for GPU inference, with multiple quantisation parameter options",
        "gguf": f"{_bits_text(gguf_bits or [4])}-bit GGUF models for CPU+GPU inference",
        "fp16": (f"{creator + chr(39) + 's ' if creator else ''}original unquantised fp16 model in safetensors "
                 "format, for GPU inference and for further conversions"),
    }
    return [{"format": s.format, "label": labels[s.format], "repo": s.repo,
             "link": f"[{s.repo}](https://huggingface.co/{s.repo})" if s.hub else f"`{s.repo}`"} for s in sibs]
