"""camelid.chat: prompt templates (registry + a model's own chat_template) and the ids fed to the model."""

from camelid._lazy import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "templates": ("NO_TEMPLATE", "TEMPLATES", "PromptTemplate", "apply_template", "no_template_error",
                  "prompt_ids", "render_template", "resolve_template", "stop_strings", "template_source"),
})
