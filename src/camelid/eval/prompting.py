"""Chat-format prompts as open-instruct's evals build them, for any camelid.chat template.

open-instruct (eval/templates.py `create_prompt_with_tulu_chat_format`, called with add_bos=False) renders
one user turn plus the generation prompt, and every task then appends an answer prefix: "X" after a
trailing newline or space, else " X". BOS comes from the tokenizer (add_special_tokens=True, the default
since open-instruct 52ed964c), so the text here never starts with the BOS string: backends tokenize it with
the tokenizer's own special tokens, locally and on a server alike.
"""

from __future__ import annotations

from camelid.chat import NO_TEMPLATE, render_template


def is_chat(template: str | None) -> bool:
    return template is not None and template != NO_TEMPLATE


def task_template(settings, default: str = "tulu") -> str:
    """The template a task uses: the one asked for, else the paper's (Tulu chat format; none for Codex)."""
    return settings.template if settings.template is not None else default


def with_answer_prefix(prompt: str, prefix: str) -> str:
    """open-instruct: `prompt += X if prompt[-1] in ["\\n", " "] else " " + X`."""
    return prompt + prefix if prompt[-1:] in ("\n", " ") else prompt + " " + prefix


def chat_prompt(tokenizer, template: str, user: str, answer_prefix: str = "") -> str:
    """One user turn in `template`, generation prompt, then `answer_prefix` (if any); no leading BOS text."""
    text = render_template(tokenizer, [{"role": "user", "content": user}], template)
    bos = tokenizer.bos_token
    if bos and text.startswith(bos):
        text = text[len(bos):]
    return with_answer_prefix(text, answer_prefix) if answer_prefix else text
