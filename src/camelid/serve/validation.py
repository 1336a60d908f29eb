"""TGI's request schema and validation rules (router/src/validation.rs), turned into a `GenerationRequest`.

Messages are TGI's word for word so clients and users see the same text from camelid serve as from TGI.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field

from camelid.errors import CamelidError
from camelid.runtime.sampling import SamplingParams, as_float32


class ValidationError(CamelidError):
    """A request TGI would refuse: HTTP 422, error_type "validation"."""

    def __str__(self) -> str:
        return f"Input validation error: {self.args[0]}"


# --- what the scheduler runs ---------------------------------------------------------------------------


@dataclass
class GenerationRequest:
    input_ids: list[int]
    sampling: SamplingParams
    max_new_tokens: int
    stop: list[str] = field(default_factory=list)
    decoder_input_details: bool = False
    top_n_tokens: int = 0
    best_of: int = 1  # run this many samples, answer with the likeliest (the HTTP layer fans out)


@dataclass(frozen=True)
class Limits:
    """The launcher's bounds (TGI flag names)."""

    max_input_tokens: int
    max_total_tokens: int
    max_stop_sequences: int = 4
    max_top_n_tokens: int = 5
    max_best_of: int = 2
    max_batch_prefill_tokens: int = 4096
    max_concurrent_requests: int = 128


# --- TGI's JSON schema -----------------------------------------------------------------------------------


class GenerateParameters(BaseModel):
    # Unknown fields and wrong JSON types are refused (422), as serde does in TGI's router; so are NaN and
    # Infinity, which serde_json does not parse as numbers at all.
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    best_of: int | None = Field(default=None, ge=0)
    temperature: float | None = None
    repetition_penalty: float | None = None
    frequency_penalty: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    typical_p: float | None = None
    do_sample: bool = False
    max_new_tokens: int | None = Field(default=None, ge=0)
    return_full_text: bool | None = None
    stop: list[str] = Field(default_factory=list)
    truncate: int | None = Field(default=None, ge=0)
    watermark: bool = False
    details: bool = False
    decoder_input_details: bool = False
    seed: int | None = Field(default=None, ge=0, lt=2**64)
    top_n_tokens: int | None = Field(default=None, ge=0)
    grammar: dict | None = None
    adapter_id: str | None = None


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    inputs: str
    # TGI: with `parameters` omitted entirely, do_sample defaults to true (default_parameters()).
    parameters: GenerateParameters = Field(default_factory=lambda: GenerateParameters(do_sample=True))
    stream: bool = False
    add_special_tokens: bool = True


# --- rules ------------------------------------------------------------------------------------------------


def check_sampling(
    *,
    do_sample: bool,
    temperature: float | None,
    top_k: int | None,
    top_p: float | None,
    typical_p: float | None,
    repetition_penalty: float | None,
    frequency_penalty: float | None,
    seed: int | None,
) -> SamplingParams:
    """TGI's parameter checks, in TGI's order; a missing seed gets a random one (reported in details)."""
    # Range checks on the values as the fp32 sampler sees them: 1e-300 is 0 there (a division by zero in
    # the batch step), 1e300 is inf.
    temperature = 1.0 if temperature is None else temperature
    if not 0.0 < as_float32(temperature) < float("inf"):  # also refuses NaN, which compares false
        raise ValidationError("`temperature` must be strictly positive")
    repetition_penalty = 1.0 if repetition_penalty is None else repetition_penalty
    if not 0.0 < as_float32(repetition_penalty) < float("inf"):
        raise ValidationError("`repetition_penalty` must be strictly positive")
    frequency_penalty = 0.0 if frequency_penalty is None else frequency_penalty
    if not -2.0 <= frequency_penalty <= 2.0:
        raise ValidationError("`frequency_penalty` must be >= -2.0 and <= 2.0")
    if top_p is not None and not 0.0 < top_p < 1.0:
        raise ValidationError("`top_p` must be > 0.0 and < 1.0")
    if typical_p is not None and not 0.0 < typical_p < 1.0:
        raise ValidationError("`typical_p` must be > 0.0 and < 1.0")
    if top_k is not None and top_k <= 0:
        raise ValidationError("`top_k` must be strictly positive")
    top_k, top_p, typical_p = top_k or 0, 1.0 if top_p is None else top_p, 1.0 if typical_p is None else typical_p
    # TGI's server samples whenever a warper is active, whatever do_sample says (utils/tokens.py); otherwise
    # it is greedy, which camelid.runtime spells temperature 0.
    sample = do_sample or temperature != 1.0 or top_k != 0 or top_p < 1.0 or typical_p < 1.0
    return SamplingParams(
        temperature=temperature if sample else 0.0,
        top_k=top_k,
        top_p=top_p,
        typical_p=typical_p,
        repetition_penalty=repetition_penalty,
        frequency_penalty=frequency_penalty,
        seed=random.getrandbits(63) if seed is None else seed,
    )


