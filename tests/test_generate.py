"""Sampling against Transformers' logits processors, the cached loop against HF generate, the llama2.c golden
text through `camelid generate`, stop strings, and `camelid chat` over piped stdin."""

import io
import json
from pathlib import Path

import pytest
import torch

from camelid.cli import main
from camelid.errors import CamelidError
from camelid.runtime import generate as G
from camelid.runtime.generate import SamplingParams, generate_ids, make_generator, sample_next, stream_text

MODEL = Path(__file__).resolve().parents[1] / "examples" / "stories260K"


@pytest.fixture(scope="module")
def stories():
    import camelid

    torch.set_num_threads(2)
    return camelid.load(MODEL, device="cpu")


def test_golden_greedy_llama2c(shared_data, capsys):
    golden = json.loads((shared_data / "models" / "stories260K" / "golden_greedy_llama2c.json").read_text())
    # llama2.c `-t 0 -n 200` from BOS: 200 new tokens; empty prompt, no template, pure greedy.
    rc = main(["generate", str(MODEL), "", "--template", "none", "--temperature", "0",
               "--repetition-penalty", "1", "--max-new-tokens", "200", "--stream"])
    assert rc == 0
    assert capsys.readouterr().out.rstrip("\n") == golden["expected_stdout"]


def test_processors_match_transformers():
    from transformers.generation.logits_process import (
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 50, generator=g) * 3
    prev = torch.randint(0, 50, (3, 12), generator=g)
    ours = G.apply_repetition_penalty(logits, prev, 1.3)
    assert torch.equal(ours, RepetitionPenaltyLogitsProcessor(1.3)(prev, logits.clone()))
    t = TemperatureLogitsWarper(0.7)(prev, ours.clone())
    assert torch.equal(G.apply_top_k(t, 7), TopKLogitsWarper(7)(prev, t.clone()))
    for p in (0.1, 0.5, 0.95):
        assert torch.equal(G.apply_top_p(t, p), TopPLogitsWarper(p)(prev, t.clone()))


def test_sample_next_semantics():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(100, generator=g)
    assert sample_next(logits, SamplingParams(temperature=0)) == logits.argmax()
    # The repetition penalty can move the greedy choice away from a seen token.
    top = logits.argmax().view(1)
    assert sample_next(logits, SamplingParams(temperature=0, repetition_penalty=1e6), prev_ids=top) != top
    # Seeded: same generator state, same draws; top_k=3 never leaves the top 3.
    params = SamplingParams(temperature=1.0, top_k=3)
    a = [int(sample_next(logits, params, make_generator("cpu", 5))) for _ in range(3)]
    gen = make_generator("cpu", 5)
    b = [int(sample_next(logits, params, gen)) for _ in range(200)]
    assert a == [b[0]] * 3 and set(b) <= set(logits.topk(3).indices.tolist()) and len(set(b)) > 1
    # Batched logits: one draw per row.
    assert sample_next(torch.randn(4, 100), SamplingParams(), make_generator("cpu", 0)).shape == (4,)
    with pytest.raises(CamelidError):
        SamplingParams(top_p=0)


def test_cached_loop_matches_hf_generate(stories):
    model, tok = stories
    prompt = tok("Once upon a time, Tom")["input_ids"]
    ours = list(generate_ids(model, prompt, 24, SamplingParams(temperature=0, repetition_penalty=1.3)))
    hf = model.generate(torch.tensor([prompt]), max_new_tokens=24, do_sample=False, repetition_penalty=1.3,
                        eos_token_id=None, pad_token_id=0)[0, len(prompt):].tolist()
    assert ours == hf[: len(ours)] and len(ours) == 24
    # Sampling is reproducible for a seed and differs across seeds.
    params = SamplingParams(temperature=0.8, top_p=0.95, top_k=40, repetition_penalty=1.1)
    runs = [list(generate_ids(model, prompt, 16, params, make_generator("cpu", s))) for s in (7, 7, 8)]
    assert runs[0] == runs[1] != runs[2]


def test_eos_and_position_limit(stories, monkeypatch):
    model, tok = stories
    prompt = tok("Once upon a time")["input_ids"]
    greedy = list(generate_ids(model, prompt, 20, SamplingParams(temperature=0)))
    stopped = list(generate_ids(model, prompt, 20, SamplingParams(temperature=0), eos_ids={greedy[5]}))
    assert stopped == greedy[: greedy.index(greedy[5])]
    monkeypatch.setattr(model.config, "max_position_embeddings", len(prompt) + 12)
    long = list(generate_ids(model, prompt, 10_000, SamplingParams(temperature=0)))
    assert len(prompt) + len(long) == model.config.max_position_embeddings
    with pytest.raises(CamelidError, match="at most"):
        list(generate_ids(model, prompt * 4, 5))
    with pytest.raises(CamelidError, match="empty prompt"):
        list(generate_ids(model, [], 5))


