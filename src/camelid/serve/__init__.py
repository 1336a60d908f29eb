"""camelid.serve: a TGI- and OpenAI-compatible HTTP server with continuous batching."""

from camelid._lazy import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {"server": ("make_limits", "serve")})
