"""camelid.runtime: load models (GPTQ or not) for inference with fast quantized kernels.

`camelid.load` is the loader (its module here is `camelid.runtime.load`)."""

from camelid._lazy import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {"gptq_load": ("describe_kernels", "plan_kernels")})
