"""Between an HTTP request and the scheduler: auth, body limit, JSON parsing, the concurrency limit, and
the event stream of one sequence (cancelled the moment its client goes away).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pydantic
from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.requests import ClientDisconnect

from camelid.serve.engine import ServedModel
from camelid.serve.metrics import Metrics
from camelid.serve.scheduler import Event, Failed, Scheduler, Sequence, Token
from camelid.serve.validation import GenerationRequest, Limits


class HTTPError(Exception):
    """An error response: TGI's body `{"error", "error_type"}`, or OpenAI's `{"error": {...}}`."""

    def __init__(self, status: int, message: str, error_type: str, openai: bool = False) -> None:
        super().__init__(message)
        self.status, self.message, self.error_type, self.openai = status, message, error_type, openai

    def response(self) -> JSONResponse:
        if self.openai:
            body = {"error": {"message": self.message, "type": self.error_type, "code": self.status}}
        else:
            body = {"error": self.message, "error_type": self.error_type}
        return JSONResponse(body, status_code=self.status)


@dataclass
class ServerState:
    served: ServedModel
    limits: Limits
    scheduler: Scheduler
    metrics: Metrics
    api_key: str | None = None
    max_body_bytes: int = 2_000_000  # TGI's --payload-limit default
    read_timeout: float = 30.0  # seconds a client may take to send a request's headers, and then its body
    in_flight: int = 0
    mailbox: Mailbox | None = None


def key_matches(api_key: str | None, authorization: str) -> bool:
    return api_key is None or hmac.compare_digest(authorization.encode(), f"Bearer {api_key}".encode())


OPEN_PATHS = ("/health", "/ping")  # load balancers probe these without credentials


class RequireKey:
    """ASGI guard, the one place the key is checked: every path but /health (and its SageMaker alias /ping)
    needs `Authorization: Bearer KEY` (Prometheus sends it with `authorization: {credentials: KEY}`),
    including paths no route declares (/openapi.json, /docs, a 404), so nothing leaks without it."""

    def __init__(self, app, api_key: str | None) -> None:
        self.app, self.api_key = app, api_key

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"] not in OPEN_PATHS:
            headers = dict(scope.get("headers") or [])
            if not key_matches(self.api_key, headers.get(b"authorization", b"").decode("latin-1")):
                openai = scope["path"].startswith("/v1/")
                await HTTPError(401, "Unauthorized", "authentication", openai).response()(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def read_json(state: ServerState, request: Request, model: type[pydantic.BaseModel], openai: bool = False):
    """The body parsed into `model`; oversize -> 413, too slow -> 408, malformed or wrong shape -> 422 (never
    a 500). A client that hangs up mid-body gets no answer and leaves no traceback in the log."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > state.max_body_bytes:
        raise HTTPError(413, f"Payload exceeds {state.max_body_bytes} bytes", "payload_limit", openai)

    async def body() -> bytes:
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > state.max_body_bytes:
                raise HTTPError(413, f"Payload exceeds {state.max_body_bytes} bytes", "payload_limit", openai)
            chunks.append(chunk)
        return b"".join(chunks)

    try:
        raw = await asyncio.wait_for(body(), state.read_timeout)  # a slowloris body is cut off
    except asyncio.TimeoutError:
        raise HTTPError(408, f"Request body not received within {state.read_timeout:g} s", "timeout",
                        openai) from None
    except ClientDisconnect:
        raise HTTPError(499, "Client closed the request", "client_disconnect", openai) from None
    try:
        return model.model_validate_json(raw)
    except pydantic.ValidationError as e:
        raise HTTPError(422, _describe(e), "validation", openai) from None


def _describe(e: pydantic.ValidationError) -> str:
    err = e.errors(include_url=False)[0]
    where = ".".join(str(p) for p in err["loc"])
    if err["type"] == "json_invalid":
        return f"Failed to parse the request body as JSON: {err['msg']}"
    return f"Failed to deserialize the JSON body into the target type: {where}: {err['msg']}"


class Permit:
    """One slot of --max-concurrent-requests, held for the whole request (stream included)."""

    def __init__(self, state: ServerState, openai: bool = False) -> None:
        if state.in_flight >= state.limits.max_concurrent_requests:
            raise HTTPError(429, "Model is overloaded", "overloaded", openai)
        self.state, self.released = state, False
        state.in_flight += 1
        state.metrics.in_flight.set(state.in_flight)

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.state.in_flight -= 1
            self.state.metrics.in_flight.set(self.state.in_flight)


class EventStream(StreamingResponse):
    """An SSE response that gives its permit back however it ends, even if the client left before the first
    byte (then the body generator never starts, so its own `finally` would never run)."""

    def __init__(self, events: AsyncIterator[str], permit: Permit) -> None:
        super().__init__(events, media_type="text/event-stream", headers={"cache-control": "no-cache"})
        self.events, self.permit = events, permit

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.events.aclose()  # runs the generator's cleanup now: its sequence is cancelled
            self.permit.release()


_DISCONNECTED = object()


class Mailbox:
    """Hands scheduler events to the event loop, one wake-up per batch of events rather than per token."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.pending: list[tuple[asyncio.Queue, Event]] = []
        self.lock = threading.Lock()
        self.scheduled = False

    def post(self, queue: asyncio.Queue, event: Event) -> None:  # called from the scheduler thread
        with self.lock:
            self.pending.append((queue, event))
            if self.scheduled:
                return
            self.scheduled = True
        try:
            self.loop.call_soon_threadsafe(self._deliver)
        except RuntimeError:  # the event loop is already closed (shutdown)
            pass

    def _deliver(self) -> None:
        with self.lock:
            items, self.pending, self.scheduled = self.pending, [], False
        for queue, event in items:
            queue.put_nowait(event)


def mailbox(state: ServerState) -> Mailbox:
    loop = asyncio.get_running_loop()
    if state.mailbox is None or state.mailbox.loop is not loop:
        state.mailbox = Mailbox(loop)
    return state.mailbox


async def run_sequence(state: ServerState, request: Request, gen: GenerationRequest) -> AsyncIterator[Event]:
    """Submit `gen` and yield its events until its last token or a failure.

    Leaving early (client disconnect, generator closed) cancels the sequence: the scheduler drops it
    before its next step.
    """
    queue: asyncio.Queue = asyncio.Queue()
    box = mailbox(state)
    seq = Sequence(gen, lambda event: box.post(queue, event))
    state.metrics.requests.inc()
    state.metrics.input_length.observe(len(gen.input_ids))
    watcher = asyncio.create_task(_watch_disconnect(request, queue))
    state.scheduler.submit(seq)
    try:
        while True:
            event = await queue.get()
            if event is _DISCONNECTED:
                return
            yield event
            if isinstance(event, Failed):
                state.metrics.failure.labels(event.error_type).inc()
                return
            if isinstance(event, Token) and event.done is not None:
                state.metrics.success.inc()
                return
    finally:
        seq.cancel()
        watcher.cancel()


async def _watch_disconnect(request: Request, queue: asyncio.Queue) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            queue.put_nowait(_DISCONNECTED)
            return


def sse(obj: object, space: bool = False) -> str:
    """One server-sent event. TGI writes `data:{...}`; OpenAI writes `data: {...}`."""
    # allow_nan=False: strict JSON, as JSONResponse writes it (the scheduler turns -inf logprobs into null)
    return ("data: " if space else "data:") + json.dumps(obj, ensure_ascii=False, allow_nan=False) + "\n\n"
