"""Run one task setting against a backend: load the items, skip those already recorded, score the rest in
chunks (each chunk appended to records.jsonl as it finishes, so a killed run loses at most one chunk),
then summarise and write results.json."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from camelid.chat import resolve_template
from camelid.checkpoint.jsonio import write_json
from camelid.checkpoint.output import sha256_file
from camelid.errors import CamelidError
from camelid.eval.prompting import is_chat, task_template
from camelid.eval.records import PROTOCOL_VERSION, RecordStore
from camelid.eval.settings import EvalSettings
from camelid.eval.tasks import task_module


def _chunks(items: list[dict], size: int):
    """Consecutive items of one group (an MMLU subject shares its prompt prefix), at most `size` each."""
    chunk: list[dict] = []
    for it in items:
        if chunk and (len(chunk) >= size or it["group"] != chunk[-1]["group"]):
            yield chunk
            chunk = []
        chunk.append(it)
    if chunk:
        yield chunk


def run_eval(backend, data_dir: str | Path, settings: EvalSettings, out: str | Path | None = None,
             progress: bool = True) -> dict:
    """Evaluate one setting; returns the results dict (also written to OUT/{setting}/results.json)."""
    from tqdm import tqdm

    task = task_module(settings.task)
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise CamelidError(f"eval data folder not found: {data_dir}")
    template = task_template(settings, getattr(task, "DEFAULT_TEMPLATE", "tulu"))
    if is_chat(template):  # an unknown name or broken Jinja fails before any data is read (camelid.chat's rule)
        resolve_template(backend.tokenizer, template)
    items, files = task.load_items(data_dir, settings, backend.tokenizer, getattr(backend, "context_limit", None))
    name = task.setting(settings)
    hashes = {str(f): sha256_file(f) for f in files}
    run_info = {"protocol": PROTOCOL_VERSION, "setting": name, "template": template, "settings": settings.as_dict(),
                "data_files": hashes, **{k: v for k, v in backend.describe().items() if k != "device"}}
    store = RecordStore(Path(out) / name, run_info) if out is not None else None
    done = store.done if store else {}
    todo = [it for it in items if it["id"] not in done]
    records = dict(done)
    start = time.perf_counter()
    bar = tqdm(total=len(items), initial=len(items) - len(todo), desc=name, unit="ex", disable=not progress,
               file=sys.stderr, dynamic_ncols=True)
    for chunk in _chunks(todo, settings.batch_size):
        recs = task.score(backend, chunk, settings)
        if store:
            store.append(recs)
        records.update((r["id"], r) for r in recs)
        bar.update(len(chunk))
    bar.close()
    ordered = [records[it["id"]] for it in items]
    results = {**run_info, "metrics": task.summarize(ordered, settings), "examples": len(items),
               "resumed": len(items) - len(todo), "seconds": round(time.perf_counter() - start, 3)}
    if store:
        write_json(store.dir / "results.json", results)
    return results
