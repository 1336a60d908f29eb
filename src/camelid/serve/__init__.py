"""camelid.serve: a TGI- and OpenAI-compatible HTTP server with continuous batching."""

from camelid.serve.server import make_limits, serve

__all__ = ["make_limits", "serve"]
