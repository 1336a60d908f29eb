"""camelid.export: other runtimes' file formats written from a model folder (GGUF for llama.cpp)."""

from camelid._lazy import lazy_exports

# Lazy: the `gguf` package is an optional extra, imported only when an export is asked for.
__all__, __getattr__ = lazy_exports(__name__, {"gguf": ("GGUF_TYPES", "GGUFExport", "export_gguf")})
