"""The FastAPI app and TGI's routes: /, /generate, /generate_stream, /tokenize, /info, /health, /metrics."""

from __future__ import annotations

import asyncio
import math
import random
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from camelid import __version__
from camelid.serve import openai_api
from camelid.serve.engine import ServedModel, TemplateError
from camelid.serve.gateway import (
    EventStream,
    HTTPError,
    Permit,
    RequireKey,
    ServerState,
    read_json,
    run_sequence,
    sse,
)
from camelid.serve.metrics import CONTENT_TYPE, Metrics
from camelid.serve.scheduler import Done, Failed, Prefill, Scheduler, Token
from camelid.serve.validation import (
    GenerateRequest,
    GenerationRequest,
    Limits,
    ValidationError,
    validate_generate,
)


def create_app(served: ServedModel, limits: Limits, api_key: str | None = None) -> FastAPI:
    metrics = Metrics()
    state = ServerState(served, limits, Scheduler(served, limits.max_batch_prefill_tokens, metrics), metrics, api_key)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state.scheduler.start()
        yield
        state.scheduler.stop()  # uvicorn has drained what it could; fail the rest

    app = FastAPI(title="camelid serve", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.camelid = state
    app.add_middleware(RequireKey, api_key=api_key)

    @app.exception_handler(HTTPError)
    async def _http_error(request: Request, e: HTTPError) -> JSONResponse:
        state.metrics.failure.labels(e.error_type).inc()
        return e.response()

    @app.exception_handler(ValidationError)
    async def _validation(request: Request, e: ValidationError) -> JSONResponse:
        state.metrics.failure.labels("validation").inc()
        return HTTPError(422, str(e), "validation", _is_openai(request)).response()

    @app.exception_handler(TemplateError)
    async def _template(request: Request, e: TemplateError) -> JSONResponse:
        return HTTPError(422, str(e), "template_error", _is_openai(request)).response()

    @app.post("/generate")
    async def generate(request: Request):
        req = await read_json(state, request, GenerateRequest)
        return _json(await _generate(state, request, req), wrap=False)

    @app.post("/generate_stream")
    async def generate_stream(request: Request):
        req = await read_json(state, request, GenerateRequest)
        return await _generate_stream(state, request, req)

    @app.post("/")
    async def compat(request: Request):
        req = await read_json(state, request, GenerateRequest)
        if req.stream:
            return await _generate_stream(state, request, req)
        return _json(await _generate(state, request, req), wrap=True)  # TGI answers `/` with a list

    @app.post("/tokenize")
    async def tokenize(request: Request):
        req = await read_json(state, request, GenerateRequest)
        return await asyncio.to_thread(_tokenize, served.tokenizer, req.inputs, req.add_special_tokens)

    @app.get("/info")
    async def info(request: Request):
        return {
            "model_id": served.model_id,
            "model_sha": served.revision,
            "model_pipeline_tag": "text-generation",
            "model_dtype": str(served.model.dtype).removeprefix("torch."),
            "model_device_type": served.device.type,
            "max_concurrent_requests": limits.max_concurrent_requests,
            "max_best_of": limits.max_best_of,
            "max_stop_sequences": limits.max_stop_sequences,
            "max_input_tokens": limits.max_input_tokens,
            "max_total_tokens": limits.max_total_tokens,
            "max_batch_prefill_tokens": limits.max_batch_prefill_tokens,
            "max_client_batch_size": 1,
            "router": "camelid",
            "version": __version__,
        }

    @app.get("/health")
    async def health():
        if not state.scheduler.alive():
            return JSONResponse({"error": "unhealthy", "error_type": "healthcheck"}, status_code=503)
        return Response(status_code=200)

    @app.get("/ping")
    async def ping():
        return await health()

    @app.get("/metrics")
    async def metrics_route(request: Request):
        return Response(state.metrics.render(), media_type=CONTENT_TYPE)

    openai_api.add_routes(app, state)
    return app


def _is_openai(request: Request) -> bool:
    return request.url.path.startswith("/v1/")


# --- /generate ------------------------------------------------------------------------------------------


def _json(result: tuple[dict, dict] | None, wrap: bool) -> Response:
    if result is None:  # the client went away; nobody reads this
        return Response(status_code=499)
    body, headers = result
    return JSONResponse([body] if wrap else body, headers=headers)


@dataclass
class Finished:
    tokens: list[Token]
    prefill: list[dict]
    done: Done

    def details(self, top_n: int) -> dict:
        out = {
            "finish_reason": self.done.finish_reason,
            "generated_tokens": self.done.generated_tokens,
            "seed": self.done.seed,
            "prefill": self.prefill,
            "tokens": [_token_json(t) for t in self.tokens],
        }
        if top_n:
            out["top_tokens"] = [_top_json(t) for t in self.tokens]
        return out


async def _collect(state: ServerState, request: Request, gen: GenerationRequest) -> Finished | None:
    """One sequence run to its end, or None if the client disconnected."""
    tokens, prefill = [], []
    async for event in run_sequence(state, request, gen):
        if isinstance(event, Failed):
            raise HTTPError(424, event.message, event.error_type)
        if isinstance(event, Prefill):
            prefill = [{"id": i, "text": t, "logprob": lp} for i, t, lp in event.tokens]
        if isinstance(event, Token):
            tokens.append(event)
            if event.done is not None:
                return Finished(tokens, prefill, event.done)
    return None


async def _generate(state: ServerState, request: Request, req: GenerateRequest) -> tuple[dict, dict] | None:
    """Run one request to its end: (body, headers), or None if the client disconnected."""
    permit = Permit(state)
    try:
        # Tokenizing a long prompt must not stall the event loop that feeds every other stream.
        gen = await asyncio.to_thread(validate_generate, req, state.served.tokenizer, state.limits, False)
        start = time.perf_counter()
        # best_of: that many samples, each with its own random seed, decoded together in the batch; the
        # answer is the likeliest (highest sum of token logprobs), the rest go to best_of_sequences (TGI).
        runs = [gen] + [
            replace(gen, sampling=replace(gen.sampling, seed=random.getrandbits(63))) for _ in range(gen.best_of - 1)
        ]
        results = await asyncio.gather(*(_collect(state, request, g) for g in runs))
        if any(r is None for r in results):
            return None
        results.sort(key=lambda r: -sum(-math.inf if t.logprob is None else t.logprob for t in r.tokens))
        best = results[0]
        elapsed = time.perf_counter() - start
        state.metrics.duration.observe(elapsed)

        def text_of(r: Finished) -> str:
            return req.inputs + r.done.generated_text if req.parameters.return_full_text else r.done.generated_text

        body: dict = {"generated_text": text_of(best)}
        if req.parameters.details:
            body["details"] = best.details(gen.top_n_tokens)
            if len(results) > 1:
                body["details"]["best_of_sequences"] = [
                    {"generated_text": text_of(r), **r.details(gen.top_n_tokens)} for r in results[1:]
                ]
        headers = {
            "x-compute-type": state.served.device.type,
            "x-compute-time": f"{elapsed:.6f}",
            "x-time-per-token": f"{elapsed / max(best.done.generated_tokens, 1):.6f}",
            "x-prompt-tokens": str(best.done.input_length),
            "x-generated-tokens": str(best.done.generated_tokens),
        }
        return body, headers
    finally:
        permit.release()


def _token_json(t: Token) -> dict:
    return {"id": t.id, "text": t.text, "logprob": t.logprob, "special": t.special}


def _top_json(t: Token) -> list[dict]:
    return [{"id": i, "text": s, "logprob": lp, "special": False} for i, s, lp in t.top]


# --- /generate_stream -------------------------------------------------------------------------------------


async def _generate_stream(state: ServerState, request: Request, req: GenerateRequest) -> EventStream:
    # Validation and the concurrency limit answer with a status code before the stream starts, so every
    # client raises its own error class (TGI sends these in-band with status 200).
    permit = Permit(state)
    try:
        gen = await asyncio.to_thread(validate_generate, req, state.served.tokenizer, state.limits, True)
    except BaseException:
        permit.release()
        raise

    async def events():
        start = time.perf_counter()
        try:
            index = 0
            async for event in run_sequence(state, request, gen):
                if isinstance(event, Failed):
                    yield sse({"error": event.message, "error_type": event.error_type})
                    return
                if not isinstance(event, Token):
                    continue
                index += 1
                if index == 1:
                    state.metrics.first_token.observe(time.perf_counter() - start)
                out = {
                    "index": index,
                    "token": _token_json(event),
                    "top_tokens": _top_json(event) if gen.top_n_tokens else None,
                    "generated_text": None,
                    "details": None,
                }
                if event.done is not None:
                    text = event.done.generated_text
                    out["generated_text"] = req.inputs + text if req.parameters.return_full_text else text
                    out["details"] = {
                        "finish_reason": event.done.finish_reason,
                        "generated_tokens": event.done.generated_tokens,
                        "seed": event.done.seed,
                        "input_length": event.done.input_length,
                    }
                    state.metrics.duration.observe(time.perf_counter() - start)
                yield sse(out)
        finally:
            permit.release()

    return EventStream(events(), permit)


# --- /tokenize --------------------------------------------------------------------------------------------


def _tokenize(tokenizer, text: str, add_special_tokens: bool) -> list[dict]:
    """TGI's SimpleToken list. Offsets come from the fast tokenizer, or else from decoding prefixes."""
    enc = tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=tokenizer.is_fast)
    ids = enc["input_ids"]
    if tokenizer.is_fast:
        spans = enc["offset_mapping"]
    else:
        # Each token ends where the decoded prefix ends. Byte-fallback tokens (<0xE6><0x97><0xA5> for 日)
        # decode to an incomplete character until the last one: all of them get that character's span, as
        # the fast tokenizer's offsets give.
        spans, stop, waiting = [], 0, 0
        for k in range(len(ids)):
            decoded = tokenizer.decode(ids[: k + 1], skip_special_tokens=True)
            if decoded.endswith("\ufffd") and k + 1 < len(ids):
                waiting += 1
                continue
            end = max(min(len(decoded.rstrip("\ufffd")), len(text)), stop)
            spans += [(stop, end)] * (waiting + 1)
            stop, waiting = end, 0
    return [{"id": i, "text": text[a:b], "start": a, "stop": b} for i, (a, b) in zip(ids, spans, strict=True)]
