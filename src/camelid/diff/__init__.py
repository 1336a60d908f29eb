"""Weight diffs: recover fine-tuned weights from a published diff (tuned = base + diff), and make one."""

from camelid.diff.weight_diff import make_diff, match_tensors, recover

__all__ = ["make_diff", "match_tensors", "recover"]
