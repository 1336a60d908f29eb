"""camelid.eval: perplexity and KL divergence on text windows (GPTQ protocol)."""

from camelid._lazy import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "likelihood": ("document_windows", "gptq_windows", "kl_divergence", "kl_divergence_windows", "perplexity",
                   "read_gptq_text"),
})