def test_stream_text_stop_strings(stories):
    model, tok = stories
    ids = tok("Once upon a time, there was a little girl named Lily. She loved to play.",
              add_special_tokens=False)["input_ids"]
    full = "".join(stream_text(tok, ids))
    assert full == tok.decode(ids, skip_special_tokens=True)
    pieces = list(stream_text(tok, ids, stop=["named Lily", "zzz"]))
    assert "".join(pieces) == "Once upon a time, there was a little girl "
    assert len(pieces) > 3  # streamed, not all at the end
    assert "".join(stream_text(tok, ids, stop=["."])) == "Once upon a time, there was a little girl named Lily"
    # Byte-fallback characters split over several tokens come out whole, never as U+FFFD.
    quoted = tok("He said, \u201cWow\u201d and smiled.", add_special_tokens=False)["input_ids"]
    assert len(quoted) > len(tok.tokenize("He said, Wow and smiled."))  # the quotes are byte tokens
    pieces = list(stream_text(tok, quoted))
    assert "".join(pieces) == tok.decode(quoted, skip_special_tokens=True) and not any("\ufffd" in p for p in pieces)


@pytest.fixture
def prompts_seen(monkeypatch):
    """The prompt ids of every generate_ids call the CLI makes."""
    seen = []
    real = G.generate_ids

    def spy(model, input_ids, *args, **kwargs):
        seen.append(list(input_ids))
        return real(model, input_ids, *args, **kwargs)

    monkeypatch.setattr(G, "generate_ids", spy)
    return seen


def test_chat_cli_multi_turn(monkeypatch, capsys, prompts_seen, stories):
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"Tell me a story\nAnd then?\n\n")))
    rc = main(["chat", str(MODEL), "--template", "tulu", "--system", "Be brief", "--max-new-tokens", "8",
               "--temperature", "0"])
    assert rc == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and all(line.strip() for line in out)
    first, second = prompts_seen
    # The second turn's prompt is the first one plus the model's reply and the new question.
    assert second[: len(first) - 3] == first[:-3] and len(second) > len(first) + 8
    text = stories[1].decode(second)
    assert "<|system|>" in text and "Tell me a story" in text and "And then?" in text
    assert text.count("<|assistant|>") == 2 and out[0].strip() in text


@pytest.mark.parametrize("where", ["chat_template.jinja", "tokenizer_config.json"])
def test_generate_uses_model_own_template(tmp_path, prompts_seen, stories, where):
    import shutil

    model_dir = tmp_path / "m"
    shutil.copytree(MODEL, model_dir)
    own = "{{ bos_token }}{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\\n' }}{% endfor %}assistant:"
    if where == "chat_template.jinja":
        (model_dir / where).write_text(own)
    else:
        cfg = json.loads((model_dir / where).read_text())
        (model_dir / where).write_text(json.dumps(cfg | {"chat_template": own}))
    assert main(["generate", str(model_dir), "Hi there", "--system", "Be kind", "--max-new-tokens", "4"]) == 0
    assert stories[1].decode(prompts_seen[0]) == "<s> system: Be kind\nuser: Hi there\nassistant:"
    # --template overrides the model's own.
    assert main(["generate", str(model_dir), "Hi there", "--template", "tulu", "--max-new-tokens", "4"]) == 0
    assert "<|user|>" in stories[1].decode(prompts_seen[1])


def test_generate_bad_template(capsys):
    assert main(["generate", str(MODEL), "hi", "--template", "nope"]) == 2
    assert "unknown template 'nope'" in capsys.readouterr().err
    assert main(["chat", str(MODEL)]) == 2  # stories260K has no chat_template: chat needs one
    assert "no chat_template" in capsys.readouterr().err


def test_chat_survives_a_turn_error(monkeypatch, capsys, prompts_seen):
    # A turn longer than the context (512) is refused with a message; the session goes on without it.
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"the dog " * 400 + b"\nHello\n\n")))
    assert main(["chat", str(MODEL), "--template", "tulu", "--max-new-tokens", "4", "--temperature", "0"]) == 0
    captured = capsys.readouterr()
    assert "at most 512" in captured.err and len(captured.out.splitlines()) == 1
    assert len(prompts_seen[-1]) < 50  # the "Hello" turn's prompt: the long turn was dropped
