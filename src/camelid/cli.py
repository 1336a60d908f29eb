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


def _cmd_info(args: argparse.Namespace) -> int:
    from camelid.checkpoint import info

    summary = info(args.model, revision=args.revision)
    if args.json:
        _print_json(summary)
        return 0
    cfg, tok, quant = summary["config"], summary["tokenizer"], summary["quantization"]
    print(f"model:        {summary['path']}")
    print(f"architecture: {summary['architecture']} ({summary['model_type']})")
    print(f"parameters:   {summary['parameters']:,} in {summary['tensors']} tensors")
    print("dtypes:       " + ", ".join(f"{k} ({v:,})" for k, v in summary["dtypes"].items()))
    print(f"on disk:      {summary['size_on_disk'] / 1e6:,.1f} MB, {summary['format']}, "
          f"{len(summary['weight_files'])} weight file(s)")
    print("config:       " + ", ".join(f"{k}={v}" for k, v in cfg.items()))
    print(f"tokenizer:    {'none' if tok is None else (tok['class'] or '?') + ' ' + ', '.join(tok['files'])}"
          + (" (chat template)" if tok and tok["chat_template"] else ""))
    print(f"quantization: {'none' if quant is None else json.dumps(quant)}")
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from camelid.checkpoint import convert

    out = convert(args.src, args.out, dtype=args.dtype, max_shard_size=args.max_shard_size,
                  overwrite=args.overwrite, revision=args.revision)
    print(f"wrote {out}")
    return 0


def _cmd_recover(args: argparse.Namespace) -> int:
    from camelid.diff import recover

    out = recover(args.base, args.diff, args.out, dtype=args.dtype, check_sum=args.check_sum,
                  max_shard_size=args.max_shard_size, overwrite=args.overwrite)
    print(f"wrote {out}" + (" (integrity check passed)" if args.check_sum is not None else ""))
    return 0


def _cmd_make_diff(args: argparse.Namespace) -> int:
    from camelid.diff import make_diff

    out = make_diff(args.base, args.tuned, args.out, dtype=args.dtype, max_shard_size=args.max_shard_size,
                    overwrite=args.overwrite, exact=not args.allow_inexact)
    print(f"wrote {out}")
    return 0


def _add_checkpoint_commands(sub: argparse._SubParsersAction) -> None:
    dtypes = ["float16", "bfloat16", "float32"]

    def writer_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--max-shard-size", default="5GB", help="largest safetensors shard (default 5GB)")
        p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")

    p = sub.add_parser("info", help="architecture, parameters, dtypes, size, tokenizer, quantization of a model")
    p.add_argument("model", help="model folder or Hub repo id")
    p.add_argument("--revision", help="Hub branch, tag or commit")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("convert", help="cast a model's floating-point weights (e.g. to float16), streamed")
    p.add_argument("src", help="model folder or Hub repo id")
    p.add_argument("out", help="output folder")
    p.add_argument("--dtype", default="float16", choices=dtypes)
    p.add_argument("--revision", help="Hub branch, tag or commit of SRC")
    writer_options(p)
    p.set_defaults(func=_cmd_convert)

    p = sub.add_parser("recover", help="rebuild fine-tuned weights from a weight diff: tuned = base + diff")
    p.add_argument("--base", required=True, help="base model folder (e.g. LLaMA in HF format)")
    p.add_argument("--diff", required=True, help="weight diff folder (its tokenizer and config are used)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--dtype", default="float16", choices=dtypes, help="output dtype (sums are done in fp32)")
    p.add_argument("--check-sum", type=float, help="Alpaca integrity value: expected sum of all recovered weights")
    writer_options(p)
    p.set_defaults(func=_cmd_recover)

    p = sub.add_parser("make-diff", help="write diff = tuned - base, the inverse of recover")
    p.add_argument("--base", required=True, help="base model folder")
    p.add_argument("--tuned", required=True, help="fine-tuned model folder (its tokenizer and config are used)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--dtype", default="float32", choices=dtypes,
                   help="diff dtype; float32 (default) recovers tuned bit for bit, float16/bfloat16 are lossy")
    p.add_argument("--allow-inexact", action="store_true",
                   help="keep every tensor float32 like open-instruct, instead of float64 where needed for "
                        "a bit-exact round trip (smaller diff for fp32 fine-tunes)")
    writer_options(p)
    p.set_defaults(func=_cmd_make_diff)


# --- quantize (issue: GPTQ engine) ---------------------------------------------------------------------


def _add_quant_commands(sub: argparse._SubParsersAction) -> None:
    pass


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
