"""The one seam between the server and the rest of camelid: load a model for serving, render chat prompts.

Everything model-specific the HTTP layer needs (tokenizer, stop ids, context length, chat template) is
gathered here once, so the routes and the scheduler never look at a Transformers config themselves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from camelid.chat import apply_template, render_template, stop_strings
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
    template: str | None = None  # --template: a camelid.chat registry name or Jinja; None = the model's own

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def load_for_serving(
    model: str,
    revision: str | None = None,
    template: str | None = None,
    device: str = "auto",
    dtype: str | torch.dtype | None = None,
) -> ServedModel:
    """Load `model` (folder or Hub repo, GPTQ or not) with `camelid.load` for serving.

    `template` is a camelid.chat registry name or Jinja source; None means the model's own chat_template
    (checked when a chat request arrives, so a model without one still serves /generate).
    """
    from camelid.runtime.generate import eos_token_ids
    from camelid.runtime.load import load

    lm, tokenizer = load(model, revision=revision, device=device, dtype=dtype)
    if template is not None:
        # An unknown name, broken Jinja or a template needing tokens this tokenizer lacks fails now, at start-up,
        # not as a 422 on every chat request.
        render_template(tokenizer, [{"role": "user", "content": "probe"}], template)
    return ServedModel(
        model=lm,
        tokenizer=tokenizer,
        model_id=model,
        revision=revision,
        eos_token_ids=eos_token_ids(lm, tokenizer),
        max_position_embeddings=int(getattr(lm.config, "max_position_embeddings", 2048)),
        template=template,
    )


def render_chat(served: ServedModel, messages: list[dict]) -> list[int]:
    """Token ids of `messages` in the served template, ending with the assistant header."""
    try:
        return apply_template(served.tokenizer, messages, served.template)
    except CamelidError as e:  # no template, or the template refuses this conversation: the client's 422
        raise TemplateError(str(e)) from e


def chat_stop_strings(served: ServedModel) -> list[str]:
    """Strings that end an assistant turn in the served template besides EOS (registry templates only)."""
    return list(stop_strings(served.template))
