"""GGUF files run by llama.cpp (llama-cpp-python, the `gguf` extra), shaped like a Transformers model and
tokenizer where camelid.eval needs them: `model(input_ids=[b, T]).logits` is [b, T, vocab] float32, from one
llama.cpp evaluation per window with the logits of every position kept (`logits_all=True`)."""

from __future__ import annotations

import atexit
import os
import weakref
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING

from camelid.errors import CamelidError, CheckpointError

if TYPE_CHECKING:  # torch only where logits are made: GGUF export calls require_llama_cpp without it
    import torch


def require_llama_cpp(what: str):
    """The llama_cpp module, or an error naming the extra that provides it."""
    try:
        import llama_cpp
    except ImportError as e:
        raise CamelidError(f"{what} needs llama-cpp-python: pip install 'camelid[gguf]'") from e
    return llama_cpp


def is_gguf(path: str | os.PathLike) -> bool:
    return Path(path).suffix == ".gguf" and Path(path).is_file()


class LlamaCppLM:
    """A llama.cpp model evaluated window by window; the KV cache is cleared before each window."""

    def __init__(self, llm):
        import torch

        self.llm = llm
        self.device = torch.device("cpu")
        trained = llm.metadata.get(f"{llm.metadata.get('general.architecture')}.context_length")
        self.config = SimpleNamespace(max_position_embeddings=int(trained or llm.n_ctx()))

    def __call__(self, input_ids: torch.Tensor, **_) -> SimpleNamespace:
        import torch

        rows = []
        for ids in input_ids.tolist():
            self.llm.reset()  # the next eval drops every cached position from n_tokens = 0 on
            self.llm.eval(ids)
            rows.append(torch.from_numpy(self.llm.scores[: len(ids)].copy()))
        return SimpleNamespace(logits=torch.stack(rows))

    def greedy(self, prompt: list[int], max_new_tokens: int) -> list[int]:
        """Greedy continuation (argmax of llama.cpp's logits at each step), stopping at EOS."""
        self.llm.reset()
        self.llm.eval(prompt)
        out: list[int] = []
        while len(out) < max_new_tokens:
            out.append(int(self.llm.scores[self.llm.n_tokens - 1].argmax()))
            if out[-1] == self.llm.token_eos():
                break
            self.llm.eval(out[-1:])
        return out


class LlamaCppTokenizer:
    """llama.cpp's own tokenizer of a GGUF file, called like a Transformers tokenizer."""

    def __init__(self, llm):
        self.llm = llm
        self.bos_token_id, self.eos_token_id = llm.token_bos(), llm.token_eos()

    def __call__(self, text: str, add_special_tokens: bool = True, **_) -> dict:
        # special=True: special tokens written in the text are tokens, as Transformers tokenizers do.
        return {"input_ids": self.llm.tokenize(text.encode("utf-8"), add_bos=add_special_tokens, special=True)}

    def decode(self, ids: list[int]) -> str:
        return self.llm.detokenize(ids).decode("utf-8", errors="replace")


def _close(ref: weakref.ref) -> None:
    if (llm := ref()) is not None:
        llm.close()


def load_gguf(path: str | os.PathLike, n_ctx: int | None = None,
              threads: int | None = None) -> tuple[LlamaCppLM, LlamaCppTokenizer]:
    """A GGUF file on llama.cpp's CPU backend; `n_ctx` defaults to the model's trained context."""
    llama_cpp = require_llama_cpp("running a GGUF file")
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"GGUF file not found: {path}")
    threads = threads or max(1, len(os.sched_getaffinity(0)))
    try:
        llm = llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx or 0, n_batch=min(n_ctx or 512, 512),
                              n_threads=threads, n_threads_batch=threads, logits_all=True,
                              verbose=False)
    except ValueError as e:  # llama-cpp-python's "Failed to load model from file"
        raise CheckpointError(f"{path}: llama.cpp cannot load it ({e})") from e
    # Freed before interpreter shutdown: Llama.__del__ at teardown finds llama_cpp's globals gone and prints a
    # TypeError traceback.
    atexit.register(_close, weakref.ref(llm))
    return LlamaCppLM(llm), LlamaCppTokenizer(llm)
