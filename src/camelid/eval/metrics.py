"""The scores open-instruct reported, re-implemented without `evaluate`/`numpy` dependencies.

- `exact_match`: huggingface/evaluate `metrics/exact_match/exact_match.py` with ignore_case and
  ignore_punctuation (lowercase, then delete ASCII `string.punctuation`; no whitespace stripping), as
  open-instruct's GSM8K and BBH scripts call it. A fraction in 0..1.
- `squad_f1` / `squad_exact`: the official SQuAD v1.1 script (`evaluate` `metrics/squad/compute_score.py`),
  used by open-instruct's TyDiQA script: normalise (lowercase, drop punctuation and the articles a/an/the,
  collapse whitespace), token F1 on whitespace tokens, max over the gold answers.
- `pass_at_k`: the unbiased estimator of the Codex paper (openai/human-eval `human_eval/evaluation.py`).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

_PUNCT = str.maketrans("", "", string.punctuation)


def exact_match_one(prediction: str, reference: str) -> bool:
    return prediction.lower().translate(_PUNCT) == reference.lower().translate(_PUNCT)


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    if len(predictions) != len(references) or not predictions:
        raise ValueError("exact_match needs equally many (>0) predictions and references")
    return sum(exact_match_one(p, r) for p, r in zip(predictions, references, strict=True)) / len(predictions)


def squad_normalize(text: str) -> str:
    text = text.lower().translate(_PUNCT)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def _f1(prediction: str, gold: str) -> float:
    pred, ref = squad_normalize(prediction).split(), squad_normalize(gold).split()
    common = Counter(pred) & Counter(ref)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def squad_f1(prediction: str, golds: Sequence[str]) -> float:
    """Token F1 in 0..1, the max over gold answers."""
    return max(_f1(prediction, g) for g in golds)


def squad_exact(prediction: str, golds: Sequence[str]) -> float:
    return max(float(squad_normalize(prediction) == squad_normalize(g)) for g in golds)


def pass_at_k(n: int, c: int, k: int) -> float:
    """1 - C(n-c, k) / C(n, k), computed as the product form human-eval uses (no huge binomials)."""
    if not 0 <= c <= n or k < 1 or k > n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod
