"""camelid.export: other runtimes' file formats written from a model folder (GGUF for llama.cpp)."""

__all__ = ["GGUF_TYPES", "GGUFExport", "export_gguf"]


def __getattr__(name: str):
    # The `gguf` package is an optional extra: import it only when an export is asked for.
    if name in __all__:
        from camelid.export import gguf

        return getattr(gguf, name)
    raise AttributeError(f"module 'camelid.export' has no attribute {name!r}")
