"""camelid.eval: perplexity/KL on text windows (GPTQ protocol) and the Tulu paper's benchmarks
(MMLU, GSM8K, BBH, TyDiQA, Codex-Eval, AlpacaFarm) on a local model or any served endpoint."""

from camelid._lazy import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "likelihood": ("document_windows", "gptq_windows", "kl_divergence", "kl_divergence_windows", "perplexity",
                   "read_gptq_text"),
    "api": ("EvalSettings", "LocalBackend", "RemoteBackend", "evaluate", "open_backend", "run_suite"),
})
