"""`camelid` command line: a thin shell over the Python API. Each subcommand parses, calls, prints."""

from __future__ import annotations

import argparse
import json
import sys

from camelid import __version__
from camelid.errors import CamelidError


def _print_json(obj: object) -> None:
    print(json.dumps(obj, indent=2))


# --- checkpoint: info, convert, recover, make-diff (issue: foundation) --------------------------------


def _add_checkpoint_commands(sub: argparse._SubParsersAction) -> None:
    pass


# --- quantize (issue: GPTQ engine) ---------------------------------------------------------------------


def _cmd_quantize(args: argparse.Namespace) -> int:
    from camelid.quant import quantize

    out = quantize(
        args.model, args.out, bits=args.bits, group_size=args.group_size, act_order=args.act_order,
        damp=args.damp, dataset=args.dataset, dataset_path=args.dataset_path, seq_len=args.seq_len,
        nsamples=args.nsamples, sym=args.sym, true_sequential=args.true_sequential,
        static_groups=args.static_groups, mse=args.mse, lm_head=args.lm_head, device=args.device,
        seed=args.seed, method=args.method, template=args.template, spill=args.spill,
        overwrite=args.overwrite, revision=args.revision, max_shard_size=args.max_shard_size,
    )
    print(f"wrote {out}")
    return 0


def _add_quant_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quantize", help="GPTQ/RTN-quantize a Llama model into the AutoGPTQ (v1) format",
                       description="Quantize MODEL layer by layer into OUT (GPTQ v1 checkpoint). "
                                   "An interrupted run resumes from the last finished layer.")
    p.add_argument("model", help="model folder or Hub repo id")
    p.add_argument("out", help="output folder")
    p.add_argument("--revision", default=None, help="Hub branch/tag/commit of MODEL")
    p.add_argument("--bits", type=int, choices=(2, 3, 4, 8), default=4)
    p.add_argument("--group-size", type=int, default=128, help="columns per scale/zero group (-1: one group)")
    p.add_argument("--act-order", action=argparse.BooleanOptionalAction, default=False,
                   help="quantize columns in order of decreasing Hessian diagonal (desc_act)")
    p.add_argument("--damp", type=float, default=0.01, help="damping, fraction of the mean Hessian diagonal")
    p.add_argument("--dataset", default="wikitext2", help="wikitext2, code, or a file (.txt/.jsonl/.json)")
    p.add_argument("--dataset-path", default=None, help="local file for a named --dataset")
    p.add_argument("--template", default="alpaca", choices=("alpaca", "tulu"),
                   help="prompt template for instruction/input/output records")
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--nsamples", type=int, default=128)
    p.add_argument("--sym", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--asym", dest="sym", action="store_false", help="asymmetric grid (same as --no-sym)")
    p.add_argument("--true-sequential", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--static-groups", action="store_true")
    p.add_argument("--mse", action="store_true", help="search a shrunk grid minimising |q - w|^2.4")
    p.add_argument("--lm-head", action="store_true", help="quantize lm_head too (untied models)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--method", default="gptq", choices=("gptq", "rtn"))
    p.add_argument("--spill", action="store_true", help="keep calibration activations on disk, not in RAM")
    p.add_argument("--max-shard-size", default="5GB")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.set_defaults(func=_cmd_quantize)


# --- generate, chat, eval (issue: runtime) -------------------------------------------------------------


def _add_runtime_commands(sub: argparse._SubParsersAction) -> None:
    pass


# --- serve (issue: serve) ------------------------------------------------------------------------------


def _add_serve_commands(sub: argparse._SubParsersAction) -> None:
    pass


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="camelid", description=__doc__)
    parser.add_argument("--version", action="version", version=f"camelid {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_checkpoint_commands(sub)
    _add_quant_commands(sub)
    _add_runtime_commands(sub)
    _add_serve_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CamelidError as e:
        print(f"camelid: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("camelid: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
