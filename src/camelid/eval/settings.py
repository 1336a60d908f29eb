"""What one evaluation measures: a task and its protocol knobs, passed whole to the task and the runner."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from camelid.errors import CamelidError

TASKS = ("mmlu", "gsm8k", "bbh", "tydiqa", "codex", "alpacafarm")


@dataclass(frozen=True)
class EvalSettings:
    task: str
    shots: int | None = None  # None: the paper's (MMLU 0, GSM8K 8, BBH 3, TyDiQA 1)
    cot: bool = True  # GSM8K/BBH chain of thought; False = direct
    closed_book: bool = False  # TyDiQA without the passage
    limit: int | None = None  # per subject/task/language where the task has groups, else in total
    template: str | None = None  # camelid.chat template; "none" = plain prompts; None = the paper's
    # (the Tulu chat format, except Codex: none)
    subsets: tuple[str, ...] = ()  # only these MMLU subjects / BBH tasks / TyDiQA languages
    pass_at: int = 1  # Codex: 1 (temperature 0.1) or 10 (temperature 0.8), as the paper's two runs
    samples: int = 20  # Codex samples per problem
    temperature: float | None = None  # None: the protocol's
    max_new_tokens: int | None = None  # None: the protocol's
    seed: int = 42
    batch_size: int = 16  # examples per chunk written to records.jsonl
    judge_url: str | None = None  # AlpacaFarm: OpenAI-compatible chat endpoint (…/v1)
    judge_model: str | None = None
    judge_prompt: str | None = None  # a file replacing the default judge prompt

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise CamelidError(f"unknown eval task {self.task!r}; known: {', '.join(TASKS)}")
        if self.limit is not None and self.limit < 1:
            raise CamelidError(f"--limit must be >= 1, got {self.limit}")
        if self.shots is not None and self.shots < 0:
            raise CamelidError(f"--shots must be >= 0, got {self.shots}")
        if self.temperature is not None and self.task != "codex":
            # every other task decodes greedily by the protocol; a flag that changed nothing would mislead
            raise CamelidError(f"--temperature applies to codex only; {self.task} decodes greedily")
        if self.task == "codex" and (self.pass_at < 1 or self.pass_at > self.samples):
            raise CamelidError(f"pass@{self.pass_at} needs at least that many samples (--samples {self.samples})")

    def as_dict(self) -> dict:
        return asdict(self)
