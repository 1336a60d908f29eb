"""camelid.quant: GPTQ/RTN quantization of Llama checkpoints into the AutoGPTQ "gptq" (v1) format."""

from camelid.quant.settings import CalibSpec, QuantParams, RunOptions

__all__ = ["CalibSpec", "QuantParams", "RunOptions", "quantize"]


def __getattr__(name: str):
    # `quantize` needs torch and transformers: imported on first use, so the settings stay light
    if name == "quantize":
        from camelid.quant.api import quantize

        return quantize
    raise AttributeError(f"module 'camelid.quant' has no attribute {name!r}")
