"""camelid.quant: GPTQ/RTN quantization of Llama checkpoints into the AutoGPTQ "gptq" (v1) format."""

from camelid.quant.engine import quantize

__all__ = ["quantize"]
