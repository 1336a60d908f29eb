"""Where completions come from: a local model or any served endpoint, behind one small interface.

A backend takes prompt *text* (no BOS string; see `camelid.eval.prompting`) and does two things:
`generate` (one completion per prompt, cut at the first stop string) and `candidate_logprobs` (the
next-token log-probabilities of a few candidate tokens, for MMLU). Both backends tokenize with the same
tokenizer and the same rule (the tokenizer's special tokens, i.e. one BOS for LLaMA), so a task's prompts,
extraction and scores are the same either way.

- `LocalBackend`: `camelid.load`'s model. Scoring and generation share prefix KV caches
  (`camelid.eval.prefix`); generation goes through `_generate_local`, the one place that calls the
  runtime's batch generation.
- `RemoteBackend`: TGI `/generate` (also `camelid serve`) or OpenAI-compatible `/v1/completions` (vLLM,
  `camelid serve`). MMLU there reads the server's top-5 next-token logprobs, and the prompt logprobs of
  prompt + candidate where no candidate is among them (`candidate_logprobs`).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

from camelid.errors import CamelidError
from camelid.runtime.stops import cut_at_stop


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class Candidate:
    text: str  # as appended to the prompt, e.g. " A"
    token_id: int


class Backend(Protocol):
    tokenizer: object

    def describe(self) -> dict: ...

    def generate(self, prompts: Sequence[str], gen: GenerationSettings, seeds: Sequence[int]) -> list[str]: ...

    def candidate_logprobs(self, prompts: Sequence[str], candidates: Sequence[Candidate]) -> list[list[float | None]]:
        """Per prompt, each candidate's next-token logprob (log-softmax over the whole vocabulary); None
        where a server did not report it (then it is below every reported value)."""
        ...


def prompt_ids(tokenizer, prompt: str) -> list[int]:
    return tokenizer(prompt, add_special_tokens=True)["input_ids"]


# --- local -----------------------------------------------------------------------------------------------


# Prompts per call of the runtime's batch generation (each row holds its own KV cache).
GENERATION_BATCH = 8
# Shorter common prefixes are not worth a forward of their own (a chat header, a BOS): they run with the prompt.
MIN_SHARED_PREFIX = 32


def _generate_local(model, tokenizer, prompts: list[list[int]], gen: GenerationSettings, seed: int,
                    eos: frozenset[int], prefix=None) -> list[str]:
    """Completions of token-id prompts that share one seed, by the runtime's batch generation
    (`camelid.runtime.generate.generate`: the sampler and stop matcher `camelid serve` uses), each cut
    before its first stop string and keeping its first token's leading space, as open-instruct's
    `decode(prompt + output)[len(decode(prompt)):]` does. With `prefix` (a `camelid.eval.prefix.SharedPrefix`
    every prompt starts with) each batch's prefill runs only the prompts' suffixes."""
    from functools import partial

    from camelid.eval.prefix import prefill_after
    from camelid.runtime.batch import prefill as full_prefill
    from camelid.runtime.generate import generate
    from camelid.runtime.sampling import SamplingParams
    from camelid.runtime.stops import Stops

    params = SamplingParams(temperature=gen.temperature, top_p=gen.top_p if gen.temperature > 0 else 1.0, seed=seed)
    stops = Stops.of(eos, gen.stop)
    prefill = full_prefill if prefix is None else partial(prefill_after, prefix=prefix)
    # Batches of similar lengths pad little. (Padding changes matmul shapes, so a row's floats, and rarely a
    # greedy tie, can depend on its batch: a resumed run may batch differently.)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out = [""] * len(prompts)
    for start in range(0, len(order), GENERATION_BATCH):
        rows = order[start:start + GENERATION_BATCH]
        done = generate(model, tokenizer, [prompts[i] for i in rows], params, stops, gen.max_new_tokens,
                        prefill=prefill)
        for i, c in zip(rows, done, strict=True):
            out[i] = c.text
    return out


class LocalBackend:
    def __init__(self, model, tokenizer, name: str = "", revision: str | None = None) -> None:
        from camelid.runtime.stops import eos_token_ids

        self.model, self.tokenizer, self.name, self.revision = model, tokenizer, name, revision
        self.eos = eos_token_ids(model, tokenizer)
        self.context_limit = getattr(model.config, "max_position_embeddings", None)
        self._prefix = None  # the last shared prefix: a task's chunks (GSM8K, one BBH task) all start with it

    def describe(self) -> dict:
        p = next(self.model.parameters())
        return {"backend": "local", "model": self.name, "revision": self.revision,
                "dtype": str(p.dtype).removeprefix("torch."), "device": str(p.device)}

    def generate(self, prompts, gen, seeds):
        ids = [prompt_ids(self.tokenizer, p) for p in prompts]
        out = [""] * len(prompts)
        # A prompt the model cannot hold gets an empty completion (as open-instruct's vLLM path does); the
        # rest are generated in batches of one seed each (a row's tokens depend on its seed only).
        by_seed: dict[int, list[int]] = {}
        for i, (row, seed) in enumerate(zip(ids, seeds, strict=True)):
            if self.context_limit is None or len(row) < self.context_limit:
                by_seed.setdefault(seed, []).append(i)
        for seed, rows in by_seed.items():
            group = [ids[i] for i in rows]
            texts = _generate_local(self.model, self.tokenizer, group, gen, seed, self.eos, self._prefix_of(group))
            for i, text in zip(rows, texts, strict=True):
                out[i] = text
        return out

    def _prefix_of(self, id_lists: list[list[int]]):
        """The KV cache of the prompts' common prefix (kept for the next call if it starts the same way), or
        None when that prefix is short."""
        from camelid.eval.prefix import common_prefix_length, shared_prefix

        if self._prefix is not None and self._prefix.starts(id_lists):
            return self._prefix
        shared = min(common_prefix_length(id_lists), min(len(ids) for ids in id_lists) - 1)
        if len(id_lists) < 2 or shared < MIN_SHARED_PREFIX:  # one prompt alone shares nothing
            return None
        self._prefix = shared_prefix(self.model, id_lists[0][:shared])
        return self._prefix

    def candidate_logprobs(self, prompts, candidates):
        from camelid.eval.prefix import next_token_logprobs

        ids = [prompt_ids(self.tokenizer, p) for p in prompts]
        return next_token_logprobs(self.model, ids, [c.token_id for c in candidates]).tolist()


# --- remote ----------------------------------------------------------------------------------------------


class RemoteBackend:
    """`api="tgi"`: POST {url}/generate; `api="openai"`: POST {url}/completions with url ending in /v1."""

    def __init__(self, url: str, tokenizer, api: str | None = None, model: str | None = None,
                 api_key: str | None = None, workers: int = 8, timeout: float = 600.0) -> None:
        self.url = url.rstrip("/")
        self.api = api or ("openai" if self.url.endswith("/v1") else "tgi")
        if self.api not in ("tgi", "openai"):
            raise CamelidError(f"unknown endpoint API {self.api!r}; use tgi or openai")
        self.tokenizer, self.model, self.api_key = tokenizer, model, api_key
        self.workers, self.timeout = workers, timeout
        self.info = self._info()
        self.context_limit = self.info.get("max_total_tokens")
        self.max_stop = self.info.get("max_stop_sequences", 4)

    def _post(self, path: str, body: dict) -> dict:
        headers = {"content-type": "application/json"}
        if self.api_key:
            headers["authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(), headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            detail = e.read().decode(errors="replace")[:500]
            raise CamelidError(f"{self.url}{path}: HTTP {e.code}: {detail}") from None
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise CamelidError(f"{self.url}{path}: {e}") from None

    def _info(self) -> dict:
        # TGI (and camelid serve) report their limits on /info; OpenAI-compatible servers may not.
        base = self.url.removesuffix("/v1")
        try:
            with urllib.request.urlopen(base + "/info", timeout=30) as r:
                return json.loads(r.read())
        except (urllib.error.URLError, OSError, ValueError):
            if self.api == "tgi":
                raise CamelidError(f"{base}/info: no TGI endpoint answers there") from None
            return {}

    def describe(self) -> dict:
        return {"backend": "remote", "endpoint": self.url, "api": self.api,
                "model": self.model or self.info.get("model_id"), "server": self.info.get("router")}

    def _map(self, fn, items):
        with ThreadPoolExecutor(self.workers) as pool:
            return list(pool.map(fn, items))

    def _max_new(self, prompt: str, gen: GenerationSettings) -> int:
        if self.context_limit is None:
            return gen.max_new_tokens
        return min(gen.max_new_tokens, self.context_limit - len(prompt_ids(self.tokenizer, prompt)))

    def generate(self, prompts, gen, seeds):
        def one(args) -> str:
            prompt, seed = args
            max_new = self._max_new(prompt, gen)
            if max_new < 1:
                return ""  # the prompt does not fit the server's context, as LocalBackend
            # Servers cap the number of stop strings (TGI: 4); the rest are cut here.
            stop = list(gen.stop[: self.max_stop])
            if self.api == "tgi":
                params = {"max_new_tokens": max_new, "do_sample": gen.temperature > 0, "stop": stop, "seed": seed}
                if gen.temperature > 0:  # TGI samples whenever a warper is set: greedy sends none
                    params["temperature"] = gen.temperature
                    if gen.top_p < 1:
                        params["top_p"] = gen.top_p
                text = self._post("/generate", {"inputs": prompt, "parameters": params})["generated_text"]
            else:
                body = {"prompt": prompt, "max_tokens": max_new, "temperature": gen.temperature,
                        "top_p": gen.top_p if gen.temperature > 0 else None, "stop": stop or None, "seed": seed}
                text = self._completion({k: v for k, v in body.items() if v is not None})[0]["text"]
            return cut_at_stop(text, gen.stop)

        return self._map(one, list(zip(prompts, seeds, strict=True)))

    def candidate_logprobs(self, prompts, candidates):
        """Exact argmax from the top-n list: a candidate absent from it is below every listed token. If no
        candidate is listed (a small model), each candidate's logprob is read from the prompt logprobs of
        prompt + candidate (TGI `decoder_input_details`; OpenAI `echo` with `logprobs`, as lm-evaluation-harness
        scores loglikelihoods through completions endpoints)."""
        def one(prompt: str) -> list[float | None]:
            row = self._top_logprobs(prompt, candidates)
            if all(v is None for v in row):
                row = [self._prompt_end_logprob(prompt, c) for c in candidates]
            return row

        return self._map(one, list(prompts))

    def _top_logprobs(self, prompt: str, candidates: Sequence[Candidate]) -> list[float | None]:
        if self.api == "tgi":
            params = {"max_new_tokens": 1, "do_sample": False, "details": True, "top_n_tokens": 5}
            details = self._post("/generate", {"inputs": prompt, "parameters": params})["details"]
            top = {t["id"]: t["logprob"] for t in details["top_tokens"][0]}
            return [top.get(c.token_id) for c in candidates]
        choice = self._completion({"prompt": prompt, "max_tokens": 1, "temperature": 0, "logprobs": 5})[0]
        try:
            top = choice["logprobs"]["top_logprobs"][0]
        except (KeyError, TypeError, IndexError):
            raise CamelidError(f"{self.url}/completions returned no token logprobs; score MMLU through the "
                               "server's TGI route instead (--api tgi)") from None
        # The key is the token's text after the prompt (" A", vLLM and camelid) or its vocabulary piece
        # ("▁A", early vLLM's convert_ids_to_tokens).
        pieces = self.tokenizer.convert_ids_to_tokens([c.token_id for c in candidates])
        return [top.get(c.text, top.get(piece)) for c, piece in zip(candidates, pieces, strict=True)]

    def _completion(self, body: dict) -> tuple[dict, dict]:
        """(first choice, usage) of a /v1/completions call."""
        if self.model:
            body = {**body, "model": self.model}
        reply = self._post("/completions", body)
        try:
            return reply["choices"][0], reply.get("usage") or {}
        except (KeyError, TypeError, IndexError):
            raise CamelidError(f"{self.url}/completions: no choices in the reply") from None

    def _prompt_end_logprob(self, prompt: str, cand: Candidate) -> float:
        """The logprob of the last prompt token of prompt + candidate, which must be the candidate's token."""
        ids = prompt_ids(self.tokenizer, prompt + cand.text)
        if ids[-1] != cand.token_id:
            raise CamelidError(f"prompt + {cand.text!r} does not end in token {cand.token_id}")
        if self.api == "tgi":
            params = {"max_new_tokens": 1, "do_sample": False, "details": True, "decoder_input_details": True}
            prefill = self._post("/generate", {"inputs": prompt + cand.text, "parameters": params})["details"]["prefill"]
            if prefill[-1]["id"] != cand.token_id:
                raise CamelidError(f"prompt + {cand.text!r} does not end in token {cand.token_id} on the server")
            return prefill[-1]["logprob"]
        body = {"prompt": prompt + cand.text, "max_tokens": 1, "temperature": 0, "logprobs": 0, "echo": True}
        choice, usage = self._completion(body)
        try:
            logprobs = choice["logprobs"]["token_logprobs"]
        except (KeyError, TypeError):
            raise CamelidError(f"{self.url}/completions returned no prompt logprobs for echo; score MMLU "
                               "through the server's TGI route instead (--api tgi)") from None
        # The echoed prompt's tokens come first; the server must have tokenized it as we do.
        if usage.get("prompt_tokens") != len(ids) or len(logprobs) <= len(ids) - 1:
            raise CamelidError(f"{self.url}/completions tokenized prompt + {cand.text!r} into "
                               f"{usage.get('prompt_tokens')} tokens, the eval's tokenizer into {len(ids)}")
        return logprobs[len(ids) - 1]
