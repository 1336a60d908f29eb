"""Build a release: one complete, loadable folder per matrix row in OUT, measured, with the same card.

Layout of OUT (what `camelid.load(OUT, revision=BRANCH)` resolves): `release.json` (the index: rows,
planned and written sizes, measurements) and one folder per branch. Calibration text is tokenized once
per corpus and every row draws its windows from that stream. Resumable at two levels: a branch whose
`SHA256SUMS.json` verifies and whose measurement is recorded is skipped; an interrupted one continues
through quantize's own resume (its `BRANCH.partial/`).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from camelid.checkpoint import resolve_model_dir, write_json
from camelid.checkpoint.output import MANIFEST, sha256_file, verify_manifest, write_manifest
from camelid.checkpoint.source import RELEASE_INDEX
from camelid.errors import CamelidError, CheckpointError
from camelid.quant.api import dataset_record, quantize, source_name
from camelid.quant.calib import calibration_tokens, sample_windows, window_starts
from camelid.quant.settings import RunOptions
from camelid.release import executor
from camelid.release.card import CARD_FILES, CardInfo, write_card
from camelid.release.matrix import Row, check_rows
from camelid.release.measure import file_windows, heldout_windows, measure_branch
from camelid.release.plan import BranchPlan, plan_release


@dataclass(frozen=True)
class EvalSpec:
    data: str | None = None  # a text file; None: the held-out part of the calibration corpus
    seq_len: int | None = None  # None: the shortest calibration seq len of the rows
    windows: int = 16


@dataclass(frozen=True)
class BranchJob:
    source: str
    out: str
    plan: BranchPlan
    calibration: torch.Tensor
    eval_windows: torch.Tensor
    options: RunOptions
    chat_template: str | None


def weights_digest(folder: Path) -> str:
    """One hash of the branch's files other than the card (which is rewritten at the end of each build)."""
    sums = json.loads((folder / MANIFEST).read_text())
    return hashlib.sha256(json.dumps({k: v for k, v in sorted(sums.items()) if k not in CARD_FILES})
                          .encode()).hexdigest()


def manifest_verifies(folder: Path) -> bool:
    """Every file the manifest lists is present with its SHA-256 (`checkpoint.output.verify_manifest`)."""
    try:
        verify_manifest(folder)
    except (CheckpointError, OSError, ValueError):
        return False
    return True


def _check_settings(folder: Path, row: Row) -> None:
    """The folder really holds this row's variant (not one left from a matrix that has changed)."""
    q = json.loads((folder / "quantize_config.json").read_text())
    p, c = row.params, row.calib
    want = {"bits": p.bits, "group_size": p.group_size, "desc_act": p.act_order, "sym": p.sym,
            "damp_percent": p.damp, "nsamples": c.nsamples, "seq_len": c.seq_len, "seed": c.seed}
    have = {**{k: q.get(k) for k in ("bits", "group_size", "desc_act", "sym", "damp_percent")},
            **{k: q.get("meta", {}).get(k) for k in ("nsamples", "seq_len", "seed")}}
    if p.method == "rtn":
        want = {k: v for k, v in want.items() if k not in ("nsamples", "seq_len", "seed")}
        have = {k: have[k] for k in want}
    if want != have:
        diff = ", ".join(f"{k} {have[k]} (row: {want[k]})" for k in want if want[k] != have[k])
        raise CamelidError(f"{folder} holds another variant ({diff}); delete it or rename the matrix row")


def finish_folder(folder: Path, chat_template: str | None) -> bool:
    """What a branch needs beyond quantize's output: the prompt template and a generation config.
    Idempotent; returns whether it wrote anything."""
    from camelid.chat import TEMPLATES

    wrote = False
    if chat_template is not None and not any((folder / n).exists() for n in ("chat_template.jinja",
                                                                            "chat_template.json")):
        tok_cfg = folder / "tokenizer_config.json"
        if not (tok_cfg.is_file() and "chat_template" in json.loads(tok_cfg.read_text())):
            (folder / "chat_template.jinja").write_text(TEMPLATES[chat_template].source)
            wrote = True
    if not (folder / "generation_config.json").exists():
        cfg = json.loads((folder / "config.json").read_text())
        write_json(folder / "generation_config.json", {k: cfg[k] for k in ("bos_token_id", "eos_token_id",
                                                                          "pad_token_id") if k in cfg})
        wrote = True
    return wrote


