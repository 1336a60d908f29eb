"""camelid: recover, quantize, run, serve, evaluate and release LLaMA-family models."""

from camelid.chat import apply_template, render_template
from camelid.errors import CamelidError, CheckpointError

__version__ = "0.1.0"

__all__ = ["CamelidError", "CheckpointError", "__version__", "apply_template", "load", "render_template"]


def __getattr__(name: str):
    # Heavy APIs (torch, transformers) are imported on first use so `import camelid` stays light.
    if name == "load":
        from camelid.runtime.load import load

        return load
    raise AttributeError(f"module 'camelid' has no attribute {name!r}")
