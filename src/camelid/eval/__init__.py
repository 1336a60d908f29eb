"""camelid.eval: perplexity and KL divergence on text windows (GPTQ protocol)."""

from camelid.eval.perplexity import (
    document_windows,
    gptq_windows,
    kl_divergence,
    kl_divergence_windows,
    perplexity,
    read_gptq_text,
)

__all__ = ["document_windows", "gptq_windows", "kl_divergence", "kl_divergence_windows", "perplexity", "read_gptq_text"]
