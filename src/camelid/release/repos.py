"""`camelid release --formats gptq,awq,gguf,fp16`: every repository of a release from one source, in one
run, with the cards written last, when it is known which repositories exist and how each variant scored.

Order: everything that can be wrong is checked first (matrix, plans, llama-cpp-python for GGUF, suite data
and attached results), then GPTQ branches, AWQ, GGUF, fp16 (each resumable, finished ones kept), then the
eval suite, then every card and manifest. OUT/.camelid/siblings.json records the non-GPTQ repositories;
the GPTQ one keeps its own release.json.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from camelid.checkpoint import resolve_model_dir, write_json
from camelid.checkpoint.output import write_manifest
from camelid.checkpoint.source import RELEASE_INDEX
from camelid.errors import CamelidError
from camelid.quant.api import source_name
from camelid.quant.settings import RunOptions
from camelid.release.build import EvalSpec, build_release, finish_release, release_data
from camelid.release.card import CardInfo
from camelid.release.matrix import Row, check_rows
from camelid.release.performance import SuiteSpec, check_suite, performance_table, run_variant
from camelid.release.plan import plan_release
from camelid.release.sibling_cards import gguf_bits, write_sibling_card
from camelid.release.siblings import STATE, ReleaseFormats, Sibling, repositories, siblings
from camelid.release.variants import (
    VariantJob,
    build_awq,
    build_fp16,
    build_gguf,
    gguf_stem,
    plan_awq,
    plan_fp16,
    plan_gguf,
)

SIBLINGS_INDEX = "siblings.json"


@dataclass(frozen=True)
class ReleaseRun:
    """How to run a release: the quantize options, the held-out measurement, the executor of GPTQ rows."""
    options: RunOptions = RunOptions()
    evaluation: EvalSpec = EvalSpec()
    executor: str = "local"
    ray_address: str | None = None


def plan_siblings(source: str | Path, out: Path, rows: list[Row], card: CardInfo, spec: ReleaseFormats,
                  options: RunOptions) -> list[dict]:
    """One entry per repository: its folder, id and planned files (`--plan`), checked as a build checks."""
    src = resolve_model_dir(source, options.revision)
    config = json.loads((src / "config.json").read_text())
    planned = []
    for sib in siblings(out, spec, card.repo_id, source_name(source)):
        entry = {"format": sib.format, "repo": sib.repo, "folder": sib.folder.name}
        if sib.format == "gptq":
            entry["branches"] = [{"branch": p.row.branch, "size_bytes": p.size_bytes, "files": p.files}
                                 for p in plan_release(config, rows, options.max_shard_size)]
        elif sib.format == "awq":
            a = plan_awq(config, spec.awq_group_size, options.max_shard_size)
            entry["branches"] = [{"branch": "main", "size_bytes": a["size_bytes"], "files": a["files"]}]
        elif sib.format == "fp16":
            f = plan_fp16(src, options.max_shard_size)
            entry["branches"] = [{"branch": "main", "size_bytes": f["size_bytes"], "files": f["files"]}]
        else:
            entry["files"] = plan_gguf(src, spec.gguf_types, gguf_stem(sib.folder.name.removesuffix("-GGUF")),
                                       card.template)
        planned.append(entry)
    return planned


def _gptq_label(branch: str) -> str:
    return f"GPTQ {branch}"


def _evaluate(sibs: dict[str, Sibling], records: dict, gptq: dict | None, src: Path, card: CardInfo,
              suite: SuiteSpec, state: Path, options: RunOptions) -> dict | None:
    entries = check_suite(suite)  # attached results first, in the order given
    if suite.data is None:
        return performance_table(entries, None, None)
    device = "cuda" if options.device == "cuda" else "cpu"
    # the source's identity without hashing its weights again: config and weight files by name and size
    key = "|".join([(src / "config.json").read_text(),
                    *(f"{p.name}:{p.stat().st_size}" for p in sorted(src.glob("*.safetensors")))])
    entries.append((f"{card.name} (source)", run_variant("source", src, key, suite, state, device, options.progress)))
    for branch, b in (gptq or {}).get("branches", {}).items():
        entries.append((_gptq_label(branch), run_variant(_gptq_label(branch), sibs["gptq"].folder / branch,
                                                         b["weights_sha256"], suite, state, device, options.progress)))
    if "awq" in records:
        entries.append(("AWQ main", run_variant("AWQ main", sibs["awq"].folder, records["awq"]["weights_sha256"],
                                                suite, state, device, options.progress)))
    skipped = [w for f, w in (("gguf", "the GGUF files (the suite runs model folders through camelid.load)"),
                              ("fp16", "the fp16 repository (the source's weights in fp16; see the source row)"))
               if f in records]
    return performance_table(entries, suite.limit, "; ".join(skipped) or None)


def build_repositories(source: str | Path, out: str | Path, rows: list[Row], card: CardInfo,
                       spec: ReleaseFormats | None = None, run: ReleaseRun = ReleaseRun(),
                       suite: SuiteSpec | None = None) -> dict:
    """Build (or resume) every repository `spec` asks for into OUT. Returns {format: record} (GPTQ: its
    release.json record), also written to OUT/.camelid/siblings.json."""
    out, options = Path(out), run.options
    spec, suite = spec or ReleaseFormats(), suite or SuiteSpec()
    check_rows(rows)
    src = resolve_model_dir(source, options.revision)
    if not spec.single and ((out / "config.json").exists() or (out / RELEASE_INDEX).exists()):
        raise CamelidError(f"{out} is a model or GPTQ release folder; a release of several formats needs its own OUT")
    planned = plan_siblings(source, out, rows, card, spec, options)  # every plan (and llama.cpp) before any work
    check_suite(suite)
    sibs = {s.format: s for s in siblings(out, spec, card.repo_id, source_name(source))}
    gguf_types = next((p["files"] for p in planned if p["format"] == "gguf"), [])
    extras = {} if spec.single else {"repositories": repositories(
        list(sibs.values()), [gguf_bits(f["type"]) for f in gguf_types], card.creator)}
    state = out / STATE
    state.mkdir(parents=True, exist_ok=True)
    index = state / SIBLINGS_INDEX
    previous = json.loads(index.read_text()).get("records", {}) if index.is_file() else {}
    records: dict[str, dict] = {}

    def save() -> None:
        write_json(index, {"format": "camelid-siblings/1", "source": source_name(source),
                           "siblings": [{"format": s.format, "folder": s.folder.name, "repo": s.repo}
                                        for s in sibs.values()],
                           "records": previous | records})

    data = release_data(src, rows, run.evaluation)
    gptq = None
    if "gptq" in sibs:
        gptq = build_release(source, sibs["gptq"].folder, rows,
                             replace(card, repo_id=sibs["gptq"].repo), options, run.evaluation, run.executor,
                             run.ray_address, data=data, finish=False)
    opts = replace(options, revision=None)
    job = VariantJob(src, data.eval_windows, data.eval_record, opts, card.template)
    if "awq" in sibs:
        first = rows[0]  # the main branch's calibration: the same windows as the GPTQ `main`
        windows = data.calibration.get(first.branch)
        if windows is None:
            from camelid.quant.calib import sample_windows

            c = first.calib
            windows = sample_windows(data.streams[(c.dataset, c.dataset_path, c.template)], c.nsamples, c.seq_len, c.seed)
        records["awq"] = build_awq(sibs["awq"], job, spec.awq_group_size, first.calib, windows, previous.get("awq"))
        save()
    if "gguf" in sibs:
        sib = sibs["gguf"]
        records["gguf"] = build_gguf(sib, job, spec.gguf_types, gguf_stem(sib.folder.name.removesuffix("-GGUF")),
                                     previous.get("gguf"),
                                     lambda folder, rec: write_sibling_card(folder, card, sib, rec, src, extras))
        save()
    if "fp16" in sibs:
        records["fp16"] = build_fp16(sibs["fp16"], job, previous.get("fp16"))
        save()
    performance = _evaluate(sibs, records, gptq, src, card, suite, state, opts) if suite.active else None
    cards = extras | ({"performance": performance} if performance else {})
    if gptq is not None:
        gptq = finish_release(sibs["gptq"].folder, gptq, src, cards)
    for fmt, record in records.items():
        write_sibling_card(sibs[fmt].folder, card, sibs[fmt], record, src, cards)
        write_manifest(sibs[fmt].folder)
    save()
    return ({"gptq": gptq} if gptq is not None else {}) | records
