"""`serve(...)`: load a model, check the launcher bounds as TGI's launcher does, and run uvicorn."""

from __future__ import annotations

import ipaddress
import logging

import torch

from camelid.errors import CamelidError
from camelid.serve.validation import Limits

log = logging.getLogger("camelid.serve")


def make_limits(
    max_position_embeddings: int,
    max_input_tokens: int | None = None,
    max_total_tokens: int | None = None,
    max_batch_prefill_tokens: int | None = None,
    max_concurrent_requests: int = 128,
    max_stop_sequences: int = 4,
    max_best_of: int = 2,
) -> Limits:
    """TGI's defaults: total = the model's context, input = total - 1, prefill budget = input + 50."""
    total = max_total_tokens or (max_position_embeddings if max_input_tokens is None else max_input_tokens + 1)
    inp = max_input_tokens if max_input_tokens is not None else total - 1
    prefill = max_batch_prefill_tokens or inp + 50
    if not 0 < inp < total:
        raise CamelidError(f"--max-input-tokens ({inp}) must be > 0 and < --max-total-tokens ({total})")
    if total > max_position_embeddings:
        raise CamelidError(
            f"--max-total-tokens ({total}) exceeds the model's context ({max_position_embeddings} positions)"
        )
    if prefill < inp:
        raise CamelidError(
            f"--max-batch-prefill-tokens ({prefill}) must be >= --max-input-tokens ({inp}): "
            "a maximal prompt could never be scheduled"
        )
    if max_concurrent_requests < 1 or max_stop_sequences < 0 or max_best_of < 1:
        raise CamelidError("--max-concurrent-requests and --max-best-of must be >= 1, --max-stop-sequences >= 0")
    return Limits(
        max_input_tokens=inp,
        max_total_tokens=total,
        max_stop_sequences=max_stop_sequences,
        max_batch_prefill_tokens=prefill,
        max_concurrent_requests=max_concurrent_requests,
        max_best_of=max_best_of,
    )


def serve(
    model: str,
    revision: str | None = None,
    template: str | None = None,
    host: str = "127.0.0.1",
    port: int = 3000,
    max_input_tokens: int | None = None,
    max_total_tokens: int | None = None,
    max_batch_prefill_tokens: int | None = None,
    max_concurrent_requests: int = 128,
    max_stop_sequences: int = 4,
    api_key: str | None = None,
    max_best_of: int = 2,
    threads: int | None = None,
    device: str = "auto",
) -> None:
    """Serve `model` with TGI- and OpenAI-compatible routes until interrupted (SIGINT/SIGTERM drain first)."""
    import uvicorn

    from camelid.serve.app import create_app
    from camelid.serve.engine import load_for_serving

    if not 1 <= port <= 65535:
        raise CamelidError(f"port must be 1-65535, got {port}")
    if threads is not None and threads < 1:
        raise CamelidError(f"threads must be >= 1, got {threads}")
    if api_key is None and not _is_loopback(host):
        log.warning("serving on %s without --api-key: anyone who can reach this port can use the model", host)
    if threads is not None:
        # Decode steps on small models are latency-bound: extra intra-op threads on a busy CPU cost more in
        # synchronisation than they save (measured with benchmarks/serve.py).
        torch.set_num_threads(threads)
    served = load_for_serving(model, revision=revision, template=template, device=device)
    limits = make_limits(
        served.max_position_embeddings,
        max_input_tokens,
        max_total_tokens,
        max_batch_prefill_tokens,
        max_concurrent_requests,
        max_stop_sequences,
        max_best_of,
    )
    app = create_app(served, limits, api_key=api_key)
    uvicorn.Server(server_config(app, host=host, port=port, log_level="info")).run()


def server_config(app, read_timeout: float = 30.0, **options):
    """uvicorn's settings for camelid: h11 with a deadline on each request's headers (`HeaderDeadline`)
    and on its body (`read_json`), idle keep-alive connections closed after 5 s (uvicorn's default), and
    30 s for in-flight requests to finish after a signal (the scheduler then fails what is left)."""
    import uvicorn

    app.state.camelid.read_timeout = read_timeout
    return uvicorn.Config(app, http=header_deadline(read_timeout), timeout_keep_alive=5,
                          timeout_graceful_shutdown=options.pop("timeout_graceful_shutdown", 30), **options)


def header_deadline(seconds: float):
    """uvicorn's h11 protocol, with a deadline for a request's headers to arrive (the Slowloris attack sends
    them a byte at a time; uvicorn's keep-alive timer restarts on every byte). The connection is closed
    with 408 when the headers are not complete `seconds` after the connection opened or the previous
    response ended."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderDeadline(H11Protocol):
        timer = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def _arm(self) -> None:
            self._disarm()
            self.timer = self.loop.call_later(seconds, self._expired)

        def _disarm(self) -> None:
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None

        def handle_events(self) -> None:
            cycle = self.cycle
            super().handle_events()
            if self.cycle is not cycle:  # a request's headers are complete: the app has it now
                self._disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _expired(self) -> None:
            self.timer = None
            if self.transport.is_closing() or (self.cycle is not None and not self.cycle.response_complete):
                return
            # written raw: h11 has not seen a request to answer; the connection is closed right after
            self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain\r\n"
                                 b"connection: close\r\ncontent-length: 22\r\n\r\nRequest header timeout")
            self.transport.close()

    return HeaderDeadline


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
