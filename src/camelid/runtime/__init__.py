"""camelid.runtime: load models (GPTQ or not) for inference with fast quantized kernels."""

from camelid.runtime.load import load

__all__ = ["load"]
