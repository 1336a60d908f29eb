"""camelid.quant: GPTQ/RTN quantization of Llama checkpoints into the AutoGPTQ "gptq" (v1) format."""

from camelid._lazy import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {"engine": ("quantize",)})
