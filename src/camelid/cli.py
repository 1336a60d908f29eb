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
    p = sub.add_parser("serve", help="serve a model over HTTP (TGI- and OpenAI-compatible routes)")
    p.add_argument("model", help="model folder or Hub repo id")
    p.add_argument("--revision", default=None)
    p.add_argument("--template", default=None, help="chat template: a jinja string or a .jinja file")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=3000)
    p.add_argument("--max-input-tokens", "--max-input-length", dest="max_input_tokens", type=int, default=None)
    p.add_argument("--max-total-tokens", type=int, default=None)
    p.add_argument("--max-batch-prefill-tokens", type=int, default=None)
    p.add_argument("--max-concurrent-requests", type=int, default=128)
    p.add_argument("--max-stop-sequences", type=int, default=4)
    p.add_argument("--api-key", default=None, help="require `Authorization: Bearer KEY` on every route but /health")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    from camelid.serve import serve

    serve(
        args.model,
        revision=args.revision,
        template=args.template,
        host=args.host,
        port=args.port,
        max_input_tokens=args.max_input_tokens,
        max_total_tokens=args.max_total_tokens,
        max_batch_prefill_tokens=args.max_batch_prefill_tokens,
        max_concurrent_requests=args.max_concurrent_requests,
        max_stop_sequences=args.max_stop_sequences,
        api_key=args.api_key,
        threads=args.threads,
    )
    return 0


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
