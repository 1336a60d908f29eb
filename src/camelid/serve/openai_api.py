"""OpenAI routes: /v1/chat/completions (chat template applied), /v1/completions, /v1/models.

Requests map onto the same `GenerationRequest` and the same TGI rules as /generate, with OpenAI's
conventions on top: temperature 0 means greedy and top_p 1 means off (as TGI's chat route does),
stop sequences are cut from the returned text, and streams end with `data: [DONE]`.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from camelid import __version__
from camelid.runtime.stops import StopMatcher, Stops, cut_at_stop
from camelid.serve.engine import chat_stop_strings, render_chat
from camelid.serve.gateway import (
    EventStream,
    HTTPError,
    Permit,
    ServerState,
    read_json,
    run_sequence,
    sse,
)
from camelid.serve.scheduler import Failed, Token
from camelid.serve.validation import (
    GenerationRequest,
    ValidationError,
    check_length,
    check_sampling,
    check_stop,
)

FINISH = {"eos_token": "stop", "stop_sequence": "stop", "length": "length"}


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    role: Literal["system", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    def as_dict(self) -> dict:
        text = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        return {"role": self.role, "content": text}


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    include_usage: bool = False


class _Sampling(BaseModel):
    """Fields both OpenAI routes share. Unknown fields (tools, logit_bias, ...) are refused with 422, and so
    are NaN/Infinity (not JSON numbers)."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)
    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=0, lt=2**64)
    n: int | None = Field(default=None, ge=1, le=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None


class ChatRequest(_Sampling):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=5)


class CompletionRequest(_Sampling):
    prompt: str | list[str]
    echo: bool = False


def to_generation(req: _Sampling, input_ids: list[int], max_tokens: int | None, state: ServerState, top_n=0):
    if req.presence_penalty:
        raise ValidationError("`presence_penalty` is not supported")
    greedy = req.temperature == 0.0
    sampling = check_sampling(
        do_sample=not greedy,
        temperature=None if greedy else req.temperature,
        top_k=None,
        top_p=None if req.top_p is None or req.top_p >= 1.0 else req.top_p,
        typical_p=None,
        repetition_penalty=None,
        frequency_penalty=req.frequency_penalty,
        seed=req.seed,
    )
    stop = check_stop([req.stop] if isinstance(req.stop, str) else list(req.stop or []), state.limits)
    max_new = check_length(input_ids, max_tokens, state.limits)
    return GenerationRequest(input_ids, sampling, max_new, stop, top_n_tokens=top_n)


def add_routes(app: FastAPI, state: ServerState) -> None:
    served = state.served

    @app.get("/v1/models")
    async def models(request: Request):
        return {"object": "list", "data": [_model_card(served.model_id)]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        req = await read_json(state, request, ChatRequest, openai=True)
        ids = await asyncio.to_thread(render_chat, served, [m.as_dict() for m in req.messages])
        top_n = (req.top_logprobs or 0) if req.logprobs else 0
        gen = to_generation(req, ids, req.max_completion_tokens or req.max_tokens, state, top_n)
        gen.stop += chat_stop_strings(served)  # the template's end-of-turn strings; not the client's quota
        return await _respond(state, request, req, gen, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request):
        req = await read_json(state, request, CompletionRequest, openai=True)
        prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
        if len(prompts) != 1:
            raise ValidationError("`prompt` must be one string")
        if req.echo:
            raise ValidationError("`echo` is not supported")
        ids = (await asyncio.to_thread(served.tokenizer, prompts[0]))["input_ids"]
        # OpenAI's default for this legacy route is 16 new tokens.
        gen = to_generation(req, ids, req.max_tokens or 16, state)
        return await _respond(state, request, req, gen, chat=False)


def _model_card(model_id: str) -> dict:
    return {"id": model_id, "object": "model", "created": 0, "owned_by": "camelid"}


async def _respond(state: ServerState, request: Request, req: _Sampling, gen: GenerationRequest, chat: bool):
    permit = Permit(state, openai=True)
    meta = {
        "id": ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex,
        "created": int(time.time()),
        "model": req.model or state.served.model_id,
        "system_fingerprint": f"camelid-{__version__}",
    }
    if req.stream:
        return EventStream(_stream(state, request, req, gen, chat, meta, permit), permit)
    try:
        tokens: list[Token] = []
        async for event in run_sequence(state, request, gen):
            if isinstance(event, Failed):
                raise HTTPError(424, event.message, event.error_type, openai=True)
            tokens.append(event)
        if not tokens or tokens[-1].done is None:
            return JSONResponse({}, status_code=499)  # the client is gone
        done = tokens[-1].done
        text = cut_at_stop(done.generated_text, gen.stop)
        if chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}}
            choice["logprobs"] = {"content": [_logprob(t) for t in tokens]} if gen.top_n_tokens or req.logprobs else None
        else:
            choice = {"index": 0, "text": text, "logprobs": None}
        choice["finish_reason"] = FINISH[done.finish_reason]
        usage = {
            "prompt_tokens": done.input_length,
            "completion_tokens": done.generated_tokens,
            "total_tokens": done.input_length + done.generated_tokens,
        }
        kind = "chat.completion" if chat else "text_completion"
        return {**meta, "object": kind, "choices": [choice], "usage": usage}
    finally:
        permit.release()


def _logprob(t: Token) -> dict:
    return {
        "token": t.text,
        "logprob": t.logprob,
        "bytes": list(t.text.encode()),
        "top_logprobs": [{"token": s, "logprob": lp, "bytes": list(s.encode())} for _, s, lp in t.top],
    }


async def _stream(state, request, req: _Sampling, gen: GenerationRequest, chat: bool, meta: dict, permit: Permit):
    kind = "chat.completion.chunk" if chat else "text_completion"
    # Stop strings are cut from the text; what could still become one is held back (TGI sends them).
    stops = StopMatcher(Stops.of(strings=gen.stop))
    try:
        first = True
        async for event in run_sequence(state, request, gen):
            if isinstance(event, Failed):
                yield sse({"error": {"message": event.message, "http_status_code": 424}}, space=True)
                return
            text = stops.push(event.id, "" if event.special else event.text)
            if event.done is not None:
                text += stops.flush()
            finish = FINISH[event.done.finish_reason] if event.done else None
            if chat:
                delta = {"role": "assistant", "content": text} if first else {"content": text}
                logprobs = {"content": [_logprob(event)]} if getattr(req, "logprobs", False) else None
                choice = {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
            else:
                choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
            first = False
            yield sse({**meta, "object": kind, "choices": [choice]}, space=True)
            if event.done and req.stream_options and req.stream_options.include_usage:
                n_in, n_out = event.done.input_length, event.done.generated_tokens
                usage = {"prompt_tokens": n_in, "completion_tokens": n_out, "total_tokens": n_in + n_out}
                yield sse({**meta, "object": kind, "choices": [], "usage": usage}, space=True)
        yield "data: [DONE]\n\n"
    finally:
        permit.release()