def check_length(input_ids: list[int], max_new_tokens: int | None, limits: Limits) -> int:
    """Total, then input length (TGI's order); returns max_new_tokens with TGI's default filled in."""
    n = len(input_ids)
    if max_new_tokens is None:
        max_new_tokens = max(limits.max_total_tokens - n, 0)
    if n + max_new_tokens > limits.max_total_tokens:
        raise ValidationError(
            f"`inputs` tokens + `max_new_tokens` must be <= {limits.max_total_tokens}. "
            f"Given: {n} `inputs` tokens and {max_new_tokens} `max_new_tokens`"
        )
    if n > limits.max_input_tokens:
        raise ValidationError(f"`inputs` must have less than {limits.max_input_tokens} tokens. Given: {n}")
    return max_new_tokens


def check_stop(stop: list[str], limits: Limits) -> list[str]:
    if len(stop) > limits.max_stop_sequences:
        raise ValidationError(
            f"`stop` supports up to {limits.max_stop_sequences} stop sequences. Given: {len(stop)}"
        )
    return stop


def validate_generate(req: GenerateRequest, tokenizer, limits: Limits, stream: bool) -> GenerationRequest:
    """A TGI /generate body -> what the scheduler runs, or ValidationError with TGI's message."""
    p = req.parameters
    if stream and (p.best_of or 1) != 1:
        raise ValidationError("`best_of` != 1 is not supported when streaming tokens")
    if stream and p.decoder_input_details:
        raise ValidationError("`decoder_input_details` == true is not supported when streaming tokens")
    best_of = 1 if p.best_of is None else p.best_of
    if limits.max_best_of == 1 and best_of != 1:
        raise ValidationError("`best_of` != 1 is not allowed for this endpoint")
    if not 0 < best_of <= limits.max_best_of:
        raise ValidationError(f"`best_of` must be > 0 and <= {limits.max_best_of}. Given: {best_of}")
    if p.watermark:
        raise ValidationError("`watermark` is not supported")
    if p.grammar is not None:
        raise ValidationError("grammar is not supported")
    if p.adapter_id is not None:
        raise ValidationError("`adapter_id` is not supported")
    if best_of > 1 and not (p.do_sample or p.temperature is not None or p.top_k is not None
                            or p.top_p is not None or p.typical_p is not None):
        raise ValidationError("you must use sampling when `best_of` is > 1")
    sampling = check_sampling(
        do_sample=p.do_sample,
        temperature=p.temperature,
        top_k=p.top_k,
        top_p=p.top_p,
        typical_p=p.typical_p,
        repetition_penalty=p.repetition_penalty,
        frequency_penalty=p.frequency_penalty,
        seed=p.seed,
    )
    if p.max_new_tokens == 0:
        raise ValidationError("`max_new_tokens` must be strictly positive")
    stop = check_stop(p.stop, limits)
    if best_of > 1 and p.seed is not None:
        raise ValidationError("`seed` must not be set when `best_of` > 1")
    top_n = p.top_n_tokens or 0
    if top_n > limits.max_top_n_tokens:
        raise ValidationError(f"`top_n_tokens` must be >= 0 and <= {limits.max_top_n_tokens}. Given: {top_n}")
    if not req.inputs:
        raise ValidationError("`inputs` cannot be empty")
    if p.truncate is not None and (p.truncate == 0 or p.truncate > limits.max_input_tokens):
        raise ValidationError(
            f"`truncate` must be strictly positive and less than {limits.max_input_tokens}. Given: {p.truncate}"
        )
    ids = tokenizer(req.inputs, add_special_tokens=req.add_special_tokens)["input_ids"]
    if p.truncate is not None:
        ids = ids[-p.truncate :]
    max_new = check_length(ids, p.max_new_tokens, limits)
    return GenerationRequest(
        input_ids=list(ids),
        sampling=sampling,
        max_new_tokens=max_new,
        stop=stop,
        decoder_input_details=p.decoder_input_details,
        top_n_tokens=top_n,
        best_of=best_of,
    )
