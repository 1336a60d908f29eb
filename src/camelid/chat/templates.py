"""Prompt templates: a small registry of Jinja chat templates, rendered exactly as transformers renders them.

Every template is Jinja source in the Hugging Face `chat_template` dialect, so a registry template and a
model's own `chat_template` go through one renderer (transformers' `apply_chat_template`: a sandboxed
environment with `trim_blocks`, `lstrip_blocks` and `raise_exception`) and one tokenization rule
(`add_special_tokens=False`, so BOS is present only where the template writes it), and a registry template
can be written into a release's `tokenizer_config.json` unchanged.

The one place camelid differs from transformers is BOS: see `apply_template`.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass

from camelid.errors import CamelidError

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class PromptTemplate:
    name: str
    source: str  # Jinja, HF chat_template dialect
    note: str
    # Added tokens the template writes; a tokenizer without them would silently spell them as text.
    needs_tokens: tuple[str, ...] = ()
    # Strings that end the assistant's turn besides EOS (the "generation never stops" trap).
    stop: tuple[str, ...] = ()


_ALTERNATE = (
    "{% if (message['role'] == 'user') != ((loop.index0 + user_index) % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
)
_SPLIT_SYSTEM = (
    "{% if messages and messages[0]['role'] == 'system' %}{% set system = messages[0]['content'] %}"
    "{% set loop_messages = messages[1:] %}{% else %}{% set system = none %}"
    "{% set loop_messages = messages %}{% endif %}{% set user_index = 0 %}"
)

# open-instruct eval/templates.py `create_prompt_with_tulu_chat_format` (add_bos=True): BOS first, system
# turns kept. The HF Tulu-2 tokenizer_config template drops system messages and writes no BOS; camelid
# follows the evaluation code the Tulu models were scored with.
TULU = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ '<|system|>\n' + message['content'] + '\n' }}"
    "{% elif message['role'] == 'user' %}{{ '<|user|>\n' + message['content'] + '\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ '<|assistant|>\n' + (message['content'] | trim) + eos_token + '\n' }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)

# codellama/CodeLlama-70b-Instruct-hf tokenizer_config.json, with one change: the assistant header is written
# only when add_generation_prompt is set (the model's own template always writes it, even after an
# assistant turn). With the default add_generation_prompt=True the output is identical.
CODELLAMA_70B = (
    "{% if messages and messages[0]['role'] == 'system' %}{% set user_index = 1 %}"
    "{% else %}{% set user_index = 0 %}{% endif %}"
    "{% for message in messages %}" + _ALTERNATE + "{% if loop.index0 == 0 %}{{ bos_token }}{% endif %}"
    "{% set content = 'Source: ' + message['role'] + '\n\n ' + (message['content'] | trim) %}"
    "{{ content + ' <step> ' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Source: assistant\nDestination: user\n\n ' }}{% endif %}"
)

# meta-llama/Llama-2-7b-chat-hf tokenizer_config.json (use_default_system_prompt=False): BOS before every
# [INST], the system prompt folded into the first user turn.
LLAMA_2_CHAT = (
    _SPLIT_SYSTEM + "{% for message in loop_messages %}" + _ALTERNATE +
    "{% if loop.index0 == 0 and system is not none %}"
    "{% set content = '<<SYS>>\n' + system + '\n<</SYS>>\n\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + (content | trim) + ' [/INST]' }}"
    "{% else %}{{ ' ' + (content | trim) + ' ' + eos_token }}{% endif %}{% endfor %}"
)

# tatsu-lab/stanford_alpaca train.py PROMPT_DICT["prompt_no_input"]; a system message replaces the preamble;
# later turns repeat the Instruction/Response pair.
ALPACA = (
    _SPLIT_SYSTEM +
    "{% if system is none %}{% set system = 'Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.' %}{% endif %}"
    "{{ bos_token + system + '\n\n' }}"
    "{% for message in loop_messages %}" + _ALTERNATE +
    "{% if message['role'] == 'user' %}{{ '### Instruction:\n' + message['content'] + '\n\n' }}"
    "{% else %}{{ '### Response:\n' + message['content'] + eos_token + '\n\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '### Response:\n' }}{% endif %}"
)

# lm-sys/FastChat conversation.py "vicuna_v1.1": sep " ", sep2 "</s>", generation prompt "ASSISTANT:".
VICUNA = (
    _SPLIT_SYSTEM +
    "{% if system is none %}{% set system = 'A chat between a curious user and an artificial intelligence "
    "assistant. The assistant gives helpful, detailed, and polite answers to the user\\'s questions.' %}{% endif %}"
    "{{ bos_token + system + ' ' }}"
    "{% for message in loop_messages %}" + _ALTERNATE +
    "{% if message['role'] == 'user' %}{{ 'USER: ' + message['content'] + ' ' }}"
    "{% else %}{{ 'ASSISTANT: ' + message['content'] + eos_token }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

# OpenAI ChatML as used by Hermes/Qwen-style fine-tunes.
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

TEMPLATES: dict[str, PromptTemplate] = {
    t.name: t
    for t in (
        PromptTemplate("tulu", TULU, "<|user|>\\n{prompt}\\n<|assistant|>\\n; BOS and system as open-instruct eval",
                       stop=("\n<|user|>",)),
        PromptTemplate("codellama-70b-instruct", CODELLAMA_70B,
                       "Source: user\\n\\n {prompt} <step> Source: assistant\\nDestination: user\\n\\n ",
                       needs_tokens=("<step>",), stop=("<step>",)),
        PromptTemplate("llama-2-chat", LLAMA_2_CHAT, "<s>[INST] <<SYS>>...<</SYS>> {prompt} [/INST]"),
        PromptTemplate("alpaca", ALPACA, "### Instruction:\\n{prompt}\\n\\n### Response:\\n",
                       stop=("\n### Instruction:",)),
        PromptTemplate("vicuna", VICUNA, "... USER: {prompt} ASSISTANT:", stop=("\nUSER:",)),
        PromptTemplate("chatml", CHATML, "<|im_start|>user\\n{prompt}<|im_end|>\\n<|im_start|>assistant\\n",
                       stop=("<|im_end|>",)),
    )
}


def template_source(tokenizer, template: str | None = None) -> str:
    """The Jinja source to render: a registry name, literal Jinja, or (None) the model's own chat_template."""
    if template is None:
        own = getattr(tokenizer, "chat_template", None)
        if isinstance(own, dict):  # several named templates: transformers uses "default"
            own = own.get("default")
        if not own:
            raise no_template_error()
        return own
    if template in TEMPLATES:
        return TEMPLATES[template].source
    if "{{" in template or "{%" in template:
        return template
    raise CamelidError(f"unknown template {template!r}; known: {', '.join(TEMPLATES)} (or Jinja source)")


