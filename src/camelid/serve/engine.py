"""The one seam between the server and the rest of camelid: load a model for serving, render chat prompts.

Everything model-specific the HTTP layer needs (tokenizer, stop ids, context length, chat template) is
gathered here once, so the routes and the scheduler never look at a Transformers config themselves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from camelid.chat import apply_template, no_template_error, resolve_template, stop_strings
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
    eos_token_ids: frozenset[int]
    max_position_embeddings: int
    template: str | None = None  # resolved (camelid.chat.resolve_template): a registry name or Jinja; None = none

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

    `template` is resolved as for `camelid generate` (`camelid.chat.resolve_template`): a registry name, Jinja,
    "none", or None for the model's own chat_template if it has one. Without a template the model still
    serves /generate and /v1/completions; chat requests get a 422.
    """
    from camelid.runtime.load import load
    from camelid.runtime.stops import eos_token_ids

    lm, tokenizer = load(model, revision=revision, device=device, dtype=dtype)
    return ServedModel(
        model=lm,
        tokenizer=tokenizer,
        model_id=model,
        revision=revision,
        eos_token_ids=eos_token_ids(lm, tokenizer),
        max_position_embeddings=int(getattr(lm.config, "max_position_embeddings", 2048)),
        template=resolve_template(tokenizer, template),
    )


def render_chat(served: ServedModel, messages: list[dict]) -> list[int]:
    """Token ids of `messages` in the served template, ending with the assistant header."""
    try:
        if served.template is None:
            raise no_template_error()
        return apply_template(served.tokenizer, messages, served.template)
    except CamelidError as e:  # no template, or the template refuses this conversation: the client's 422
        raise TemplateError(str(e)) from e


def chat_stop_strings(served: ServedModel) -> list[str]:
    """Strings that end an assistant turn in the served template besides EOS (registry templates only)."""
    return list(stop_strings(served.template))
