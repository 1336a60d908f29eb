"""The one seam between the server and the rest of camelid: load a model for serving, render chat prompts.

Everything model-specific the HTTP layer needs (tokenizer, stop ids, context length, chat template) is
gathered here once, so the routes and the scheduler never look at a Transformers config themselves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from camelid.errors import CamelidError


class TemplateError(CamelidError):
    """No chat template, or one that rejects the conversation (HTTP 422, error_type template_error)."""


@dataclass
class ServedModel:
    """A loaded model plus what serving needs to know about it."""

    model: Any  # a Transformers causal LM (its linears may be camelid GPTQ modules)
    tokenizer: Any
    model_id: str
    revision: str | None
    eos_token_ids: set[int]
    max_position_embeddings: int
    chat_template: str | None = None  # a jinja string given with --template, else the tokenizer's own
    info: dict = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def load_for_serving(
    model: str,
    revision: str | None = None,
    template: str | None = None,
    dtype: torch.dtype | None = None,
) -> ServedModel:
    """Load `model` (folder or Hub repo) for serving.

    `template` is a jinja chat template string or a path to a `.jinja` file; it overrides the tokenizer's.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from camelid.checkpoint import resolve_model_dir

    folder = resolve_model_dir(model, revision=revision)
    # A SentencePiece model without tokenizer.json needs the slow tokenizer (the fast conversion of
    # stories260K's tiny vocabulary is wrong).
    use_fast = (Path(folder) / "tokenizer.json").exists()
    tokenizer = AutoTokenizer.from_pretrained(folder, use_fast=use_fast)
    lm = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype or torch.float32)
    lm.eval()
    eos = lm.generation_config.eos_token_id if lm.generation_config is not None else None
    if eos is None:
        eos = tokenizer.eos_token_id
    eos_ids = {int(e) for e in (eos if isinstance(eos, list) else [eos]) if e is not None}
    return ServedModel(
        model=lm,
        tokenizer=tokenizer,
        model_id=model,
        revision=revision,
        eos_token_ids=eos_ids,
        max_position_embeddings=int(getattr(lm.config, "max_position_embeddings", 2048)),
        chat_template=_read_template(template),
    )


def _read_template(template: str | None) -> str | None:
    if template is None:
        return None
    if "{{" in template or "{%" in template:
        return template
    path = Path(template)
    if path.is_file():
        return path.read_text()
    raise TemplateError(
        f"--template {template!r} is neither a jinja template string nor a file "
        "(named templates come with camelid.chat)"
    )


def render_chat(served: ServedModel, messages: list[dict]) -> list[int]:
    """Token ids of `messages` rendered with the served chat template, ending with the assistant header."""
    template = served.chat_template or getattr(served.tokenizer, "chat_template", None)
    if not template:
        raise TemplateError(
            f"{served.model_id} has no chat template; start the server with --template"
        )
    try:
        ids = served.tokenizer.apply_chat_template(
            messages, chat_template=template, add_generation_prompt=True, tokenize=True, return_dict=False
        )
    except Exception as e:  # jinja raise_exception / undefined variables: the client's conversation is at fault
        raise TemplateError(f"chat template failed: {e}") from e
    return [int(i) for i in ids]
