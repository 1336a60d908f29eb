"""Prompt templates: exact ids for the CodeLlama-70B model-card dialog, the BOS/system/special-token traps."""

import json
import shutil

import pytest

from camelid.chat import TEMPLATES, apply_template, prompt_ids, render_template, resolve_template
from camelid.errors import CamelidError

DIALOG = [
    {"role": "system", "content": "System prompt    "},
    {"role": "user", "content": "First user query"},
    {"role": "assistant", "content": "Model response to first query"},
    {"role": "user", "content": "Second user query"},
]
# CodeLlama-70B-Instruct model card: Meta's reference ids for DIALOG.
CODELLAMA_IDS = [1, 7562, 29901, 1788, 13, 13, 2184, 9508, 32015, 7562, 29901, 1404, 13, 13, 3824, 1404, 2346,
                 32015, 7562, 29901, 20255, 13, 13, 8125, 2933, 304, 937, 2346, 32015, 7562, 29901, 1404, 13, 13,
                 6440, 1404, 2346, 32015, 7562, 29901, 20255, 13, 14994, 3381, 29901, 1404, 13, 13, 29871]


@pytest.fixture(scope="module")
def llama2_dir(shared_data, tmp_path_factory):
    # The Llama 2 tokenizer is licensed for tests only: copied to a temp dir, never into the repo.
    d = tmp_path_factory.mktemp("llama2tok")
    shutil.copy(shared_data / "tokenizers" / "llama2" / "tokenizer.model", d / "tokenizer.model")
    (d / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "LlamaTokenizer", "legacy": True, "add_bos_token": True,
         "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}))
    return d


@pytest.fixture(scope="module")
def llama2(llama2_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(llama2_dir, legacy=True)


@pytest.fixture(scope="module")
def codellama70b(llama2_dir):
    """LLaMA-2 tokenizer + CodeLlama-70B's 16 added tokens (lstrip), `<step>` last = 32015."""
    from transformers import AddedToken, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(llama2_dir, legacy=True)
    names = [f"<reserved_{i}>" for i in range(15)] + ["<step>"]
    tok.add_special_tokens({"additional_special_tokens": [
        AddedToken(t, lstrip=True, special=True, normalized=False) for t in names]})
    assert tok.convert_tokens_to_ids("<step>") == 32015
    return tok


def test_codellama70b_model_card_ids(codellama70b):
    assert apply_template(codellama70b, DIALOG, "codellama-70b-instruct") == CODELLAMA_IDS


def test_codellama70b_text_matches_model_template(codellama70b, shared_data):
    ref = json.loads((shared_data / "tokenizers" / "codellama70b" / "chat_template_reference.json").read_text())
    own = (shared_data / "tokenizers" / "codellama70b" / "chat_template.jinja").read_text()
    # The model's own template (as a model's chat_template) renders the reference text ...
    codellama70b.chat_template = own
    try:
        assert render_template(codellama70b, ref["example_messages"]) == ref["expected_render"]
        # ... and camelid's named template is identical to it, with and without a system turn.
        for msgs in (ref["example_messages"], DIALOG):
            assert render_template(codellama70b, msgs, "codellama-70b-instruct") == render_template(codellama70b, msgs)
            assert apply_template(codellama70b, msgs, "codellama-70b-instruct") == apply_template(codellama70b, msgs)
    finally:
        codellama70b.chat_template = None
    # Trap: the model's template always appends the assistant header; camelid's only when asked.
    text = render_template(codellama70b, DIALOG[:3], "codellama-70b-instruct", add_generation_prompt=False)
    assert text.endswith("Model response to first query <step> ")


def test_codellama70b_needs_step_token(llama2):
    with pytest.raises(CamelidError, match="<step>"):
        apply_template(llama2, DIALOG, "codellama-70b-instruct")


def _open_instruct_tulu(messages, bos="<s>", eos="</s>"):
    # open-instruct eval/templates.py create_prompt_with_tulu_chat_format (add_bos=True), for comparison.
    text = ""
    for m in messages:
        if m["role"] == "system":
            text += "<|system|>\n" + m["content"] + "\n"
        elif m["role"] == "user":
            text += "<|user|>\n" + m["content"] + "\n"
        else:
            text += "<|assistant|>\n" + m["content"].strip() + eos + "\n"
    return bos + text + "<|assistant|>\n"


def test_tulu_matches_open_instruct_eval(llama2):
    for msgs in (DIALOG, DIALOG[1:], [{"role": "user", "content": "Hi"}]):
        assert render_template(llama2, msgs, "tulu") == _open_instruct_tulu(msgs)
    assert render_template(llama2, [{"role": "user", "content": "Hi"}], "tulu") == "<s><|user|>\nHi\n<|assistant|>\n"
    ids = apply_template(llama2, DIALOG, "tulu")
    assert ids.count(llama2.bos_token_id) == 1 and ids[0] == llama2.bos_token_id
    assert ids == llama2.encode(_open_instruct_tulu(DIALOG), add_special_tokens=False)
    # The trailing newline after <|assistant|> is in the ids (13 = "\n").
    assert ids[-1] == 13


HF_TULU2 = (
    "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] }}\n"
    "{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n"
    "{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}"
)


def test_model_own_template_hf_tulu2_bos_and_system(llama2):
    llama2.chat_template = HF_TULU2
    try:
        text = render_template(llama2, DIALOG)
        # Trap, documented: the HF Tulu-2 template drops the system message and writes no BOS ...
        assert "System prompt" not in text and not text.startswith("<s>")
        assert text.endswith("<|user|>\nSecond user query\n<|assistant|>\n")
        # ... camelid makes BOS explicit: exactly one, as the model saw in training; add_bos=False keeps HF's ids.
        ids = apply_template(llama2, DIALOG)
        assert ids[0] == llama2.bos_token_id and ids[1] != llama2.bos_token_id
        assert apply_template(llama2, DIALOG, add_bos=False) == ids[1:]
        # template= overrides the model's own.
        assert "System prompt" in render_template(llama2, DIALOG, "tulu")
    finally:
        llama2.chat_template = None


def test_no_double_bos(llama2):
    text = render_template(llama2, DIALOG[1:], "llama-2-chat")
    # Tokenizing the rendered text the naive way doubles the BOS (Llama-3.1 discussion #97) ...
    assert llama2.encode(text)[:2] == [1, 1]
    # ... apply_template does not; llama-2-chat's BOS before each later [INST] is part of the format.
    ids = apply_template(llama2, DIALOG[1:], "llama-2-chat")
    assert ids[:2] != [1, 1] and ids.count(1) == 2


def test_special_tokens_in_user_text_stay_text(codellama70b):
    # The template's own <step> maps to 32015; a "<step>" or "</s>" typed by the user is spelled as text.
    ids = apply_template(codellama70b, [{"role": "user", "content": "a <step> b </s>"}], "codellama-70b-instruct")
    assert ids.count(32015) == 1 and codellama70b.eos_token_id not in ids
    text = render_template(codellama70b, [{"role": "user", "content": "a <step> b </s>"}], "codellama-70b-instruct")
    assert codellama70b.encode(text, add_special_tokens=False).count(32015) == 2  # what naive encoding does


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_every_template_renders_and_alternation_checked(llama2, codellama70b, name):
    tok = codellama70b if name == "codellama-70b-instruct" else llama2
    text = render_template(tok, DIALOG, name)
    for m in DIALOG[1:]:
        assert m["content"].strip() in text
    ids = apply_template(tok, DIALOG, name)
    assert ids[0] == tok.bos_token_id and ids[1] != tok.bos_token_id
    if name not in ("tulu", "chatml"):  # these two accept any order, as their reference code does
        with pytest.raises(CamelidError, match="alternate"):
            apply_template(tok, [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], name)


def test_single_turn_formats(llama2):
    one = [{"role": "user", "content": "Q"}]
    assert render_template(llama2, one, "alpaca") == (
        "<s>Below is an instruction that describes a task. Write a response that appropriately completes "
        "the request.\n\n### Instruction:\nQ\n\n### Response:\n")
    assert render_template(llama2, one, "llama-2-chat") == "<s>[INST] Q [/INST]"
    assert render_template(llama2, one, "vicuna").endswith("questions. USER: Q ASSISTANT:")
    assert render_template(llama2, one, "chatml") == "<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n"


def test_bad_input(llama2):
    with pytest.raises(CamelidError, match="unknown template"):
        render_template(llama2, DIALOG, "nope")
    with pytest.raises(CamelidError, match="no chat_template"):
        render_template(llama2, DIALOG)
    with pytest.raises(CamelidError, match="message 0"):
        render_template(llama2, [{"role": "robot", "content": "x"}], "tulu")
    with pytest.raises(CamelidError, match="at least one"):
        render_template(llama2, [], "tulu")


def test_resolve_template_one_policy(llama2, codellama70b):
    """CLI, server and eval decide the template here: a name or Jinja as given, "none", or the model's own."""
    assert resolve_template(llama2, "tulu") == "tulu" and resolve_template(llama2, "none") is None
    assert resolve_template(llama2, None) is None  # no chat_template of its own: raw prompts
    jinja = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    assert resolve_template(llama2, jinja) == jinja
    llama2.chat_template = HF_TULU2
    try:
        assert resolve_template(llama2, None) == HF_TULU2
        assert resolve_template(llama2, "none") is None  # "none" overrides the model's own
        own = resolve_template(llama2, None)
        assert prompt_ids(llama2, DIALOG[1:2], own) == apply_template(llama2, DIALOG[1:2])
    finally:
        llama2.chat_template = None
    with pytest.raises(CamelidError, match="unknown template 'nope'; known: none, tulu"):
        resolve_template(llama2, "nope")
    with pytest.raises(CamelidError, match="<step>"):  # checked against the tokenizer up front
        resolve_template(llama2, "codellama-70b-instruct")
    assert resolve_template(codellama70b, "codellama-70b-instruct") == "codellama-70b-instruct"
    # No template: the last message's text as the tokenizer encodes it (BOS added); a system turn is refused.
    assert prompt_ids(llama2, [{"role": "user", "content": "Hi there"}], None) == llama2("Hi there")["input_ids"]
    with pytest.raises(CamelidError, match="system message needs a template"):
        prompt_ids(llama2, DIALOG, None)
