"""OpenAI routes: /v1/chat/completions (chat template applied), /v1/completions, /v1/models.

Requests map onto the same `GenerationRequest` and the same TGI rules as /generate, with OpenAI's
conventions on top: temperature 0 means greedy and top_p 1 means off (as TGI's chat route does),
stop sequences are cut from the returned text, and streams end with `data: [DONE]`.

/v1/completions answers `logprobs` (0-5) and `echo` in OpenAI's legacy format (`tokens`, `token_logprobs`,
`top_logprobs` as one {token text: logprob} dict per position, `text_offset` in characters from the
start of the prompt), as OpenAI's API reference and vLLM's `serving_completion.py` do. A token's text is
what it adds after the tokens before it (SentencePiece's leading space kept, so " A" is not "A"). With
`echo` the prompt's tokens come first, their logprobs from the prefill (TGI's `decoder_input_details`);
the first has none, and a prompt position's top dict holds its own token only (the scheduler's prefill
reports no alternatives). Neither is offered on streams.
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
from camelid.runtime.detokenize import decode_generated
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
from camelid.serve.scheduler import Failed, Prefill, Token
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
    logprobs: int | None = Field(default=None, ge=0, le=5)  # OpenAI's legacy limit


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
        if req.stream and (req.echo or req.logprobs is not None):
            raise ValidationError("`echo` and `logprobs` are not supported when streaming")
        ids = (await asyncio.to_thread(served.tokenizer, prompts[0]))["input_ids"]
        # OpenAI's default for this legacy route is 16 new tokens.
        gen = to_generation(req, ids, req.max_tokens or 16, state, req.logprobs or 0)
        gen.decoder_input_details = req.echo and req.logprobs is not None
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
        prefill: list[tuple[int, str, float | None]] = []
        async for event in run_sequence(state, request, gen):
            if isinstance(event, Failed):
                raise HTTPError(424, event.message, event.error_type, openai=True)
            if isinstance(event, Prefill):
                prefill = event.tokens
                continue
            tokens.append(event)
        if not tokens or tokens[-1].done is None:
            return JSONResponse({}, status_code=499)  # the client is gone
        done = tokens[-1].done
        text = cut_at_stop(done.generated_text, gen.stop)
        if chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}}
            choice["logprobs"] = {"content": [_logprob(t) for t in tokens]} if gen.top_n_tokens or req.logprobs else None
        else:
            prompt = req.prompt if isinstance(req.prompt, str) else req.prompt[0]
            logprobs = None
            if req.logprobs is not None:
                logprobs = _legacy_logprobs(state.served.tokenizer, gen.input_ids, prefill, tokens, len(prompt))
            choice = {"index": 0, "text": prompt + text if req.echo else text, "logprobs": logprobs}
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


def _token_text(tokenizer, special: set[int], context: list[int], token_id: int) -> str:
    """What `token_id` adds to the text after `context`; a special token's own name (e.g. "</s>")."""
    if token_id in special:
        return tokenizer.convert_ids_to_tokens(token_id)
    return decode_generated(tokenizer, context, [token_id])


def _legacy_logprobs(tokenizer, prompt_ids: list[int], prefill: list, tokens: list[Token], prompt_chars: int) -> dict:
    """OpenAI's completions `logprobs` object over the echoed prompt (`prefill`, empty without echo) and the
    generated tokens. Where two tokens of a top list read the same, the likelier one is kept. Special
    tokens (BOS, EOS) are not in the returned text, so they take no characters of `text_offset`."""
    out: dict[str, list] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    special = set(tokenizer.all_special_ids)
    offset = 0 if prefill else prompt_chars

    def add(token_id: int, text: str, logprob: float | None, top: dict | None) -> None:
        nonlocal offset
        out["tokens"].append(text)
        out["token_logprobs"].append(logprob)
        out["top_logprobs"].append(top)
        out["text_offset"].append(offset)
        offset += 0 if token_id in special else len(text)

    for k, (token_id, _, logprob) in enumerate(prefill):
        text = _token_text(tokenizer, special, prompt_ids[:k], token_id)
        add(token_id, text, logprob, None if k == 0 else {text: logprob})
    context = list(prompt_ids)
    for t in tokens:
        top: dict[str, float | None] = {}
        for alt, _, lp in t.top:  # most likely first
            top.setdefault(_token_text(tokenizer, special, context, alt), lp)
        add(t.id, _token_text(tokenizer, special, context, t.id), t.logprob, top)
        context.append(t.id)
    return out


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