NO_TEMPLATE = "none"


def resolve_template(tokenizer, template: str | None = None) -> str | None:
    """The one template policy of `camelid generate`/`chat`, `camelid serve` and evaluation.

    `template` is a registry name, Jinja source, "none" (no template: the prompt is fed as raw text) or None
    (the model's own chat_template if it has one, else none). Returns what to render with: a registry name,
    Jinja source, or None for no template. A named or Jinja template is rendered once on a probe message, so
    an unknown name, broken Jinja or a template needing tokens this tokenizer lacks fails here, at start-up,
    not on the first request.
    """
    if template == NO_TEMPLATE:
        return None
    if template is None:
        try:
            return template_source(tokenizer)
        except CamelidError:  # no chat_template of its own: raw prompts
            return None
    if template not in TEMPLATES and "{{" not in template and "{%" not in template:
        raise CamelidError(
            f"unknown template {template!r}; known: {NO_TEMPLATE}, {', '.join(TEMPLATES)} (or Jinja source)"
        )
    render_template(tokenizer, [{"role": "user", "content": "probe"}], template)
    return template


def no_template_error(model: object = "this model") -> CamelidError:
    """A conversation was given to a model that has no template (none of its own, or "none" was asked for)."""
    return CamelidError(f"{model} has no chat_template; pass a template name: {', '.join(TEMPLATES)}")