def build_branch(job: BranchJob) -> dict:
    """Quantize (or resume, or skip) one branch and measure it. Returns its record for release.json."""
    row, folder = job.plan.row, Path(job.out) / job.plan.row.branch
    t0, c0 = time.perf_counter(), time.process_time()
    built = False
    if folder.exists() and (folder / MANIFEST).exists() and not manifest_verifies(folder):
        shutil.rmtree(folder)  # damaged since it was built: rebuild it
    if not folder.exists():
        # an interrupted call resumes from its last finished layer when made again with the same arguments
        quantize(job.source, folder, row.params, row.calib, job.options, job.calibration)
        built = True
    _check_settings(folder, row)
    # quantize wrote the manifest of what it built: hash again only when the card files changed
    if finish_folder(folder, job.chat_template) or not (folder / MANIFEST).exists():
        write_manifest(folder)
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    t1 = time.perf_counter()
    measured = measure_branch(folder, Path(job.source), job.eval_windows,
                              "cuda" if job.options.device == "cuda" else "cpu")
    files = {p.name: p.stat().st_size for p in sorted(folder.glob("*.safetensors"))}
    return {"branch": row.branch, "params": asdict(row.params), "calibration": _calib_record(row),
            "description": row.description, "planned_size_bytes": job.plan.size_bytes,
            "size_bytes": sum(files.values()), "files": files, "unquantized_linears": list(job.plan.unquantized),
            "measured": measured, "weights_sha256": weights_digest(folder), "built": built,
            "quantize_seconds": round(seconds, 2), "quantize_cpu_seconds": round(cpu_seconds, 2),
            "measure_seconds": round(time.perf_counter() - t1, 2)}


def _calib_record(row: Row) -> dict:
    c = row.calib
    return {**dataset_record(c.dataset, c.dataset_path), "nsamples": c.nsamples, "seq_len": c.seq_len,
            "seq_len_requested": row.seq_len_requested, "seed": c.seed, "template": c.template}


def _calibration(tokenizer, rows: list[Row]) -> tuple[dict[str, torch.Tensor], dict[tuple, torch.Tensor]]:
    """Each row's windows, each corpus tokenized once: {branch: [n, seq_len] ids}, {corpus: stream}."""
    streams: dict[tuple, torch.Tensor] = {}
    windows = {}
    for row in rows:
        c = row.calib
        key = (c.dataset, c.dataset_path, c.template)
        if key not in streams:
            streams[key] = calibration_tokens(tokenizer, c.dataset, c.dataset_path, c.template)
        if row.params.method == "gptq":
            windows[row.branch] = sample_windows(streams[key], c.nsamples, c.seq_len, c.seed)
    return windows, streams


def _eval_windows(tokenizer, rows: list[Row], streams: dict, spec: EvalSpec) -> tuple[torch.Tensor, dict]:
    seq_len = spec.seq_len or min(r.calib.seq_len for r in rows)
    if spec.data is not None:
        w = file_windows(tokenizer, spec.data, seq_len, spec.windows)
        return w, {"source": "file", "file": Path(spec.data).name, "sha256": sha256_file(Path(spec.data))}
    c = rows[0].calib
    key = (c.dataset, c.dataset_path, c.template)
    stream = streams[key]
    used = [(s, s + r.calib.seq_len) for r in rows if (r.calib.dataset, r.calib.dataset_path, r.calib.template) == key
            for s in window_starts(stream.numel(), r.calib.nsamples, r.calib.seq_len, r.calib.seed)]
    return heldout_windows(stream, used, seq_len, spec.windows), {
        "source": "held-out calibration text (spans no calibration window used)",
        **dataset_record(c.dataset, c.dataset_path)}


@dataclass(frozen=True)
class ReleaseData:
    """What every variant of a release shares: each GPTQ row's calibration windows (each corpus tokenized
    once), the held-out measurement windows and where they came from."""
    calibration: dict[str, torch.Tensor]
    streams: dict[tuple, torch.Tensor]
    eval_windows: torch.Tensor
    eval_record: dict


