"""camelid.chat: prompt templates (registry + a model's own chat_template) and the ids fed to the model."""

from camelid.chat.templates import (
    TEMPLATES,
    PromptTemplate,
    apply_template,
    render_template,
    stop_strings,
    template_source,
)

__all__ = ["TEMPLATES", "PromptTemplate", "apply_template", "render_template", "stop_strings", "template_source"]
