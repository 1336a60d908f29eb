"""`camelid.load`: a model folder or Hub repo -> (Transformers model, tokenizer), GPTQ or not."""

from __future__ import annotations

import os

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from camelid.checkpoint.source import Checkpoint, resolve_model_dir
from camelid.device import resolve_device
from camelid.dtypes import parse_dtype
from camelid.errors import CamelidError
from camelid.formats.gptq.config import read_config
from camelid.runtime.gptq_load import load_gptq
from camelid.tokenizer import load_tokenizer


def default_dtype(config_dtype: torch.dtype | None, device: torch.device) -> torch.dtype:
    """The checkpoint's dtype, except fp16 on CPU, which has no fast fp16 matmul: fp32 there."""
    dtype = config_dtype or torch.float32
    if device.type == "cpu" and dtype == torch.float16:
        return torch.float32
    return dtype


def load(path_or_repo: str | os.PathLike, revision: str | None = None, device: str | torch.device = "auto",
         dtype: str | torch.dtype | None = None, kernel: str = "auto") -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a LLaMA-family model for inference: a Transformers model (so `generate()`/`pipeline()` work)
    and its tokenizer. GPTQ checkpoints get camelid's quantized linears (see `camelid.runtime.qlinear`)."""
    model_dir = resolve_model_dir(path_or_repo, revision)
    dev = resolve_device(device)
    want = None if dtype is None else parse_dtype(dtype)
    qcfg = read_config(model_dir)
    if qcfg is not None:
        model = load_gptq(model_dir, qcfg, dev, want, kernel)
    else:
        if kernel not in ("auto", "dense"):
            raise CamelidError(f"--kernel {kernel!r} applies to GPTQ models; {model_dir} is not quantized")
        model = _load_dense(model_dir, dev, want)
    model.eval()
    _canonical_head_input(model)
    return model, load_tokenizer(model_dir)


def _flatten_strides(module: torch.nn.Module, args: tuple) -> tuple:
    x = args[0]
    return (x.view(-1, x.shape[-1]).view(x.shape), *args[1:])


def _canonical_head_input(model: PreTrainedModel) -> None:
    """Give a dense LM head inputs with ordinary strides. Transformers feeds it `hidden[:, -1:, :]`
    (logits_to_keep=1, every decode step), a [1, 1, h] view with a stride-(T*h) leading dim, and torch's
    CPU bf16 linear takes a ~50x slower path on that (128 ms vs 2 ms for a 32000x512 head, measured);
    a view through 2-D restores the normal strides at no cost."""
    head = model.get_output_embeddings()
    if type(head) is torch.nn.Linear:
        head.register_forward_pre_hook(_flatten_strides)


def _load_dense(model_dir, device: torch.device, dtype: torch.dtype | None) -> PreTrainedModel:
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(model_dir)
    except (OSError, ValueError) as e:
        raise CamelidError(f"{model_dir}: cannot read config.json ({e})") from e
    dtype = dtype or default_dtype(getattr(config, "dtype", None) or getattr(config, "torch_dtype", None), device)
    # Our reader first: a corrupt or truncated safetensors file, or a pickle holding more than tensors, is a
    # CheckpointError naming the file, the same as in info/convert/quantize, not the loader's own exception.
    Checkpoint(model_dir)
    try:
        model = AutoModelForCausalLM.from_pretrained(model_dir, config=config, dtype=dtype)
    except (OSError, ValueError) as e:
        raise CamelidError(f"{model_dir}: cannot load the model ({e})") from e
    return model.to(device)
