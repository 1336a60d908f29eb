"""camelid.quant: GPTQ/RTN quantization of Llama checkpoints into the AutoGPTQ "gptq" (v1) format, AWQ into AutoAWQ GEMM."""

from camelid._lazy import lazy_exports

# `quantize` needs torch and transformers: imported on first use, so the settings stay light
__all__, __getattr__ = lazy_exports(__name__, {"api": ("quantize",),
                                               "settings": ("CalibSpec", "QuantParams", "RunOptions")})
