"""Weight diffs: recover fine-tuned weights from a published diff (tuned = base + diff), and make one."""

from camelid._lazy import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {"weight_diff": ("make_diff", "match_tensors", "recover")})
