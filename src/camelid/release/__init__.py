"""camelid.release: the variant matrix built as branches of one release, measured, with a model card."""

from camelid.release.adapter import CalibSpec, RunOptions
from camelid.release.build import EvalSpec, build_release, read_release
from camelid.release.card import CardInfo
from camelid.release.matrix import BUILTIN, Row, branch_name, load_matrix, resolve_rows
from camelid.release.plan import plan_json, plan_release

__all__ = ["BUILTIN", "CalibSpec", "CardInfo", "EvalSpec", "Row", "RunOptions", "branch_name", "build_release",
           "load_matrix", "plan_json", "plan_release", "read_release", "resolve_rows"]