def release_data(src: Path, rows: list[Row], evaluation: EvalSpec) -> ReleaseData:
    from camelid.tokenizer import load_tokenizer

    tok = load_tokenizer(src)
    calibration, streams = _calibration(tok, rows)
    eval_windows, eval_record = _eval_windows(tok, rows, streams, evaluation)
    return ReleaseData(calibration, streams, eval_windows,
                       {**eval_record, "windows": int(eval_windows.shape[0]), "seq_len": int(eval_windows.shape[1]),
                        "dtype": "float32"})


def read_release(out: str | Path) -> dict:
    path = Path(out) / RELEASE_INDEX
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CamelidError(f"{out} is not a camelid release (no {RELEASE_INDEX})") from None


def build_release(source: str | Path, out: str | Path, rows: list[Row], card: CardInfo,
                  options: RunOptions | None = None, evaluation: EvalSpec | None = None,
                  executor_name: str = "local", ray_address: str | None = None,
                  data: ReleaseData | None = None, extras: dict | None = None, finish: bool = True) -> dict:
    """Quantize, measure and card every row into OUT (resuming what a previous run finished).
    Returns the release record (also written to OUT/release.json). `data`: shared windows computed by the
    caller (`release_data`); `extras`: what the card shows beyond the branches (`card.render_card`);
    `finish=False` leaves the cards to a later `finish_release` (a multi-format release writes them last)."""
    from camelid.chat import TEMPLATES

    options, evaluation = options or RunOptions(), evaluation or EvalSpec()
    if card.template is not None and card.template not in TEMPLATES:
        raise CamelidError(f"--template {card.template!r}: not a camelid template ({', '.join(TEMPLATES)})")
    check_rows(rows)  # before any work: a bad matrix loses nothing
    src = resolve_model_dir(source, options.revision)
    config = json.loads((src / "config.json").read_text())
    plans = plan_release(config, rows, options.max_shard_size)
    out = Path(out)
    if (out / "config.json").exists():
        raise CamelidError(f"{out} is a model folder, not a release folder; pick another OUT")
    out.mkdir(parents=True, exist_ok=True)
    data = data or release_data(src, rows, evaluation)
    previous = read_release(out)["branches"] if (out / RELEASE_INDEX).exists() else {}
    record = {"format": "camelid-release/1", "card": asdict(card),
              "source": {"name": source_name(source), "config_sha256": sha256_file(src / "config.json")},
              "evaluation": data.eval_record, "branches": {}}
    write_json(out / RELEASE_INDEX, record | {"branches": previous})
    jobs, done = [], {}
    for plan in plans:
        b = plan.row.branch
        folder = out / b
        prev = previous.get(b)
        if (prev is not None and folder.is_dir() and manifest_verifies(folder)
                and prev.get("weights_sha256") == weights_digest(folder)
                and prev.get("evaluation") == record["evaluation"]):
            _check_settings(folder, plan.row)
            done[b] = prev | {"built": False}
            continue
        opts = options if options.revision is None else replace(options, revision=None)
        jobs.append(BranchJob(str(src), str(out), plan, data.calibration.get(b), data.eval_windows, opts,
                              card.template))
    gpus = 1 if options.device == "cuda" else 0
    for result in executor.run(build_branch, jobs, executor_name, ray_address, gpus):
        done[result["branch"]] = result | {"evaluation": record["evaluation"]}
        write_json(out / RELEASE_INDEX, record | {"branches": previous | done})
    # branches built by earlier runs (e.g. with other --only) stay in the release and its card
    kept = {b: v for b, v in previous.items() if b not in done and (out / b / MANIFEST).is_file()}
    record["branches"] = {p.row.branch: done[p.row.branch] for p in plans} | kept
    write_json(out / RELEASE_INDEX, record)
    return finish_release(out, record, src, extras) if finish else record


def finish_release(out: Path, record: dict, src: Path, extras: dict | None = None) -> dict:
    """The card in every branch, each branch's manifest right after its card, and release.json."""
    record = record | {"extras": extras or {}}
    write_card(out, record, src, after=write_manifest)
    write_json(out / RELEASE_INDEX, record)
    return record
