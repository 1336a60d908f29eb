"""The Python API of the benchmarks:

    from camelid.eval import EvalSettings, evaluate, open_backend
    backend = open_backend("path/to/model")                       # or endpoint="http://host:3000"
    result = evaluate(backend, EvalSettings("mmlu", shots=5), "data/mmlu", out="runs/")
"""

from __future__ import annotations

from pathlib import Path

from camelid.eval.backends import LocalBackend, RemoteBackend
from camelid.eval.runner import run_eval
from camelid.eval.settings import EvalSettings
from camelid.eval.suite import run_suite

__all__ = ["EvalSettings", "LocalBackend", "RemoteBackend", "evaluate", "open_backend", "run_suite"]


def open_backend(model: str, endpoint: str | None = None, api: str | None = None, api_key: str | None = None,
                 endpoint_model: str | None = None, revision: str | None = None, device: str = "auto",
                 dtype: str | None = None, kernel: str = "auto"):
    """A LocalBackend over `camelid.load(model)`, or with `endpoint` a RemoteBackend that uses `model` only
    for its tokenizer (prompt lengths, chat template strings, MMLU candidate ids)."""
    if endpoint:
        from camelid.checkpoint import resolve_model_dir
        from camelid.tokenizer import load_tokenizer

        return RemoteBackend(endpoint, load_tokenizer(resolve_model_dir(model, revision)), api=api,
                             model=endpoint_model, api_key=api_key)
    from camelid.runtime.load import load

    m, tok = load(model, revision=revision, device=device, dtype=dtype, kernel=kernel)
    return LocalBackend(m, tok, name=str(model), revision=revision)


def evaluate(backend, settings: EvalSettings, data: str | Path, out: str | Path | None = None,
             progress: bool = True) -> dict:
    return run_eval(backend, data, settings, out, progress)
