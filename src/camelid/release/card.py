"""The model card (README.md, the same in every branch) rendered from `templates/card.md.j2`.

Its structure follows TheBloke's GPTQ cards (e.g. huggingface.co/TheBloke/tulu-7B-GPTQ): front matter,
provenance, repositories, prompt template, clients, the provided-files table (here with measured KL,
top-1 agreement and perplexity), download and usage, compatibility, then the original card.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from camelid import __version__

CARD = "README.md"
PLOT = "size_vs_kl.png"
CARD_FILES = (CARD, PLOT)  # rewritten at the end of every build; not part of a branch's identity
# Hub ids of the named calibration sets (camelid.quant.calib.NAMED_SETS), for the card's `datasets`
HUB_DATASETS = {"wikitext2": "Salesforce/wikitext", "code": "sahil280114/codealpaca"}
MARLIN_GROUPS = (-1, 32, 64, 128)  # vLLM marlin_utils.MARLIN_SUPPORTED_GROUP_SIZES


@dataclass(frozen=True)
class CardInfo:
    name: str
    creator: str | None = None
    original_repo: str | None = None
    license: str | None = None
    template: str | None = None  # a camelid.chat template name; None: the model's own, if any
    repo_id: str | None = None  # where the card's examples point; default: OUT's folder name
    quantized_by: str = "camelid"
    description: str | None = None


def size_text(n: int) -> str:
    """GB with two decimals as the published tables; MB for the small models that would all read 0.00 GB."""
    return f"{n / 1e9:.2f} GB" if n >= 10**8 else f"{n / 1e6:.2f} MB"


def kl_text(kl: float) -> str:
    """Four decimals, or two significant digits where those would all be zero (8-bit branches)."""
    return f"{kl:.4f}" if kl >= 1e-3 or kl == 0 else f"{kl:.1e}"


def tgi_limits(context: int) -> dict:
    """TGI launcher limits for a context length, as TheBloke's cards set them (4096 -> 3696 input)."""
    return {"context": context, "max_total": context, "max_prefill": context,
            "max_input": context - min(400, context // 4)}


def marlin_shapes(config: dict, unquantized: list[str]) -> bool:
    """vLLM gptq_marlin's shape rule for every quantized Linear (one GPU): out % 64 == 0, in % 128 == 0
    (GPTQ_MARLIN_MIN_THREAD_N / _K in vllm marlin_utils.py)."""
    from camelid.release.plan import linear_dims

    skipped = {re.sub(r"^model\.layers\.\d+\.", "", n) for n in unquantized}
    return all(i % 128 == 0 and o % 64 == 0 for name, (i, o) in linear_dims(config).items() if name not in skipped)


def compatibility(branch: dict, kernels: dict, config: dict) -> dict:
    p = branch["params"]
    marlin = (p["sym"] and p["bits"] in (4, 8) and p["group_size"] in MARLIN_GROUPS
              and marlin_shapes(config, branch["unquantized_linears"]))
    if marlin:
        tgi = "Yes (Marlin, sm80+)"
    elif p["bits"] == 4 and not p["act_order"]:
        tgi = "Yes (ExLlama)"
    else:
        tgi = "other GPTQ kernels (not verified)"
    return {"branch": branch["branch"], "exllama": "Yes" if p["bits"] == 4 else "No",
            "marlin": "Yes" if marlin else "No (vLLM `gptq`)", "tgi": tgi,
            "transformers": "Yes" if p["bits"] in (2, 3, 4, 8) else "No",
            "camelid": ", ".join(f"{n} × {k}" for k, n in kernels.items()) or "dense"}


def template_env():
    import jinja2

    return jinja2.Environment(loader=jinja2.PackageLoader("camelid.release", "templates"), trim_blocks=True,
                              lstrip_blocks=True, keep_trailing_newline=True, undefined=jinja2.StrictUndefined)


def repository_lines(extras: dict, info: CardInfo, alone: tuple[str, str]) -> list[tuple[str, str]]:
    """(label, link) of "Repositories available": the release's siblings when it has several
    (`siblings.repositories`), else `alone`; then the original model, when named."""
    lines = [(r["label"], r["link"]) for r in extras.get("repositories", [])] or [alone]
    if info.original_repo:
        lines.append(("Original unquantised model", f"[{info.original_repo}](https://huggingface.co/{info.original_repo})"))
    return lines


def prompt_info(tokenizer, template: str | None) -> dict | None:
    from camelid.chat import render_template
    from camelid.errors import CamelidError

    try:
        text = render_template(tokenizer, [{"role": "user", "content": "{prompt}"}], template)
    except CamelidError:
        return None  # no template given and the model has none
    return {"name": template or "the model's own chat_template", "text": text, "literal": repr(text),
            "ends_with_newline": text.endswith("\n"),
            "file": "`tokenizer_config.json`" if template is None else "`chat_template.jinja`"}


def original_card_text(src: Path) -> str | None:
    path = src / CARD
    if not path.is_file():
        return None
    text = path.read_text()
    m = re.match(r"^---\n.*?\n---\n", text, flags=re.S)  # its own front matter would end ours
    return (text[m.end():] if m else text).strip() or None


def front_matter(info: CardInfo, config: dict, prompt: dict | None, fmt: str | None,
                 datasets: list[str]) -> str:
    """The YAML block; `fmt` (gptq, awq, gguf) tags a quantized repository, None the fp16 one."""
    from huggingface_hub import ModelCardData

    extra = {"base_model_relation": "quantized"} if info.original_repo and fmt else {}
    tags = ([fmt, "quantized"] if fmt else []) + ["camelid", config.get("model_type", "llama")]
    data = ModelCardData(
        base_model=info.original_repo, model_name=info.name, license=info.license, datasets=datasets or None,
        tags=tags, pipeline_tag="text-generation",
        inference=False, model_creator=info.creator, model_type=config.get("model_type"),
        prompt_template=prompt["text"] if prompt else "{prompt}\n", quantized_by=info.quantized_by, **extra)
    return data.to_yaml() + "\n"


def hub_datasets(calibrations: list[dict]) -> list[str]:
    return sorted({HUB_DATASETS[c["dataset"]] for c in calibrations if c["dataset"] in HUB_DATASETS})


def evaluation_text(ev: dict) -> str:
    """Which windows every measured column comes from."""
    return (f"{ev['windows']} windows of {ev['seq_len']} tokens of "
            + (f"`{ev['file']}` (sha256 {ev['sha256'][:12]})" if ev["source"] == "file" else
               f"{ev['dataset']} that no calibration window used")
            + f", both models in {ev['dtype']}.")


def _rows(record: dict, repo: str, hub: bool) -> tuple[list[dict], list[str]]:
    rows, notes = [], []
    for b in record["branches"].values():
        p, c, m = b["params"], b["calibration"], b["measured"]
        seq = str(c["seq_len"])
        if c.get("seq_len_requested"):
            seq += "*"
            note = (f"\\* Seq Len: the matrix asked for {c['seq_len_requested']}; capped to the model's "
                    f"context of {c['seq_len']} tokens.")
            if note not in notes:
                notes.append(note)
        link = f"[{b['branch']}](https://huggingface.co/{repo}/tree/{b['branch']})" if hub else b["branch"]
        desc = b["description"]
        if b["unquantized_linears"]:
            n = len(b["unquantized_linears"])
            desc += f" {n} Linear(s) whose shapes this group size cannot pack stay fp16."
        rows.append({"branch_link": link, "bits": p["bits"], "gs": "None" if p["group_size"] == -1 else p["group_size"],
                     "act": "Yes" if p["act_order"] else "No", "damp": p["damp"],
                     "dataset": c.get("dataset_file") or c["dataset"], "seq_len": seq, "size": size_text(b["size_bytes"]),
                     "exllama": "Yes" if p["bits"] == 4 else "No", "kl": kl_text(m["kld_mean"]),
                     "top1": f"{m['top1_agreement_pct']:.1f}", "ppl": f"{m['ppl']:.4f}", "desc": desc})
    return rows, notes


def render_card(record: dict, src: Path, out: Path) -> str:
    from camelid.runtime.gptq_load import plan_kernels
    from camelid.tokenizer import load_tokenizer

    info = CardInfo(**record["card"])
    config = json.loads((src / "config.json").read_text())
    branches = list(record["branches"])
    repo = info.repo_id or out.name
    hub = repo.count("/") == 1
    tok = load_tokenizer(out / branches[0])
    prompt = prompt_info(tok, info.template)
    rows, notes = _rows(record, repo, hub)
    evaluation = evaluation_text(record["evaluation"])
    first = next(iter(record["branches"].values()))
    extras = record.get("extras") or {}
    repositories = repository_lines(extras, info, ("GPTQ models for GPU and CPU inference, with multiple "
                                                   "quantisation parameter options",
                                                   f"[{repo}](https://huggingface.co/{repo})" if hub
                                                   else f"`{repo}` (this release)"))
    clients = ["[camelid](https://github.com/camelid) (`camelid.load`, `camelid generate/chat/serve`): every branch, CPU or GPU",
               "[Transformers](https://github.com/huggingface/transformers) with [GPTQModel](https://github.com/ModelCloud/GPTQModel)",
               "[text-generation-inference](https://github.com/huggingface/text-generation-inference)",
               "[vLLM](https://github.com/vllm-project/vllm)"]
    if any(b["params"]["bits"] == 4 for b in record["branches"].values()):
        clients.append("[ExLlama](https://github.com/turboderp/exllama) / ExLlamaV2 (4-bit branches)")
    compat = [compatibility(b, plan_kernels(out / b["branch"], device="cpu")["kernels"], config)
              for b in record["branches"].values()]
    original_name = info.original_repo or record["source"]["name"]
    return template_env().get_template("card.md.j2").render(performance=extras.get("performance"),
        front_matter=front_matter(info, config, prompt, "gptq", hub_datasets(
            [b["calibration"] for b in record["branches"].values()])), name=info.name, creator=info.creator,
        creator_url=None, original_name=original_name,
        original_url=f"https://huggingface.co/{info.original_repo}" if info.original_repo else None,
        version=__version__,
        description=info.description or (f"This repo contains GPTQ model files for {info.creator + chr(39) + 's ' if info.creator else ''}"
                                          f"{original_name}, quantised with camelid."),
        repositories=repositories, prompt=prompt, clients=clients, rows=rows, table_notes=notes,
        ppl_reference=first["measured"]["ppl_reference"], evaluation=evaluation, plot=PLOT, repo=repo,
        example_branch=next((b for b in branches if b != "main"), branches[0]), hub=hub,
        local_dir=repo.split("/")[-1], example_prompt="Tell me about AI" if prompt else "Once upon a time",
        template_flag=f"--template {info.template} " if info.template else "",
        tgi=tgi_limits(int(config.get("max_position_embeddings", 2048))), compat=compat,
        original_card=original_card_text(src))


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def write_card(out: Path, record: dict, src: Path, after: Callable[[Path], object] | None = None) -> None:
    """README.md and the size/KL plot, the same in every branch of the release; `after(folder)` runs
    once a branch has both (its manifest, so a kill leaves at most one branch's card unhashed)."""
    from camelid.release.plot import size_vs_kl

    branches = list(record["branches"].values())
    first = out / branches[0]["branch"]
    size_vs_kl([{"label": b["branch"], **b} for b in branches], first / PLOT,
               f"{record['card']['name']}: size vs KL divergence, per branch")
    text = render_card(record, src, out)
    for b in branches:
        folder = out / b["branch"]
        write_text_atomic(folder / CARD, text)
        if folder != first:
            (folder / PLOT).write_bytes((first / PLOT).read_bytes())
        if after is not None:
            after(folder)
