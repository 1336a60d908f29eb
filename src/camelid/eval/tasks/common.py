"""What the generative tasks share: greedy settings with the late-2023 stop rule, and exact-match scoring."""

from __future__ import annotations

from collections.abc import Callable

from camelid.eval.backends import GenerationSettings
from camelid.eval.metrics import exact_match_one
from camelid.eval.prompting import is_chat, task_template


def greedy(settings, max_new_tokens: int, plain_stop: tuple[str, ...]) -> GenerationSettings:
    """Greedy decoding; the stop strings only without the chat format (open-instruct bb45970b: a chat model
    is trusted to stop at EOS)."""
    return GenerationSettings(max_new_tokens=settings.max_new_tokens or max_new_tokens, temperature=0.0,
                              stop=() if is_chat(task_template(settings)) else plain_stop)


def score_exact_match(backend, items, settings, gen: GenerationSettings, extract: Callable[[str], str]) -> list[dict]:
    outputs = backend.generate([it["prompt"] for it in items], gen, [settings.seed] * len(items))
    out = []
    for it, text in zip(items, outputs, strict=True):
        pred = extract(text)
        out.append({**it, "output": text, "prediction": pred, "score": float(exact_match_one(pred, it["gold"]))})
    return out
