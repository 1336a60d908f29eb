"""Small random Llama model folders for tests: `make_tiny_llama(path, **overrides)`."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

EXAMPLE_MODEL = Path(__file__).resolve().parents[1] / "examples" / "stories260K"

TINY = dict(vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=False)


def make_tiny_llama(path: str | Path, *, seed: int = 0, dtype: torch.dtype = torch.float32,
                    max_shard_size: str | int | None = None, bin_format: bool = False,
                    tokenizer: bool = False, **overrides) -> Path:
    """Write a randomly initialised LlamaForCausalLM folder (config + weights) and return its path.

    overrides: any LlamaConfig field (vocab_size, hidden_size, tie_word_embeddings, ...).
    max_shard_size: shard the safetensors (e.g. "20KB"); bin_format: write pytorch_model.bin instead.
    tokenizer: copy the stories260K SentencePiece tokenizer (vocab 512) into the folder.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    config = LlamaConfig(**{**TINY, **overrides})
    model = LlamaForCausalLM(config).to(dtype).eval()
    if bin_format:
        model.config.save_pretrained(path)
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        if config.tie_word_embeddings:
            state.pop("lm_head.weight", None)
        torch.save(state, path / "pytorch_model.bin")
    else:
        kwargs = {"max_shard_size": max_shard_size} if max_shard_size is not None else {}
        model.save_pretrained(path, **kwargs)
    if tokenizer:
        for name in ("tokenizer.model", "tokenizer_config.json"):
            shutil.copyfile(EXAMPLE_MODEL / name, path / name)
    return path
