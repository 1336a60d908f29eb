"""The cards of the AWQ, GGUF and fp16 repositories (`templates/card_{awq,gguf,fp16}.md.j2`), in the
structure of TheBloke's cards for those formats (huggingface.co/TheBloke/Mistral-7B-v0.1-AWQ,
huggingface.co/TheBloke/zephyr-7B-beta-GGUF): header, description, repositories, prompt template, the
provided-files table with the measured columns, usage, the Performance table, the original card.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from camelid import __version__
from camelid.release.card import (
    CARD,
    PLOT,
    CardInfo,
    evaluation_text,
    front_matter,
    hub_datasets,
    kl_text,
    original_card_text,
    prompt_info,
    repository_lines,
    size_text,
    template_env,
    write_text_atomic,
)
from camelid.release.siblings import Sibling

KIND = {"awq": "AWQ", "gguf": "GGUF", "fp16": None}
# "Use case" of each type, as on TheBloke's GGUF cards (zephyr-7B-beta-GGUF, "Provided files")
GGUF_USE_CASE = {
    "Q2_K": "smallest, significant quality loss - not recommended for most purposes",
    "Q3_K_S": "very small, high quality loss", "Q3_K_M": "very small, high quality loss",
    "Q3_K_L": "small, substantial quality loss",
    "Q4_0": "legacy; small, very high quality loss - prefer using Q3_K_M",
    "Q4_K_S": "small, greater quality loss", "Q4_K_M": "medium, balanced quality - recommended",
    "Q5_0": "legacy; medium, balanced quality - prefer using Q4_K_M",
    "Q5_K_S": "large, low quality loss - recommended", "Q5_K_M": "large, very low quality loss - recommended",
    "Q6_K": "very large, extremely low quality loss",
    "Q8_0": "very large, extremely low quality loss - not recommended",
}
# The group sizes GPTQModel's AWQ kernels accept (Transformers 5 loads AWQ through them): its refusal for
# another, with GPTQModel 7.6: "AwqTorchLinear only supports `[-1, 16, 32, 64, 128]` group_size".
GPTQMODEL_AWQ_GROUP_SIZES = (-1, 16, 32, 64, 128)
RAM_OVERHEAD = 2_500_000_000  # TheBloke's GGUF tables: Max RAM = file size + 2.50 GB on every row


def gguf_bits(type_name: str) -> int:
    """The Bits column: 4 for Q4_K_M, 8 for Q8_0, 16 for F16/BF16, 32 for F32."""
    return int(re.match(r"^[A-Z]+?(\d+)", type_name).group(1))


def _common(info: CardInfo, sib: Sibling, src: Path, tokenizer_dir: Path, extras: dict, datasets: list[str],
            description: str) -> dict:
    from camelid.tokenizer import load_tokenizer

    config = json.loads((src / "config.json").read_text())
    prompt = prompt_info(load_tokenizer(tokenizer_dir), info.template)
    if prompt and sib.format == "gguf":  # the template travels inside each file
        prompt = prompt | {"file": "`tokenizer.chat_template` in each GGUF file"}
    kind = KIND[sib.format]
    original_name = info.original_repo or Path(src).name
    return {"front_matter": front_matter(info, config, prompt, sib.format if kind else None, datasets),
            "name": info.name, "kind": kind, "creator": info.creator, "original_name": original_name,
            "original_url": f"https://huggingface.co/{info.original_repo}" if info.original_repo else None,
            "version": __version__, "description": description,
            "repositories": repository_lines(extras, info, (sib.format, sib.repo)), "prompt": prompt,
            "performance": extras.get("performance"), "original_card": original_card_text(src), "repo": sib.repo,
            "hub": sib.hub, "example_prompt": "Tell me about AI" if prompt else "Once upon a time"}


def _folder_row(sib: Sibling, record: dict) -> dict:
    m = record["measured"]
    return {"branch_link": f"[main](https://huggingface.co/{sib.repo}/tree/main)" if sib.hub else "main",
            "size": size_text(record["size_bytes"]), "kl": kl_text(m["kld_mean"]),
            "top1": f"{m['top1_agreement_pct']:.1f}", "ppl": f"{m['ppl']:.4f}"}


def _of(info: CardInfo) -> str:
    return (info.creator + "'s " if info.creator else "") + (info.original_repo or info.name)


def render_awq(info: CardInfo, sib: Sibling, record: dict, src: Path, extras: dict) -> str:
    p, c = record["params"], record["calibration"]
    row = {**_folder_row(sib, record), "bits": p["bits"], "gs": p["group_size"], "dataset": c.get("dataset_file") or c["dataset"],
           "seq_len": c["seq_len"]}
    desc = (f"This repo contains AWQ model files for {_of(info)}, quantised with camelid (AutoAWQ's scale and "
            "clip search) into AutoAWQ's GEMM layout.")
    return template_env().get_template("card_awq.md.j2").render(
        **_common(info, sib, src, sib.folder, extras, hub_datasets([c]), desc), row=row,
        evaluation=evaluation_text(record["evaluation"]), ppl_reference=f"{record['measured']['ppl_reference']:.4f}",
        transformers_group_sizes=None if p["group_size"] in GPTQMODEL_AWQ_GROUP_SIZES else ", ".join(
            map(str, GPTQMODEL_AWQ_GROUP_SIZES)))


def render_fp16(info: CardInfo, sib: Sibling, record: dict, src: Path, extras: dict) -> str:
    desc = f"This repo contains {_of(info)} in fp16 safetensors, the model the quantised repositories were made from."
    return template_env().get_template("card_fp16.md.j2").render(
        **_common(info, sib, src, sib.folder, extras, [], desc), row=_folder_row(sib, record),
        evaluation=evaluation_text(record["evaluation"]))


def gguf_rows(sib: Sibling, record: dict) -> list[dict]:
    rows = []
    for f in record["files"]:
        link = f"[{f['file']}](https://huggingface.co/{sib.repo}/blob/main/{f['file']})" if sib.hub else f["file"]
        m = f["measured"]
        rows.append({"name": link, "method": f["type"], "bits": gguf_bits(f["type"]), "size": size_text(f["size_bytes"]),
                     "ram": size_text(f["size_bytes"] + RAM_OVERHEAD),
                     "use_case": GGUF_USE_CASE.get(f["type"], "unquantised; the reference for the others"),
                     "kl": kl_text(m["kld_mean"]), "top1": f"{m['top1_agreement_pct']:.1f}"})
    return rows


def render_gguf(info: CardInfo, sib: Sibling, record: dict, src: Path, extras: dict) -> str:
    desc = (f"This repo contains GGUF format model files for {_of(info)}, written by camelid (K-quant mixes by "
            "llama.cpp's own quantizer).")
    example = next((f["file"] for f in record["files"] if f["type"] == "Q4_K_M"), record["files"][0]["file"])
    return template_env().get_template("card_gguf.md.j2").render(
        **_common(info, sib, src, src, extras, [], desc), rows=gguf_rows(sib, record),
        evaluation=evaluation_text(record["evaluation"]), plot=PLOT, example_file=example)


def write_sibling_card(folder: Path, info: CardInfo, sib: Sibling, record: dict, src: Path, extras: dict) -> None:
    """README.md of an AWQ, GGUF or fp16 repository in `folder` (the GGUF one with its size/KL plot)."""
    if sib.format == "gguf":
        from camelid.release.plot import size_vs_kl

        size_vs_kl([{"label": f["type"], **f} for f in record["files"]], folder / PLOT,
                   f"{info.name} GGUF: size vs KL divergence, per file")
        text = render_gguf(info, sib, record, src, extras)
    else:
        text = (render_awq if sib.format == "awq" else render_fp16)(info, sib, record, src, extras)
    write_text_atomic(folder / CARD, text)
