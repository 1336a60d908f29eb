"""camelid.chat: prompt templates (registry + a model's own chat_template) and the ids fed to the model."""

from camelid._lazy import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "templates": ("TEMPLATES", "PromptTemplate", "apply_template", "render_template", "stop_strings",
                  "template_source"),
})
