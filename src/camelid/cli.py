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
