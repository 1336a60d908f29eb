"""camelid: recover, quantize, run, serve, evaluate and release LLaMA-family models."""

from camelid.chat import apply_template, render_template
from camelid.errors import CamelidError, CheckpointError

__version__ = "0.1.0"

__all__ = ["CamelidError", "CheckpointError", "__version__", "apply_template", "render_template"]
