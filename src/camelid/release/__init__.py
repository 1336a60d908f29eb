"""camelid.release: the variant matrix built as branches of one release, measured, with a model card."""

from camelid._lazy import lazy_exports

# Lazy: planning a release (config.json alone) must not import torch or transformers.
__all__, __getattr__ = lazy_exports(__name__, {
    "build": ("EvalSpec", "build_release", "read_release"),
    "card": ("CardInfo",),
    "matrix": ("BUILTIN", "Row", "branch_name", "load_matrix", "resolve_rows"),
    "plan": ("plan_json", "plan_release"),
})
