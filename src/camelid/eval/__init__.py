"""camelid.eval: perplexity/KL on text windows (GPTQ protocol) and the Tulu paper's benchmarks
(MMLU, GSM8K, BBH, TyDiQA, Codex-Eval, AlpacaFarm) on a local model or any served endpoint."""

from camelid.eval.perplexity import (
    document_windows,
    gptq_windows,
    kl_divergence,
    perplexity,
    read_gptq_text,
)

__all__ = ["EvalSettings", "LocalBackend", "RemoteBackend", "document_windows", "evaluate", "gptq_windows",
           "kl_divergence", "open_backend", "perplexity", "read_gptq_text", "run_suite"]


def __getattr__(name: str):
    # The benchmark API is imported on first use (it pulls in the runtime).
    from importlib import import_module

    if name in ("EvalSettings", "LocalBackend", "RemoteBackend", "evaluate", "open_backend", "run_suite"):
        return getattr(import_module("camelid.eval.api"), name)
    raise AttributeError(f"module 'camelid.eval' has no attribute {name!r}")
