"""Quantized checkpoint formats: each module alone owns one on-disk layout (today GPTQ; AWQ and GGUF
would sit beside it). `find_quantization_config` is where any of them declares itself."""

from camelid._lazy import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {"declared": ("QUANT_CONFIG_FILES", "find_quantization_config")})
