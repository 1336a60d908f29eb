"""camelid.chat: prompt templates (registry + a model's own chat_template) and the ids fed to the model."""

from camelid.chat.templates import (
    NO_TEMPLATE,
    TEMPLATES,
    PromptTemplate,
    apply_template,
    no_template_error,
    prompt_ids,
    render_template,
    resolve_template,
    stop_strings,
    template_source,
)

__all__ = [
    "NO_TEMPLATE",
    "TEMPLATES",
    "PromptTemplate",
    "apply_template",
    "no_template_error",
    "prompt_ids",
    "render_template",
    "resolve_template",
    "stop_strings",
    "template_source",
]
