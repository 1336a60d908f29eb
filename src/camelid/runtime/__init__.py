"""camelid.runtime: load models (GPTQ or not) for inference with fast quantized kernels."""

from camelid.runtime.gptq_load import describe_kernels
from camelid.runtime.load import load

__all__ = ["describe_kernels", "load"]