def prompt_ids(tokenizer, messages: Sequence[dict], template: str | None) -> list[int]:
    """The ids fed to the model for `messages` under a resolved `template` (see `resolve_template`). Without a
    template the prompt is the last message's text, tokenized as the tokenizer does by default (BOS included
    where it adds one); a system message then has nowhere to go and is refused."""
    if template is not None:
        return apply_template(tokenizer, messages, template)
    messages = _check_messages(messages)
    if any(m["role"] == "system" for m in messages):
        raise CamelidError("a system message needs a template (--template NAME)")
    return list(tokenizer(messages[-1]["content"])["input_ids"])


def stop_strings(template: str | None) -> tuple[str, ...]:
    """Extra stop strings for a registry template (none for a model's own or literal template)."""
    return TEMPLATES[template].stop if template in TEMPLATES else ()


def _check_messages(messages: Sequence[dict]) -> list[dict]:
    if not messages:
        raise CamelidError("a conversation needs at least one message")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise CamelidError(
                f"message {i} must be {{'role': one of {ROLES}, 'content': str}}, got {m!r}"
            )
        out.append({"role": m["role"], "content": m["content"]})
    return out


def _has_token(tokenizer, token: str) -> bool:
    """Whether `token` is in the vocabulary (convert_tokens_to_ids answers unk, or None, for a missing one)."""
    token_id = tokenizer.convert_tokens_to_ids(token)
    return token_id is not None and (token_id != tokenizer.unk_token_id or token == tokenizer.unk_token)


def _check_tokens(tokenizer, template: str | None) -> None:
    if template not in TEMPLATES:
        return
    # One lookup per needed token: get_vocab() builds the whole 32k-entry dict (16 ms on LLaMA-2's
    # tokenizer), which was 93% of a render and minutes of an MMLU run's prompt building.
    missing = [t for t in TEMPLATES[template].needs_tokens if not _has_token(tokenizer, t)]
    if missing:
        raise CamelidError(
            f"template {template!r} needs the special tokens {missing}, which this tokenizer lacks "
            "(they would be spelled out as plain text)"
        )


def _apply(tokenizer, messages, template, add_generation_prompt, tokenize):
    import jinja2

    source = template_source(tokenizer, template)
    _check_tokens(tokenizer, template)
    kwargs = {}
    if tokenize and "sanitize_control_tokens" in inspect.signature(tokenizer.apply_chat_template).parameters:
        # Control tokens typed inside a message ("</s>", "<step>") are encoded as text, never as the token.
        kwargs["sanitize_control_tokens"] = True
    try:
        return tokenizer.apply_chat_template(
            _check_messages(messages), chat_template=source, add_generation_prompt=add_generation_prompt,
            tokenize=tokenize, return_dict=False, **kwargs,
        )
    except jinja2.TemplateError as e:
        raise CamelidError(f"chat template failed: {e}") from e


def render_template(tokenizer, messages: Sequence[dict], template: str | None = None,
                    add_generation_prompt: bool = True) -> str:
    """The prompt text, exactly as the template writes it (BOS included only where the template writes it)."""
    return _apply(tokenizer, messages, template, add_generation_prompt, tokenize=False)


def apply_template(tokenizer, messages: Sequence[dict], template: str | None = None,
                   add_generation_prompt: bool = True, add_bos: bool | None = None) -> list[int]:
    """The token ids fed to the model for a conversation.

    The rendered text is tokenized with add_special_tokens=False (as transformers does, so a template that
    writes `<s>` gets one BOS, not two). Then BOS is made explicit: with `add_bos` (default: the tokenizer's
    own `add_bos_token`, true for Llama) the ids start with exactly one BOS, whether or not the template
    wrote it (the HF Tulu-2 template writes none, though the model was trained and evaluated with one);
    with add_bos=False the ids are the template's, unchanged.
    """
    ids = list(_apply(tokenizer, messages, template, add_generation_prompt, tokenize=True))
    bos = tokenizer.bos_token_id
    if add_bos is None:
        add_bos = bool(getattr(tokenizer, "add_bos_token", False))
    if add_bos and bos is not None:
        while ids[:2] == [bos, bos]:
            ids.pop(0)
        if ids[:1] != [bos]:
            ids.insert(0, bos)
    return ids
