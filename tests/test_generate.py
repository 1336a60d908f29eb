"""Sampling against Transformers' logits processors, the cached loop and the batch against HF generate, the
llama2.c golden text through `camelid generate`, stop strings, and `camelid chat` over piped stdin."""

import io
import json
from pathlib import Path

import pytest
import torch

from camelid.cli import main
from camelid.errors import CamelidError
from camelid.runtime import generate as G
from camelid.runtime import sampling as S
from camelid.runtime.detokenize import decode_generated
from camelid.runtime.generate import generate, generate_ids, stream_text
from camelid.runtime.sampling import Sampler, SamplingParams
from camelid.runtime.stops import Stops, eos_token_ids

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
        LogitsProcessorList,
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
        TypicalLogitsWarper,
    )

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 50, generator=g) * 3
    prev = torch.randint(0, 50, (3, 12), generator=g)
    ours = S.apply_repetition_penalty(logits, prev, 1.3)
    assert torch.equal(ours, RepetitionPenaltyLogitsProcessor(1.3)(prev, logits.clone()))
    t = TemperatureLogitsWarper(0.7)(prev, ours.clone())
    assert torch.equal(S.apply_top_k(t, 7), TopKLogitsWarper(7)(prev, t.clone()))
    for p in (0.1, 0.5, 0.95):
        assert torch.equal(S.apply_top_p(t, p), TopPLogitsWarper(p)(prev, t.clone()))
    # The whole chain, in Transformers' order, for one sequence as the sampler sees it.
    params = SamplingParams(temperature=0.7, top_k=20, top_p=0.9, typical_p=0.95, repetition_penalty=1.3)
    hf = LogitsProcessorList([RepetitionPenaltyLogitsProcessor(1.3), TemperatureLogitsWarper(0.7),
                              TopKLogitsWarper(20), TopPLogitsWarper(0.9), TypicalLogitsWarper(0.95)])
    assert torch.equal(S.process_logits(logits[:1], params, prev[:1]), hf(prev[:1], logits[:1].clone()))


def test_sample_next_semantics():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(100, generator=g)
    assert Sampler(SamplingParams(temperature=0)).choose(logits).token_id == logits.argmax()
    # The repetition penalty can move the greedy choice away from a seen token.
    top = logits.argmax().view(1)
    assert Sampler(SamplingParams(temperature=0, repetition_penalty=1e6)).choose(logits, top).token_id != top
    # Frequency penalty counts repeats: a token seen twice loses 2 x penalty.
    seen = torch.tensor([top.item(), top.item()])
    scores = S.process_logits(logits[None], SamplingParams(temperature=0, frequency_penalty=0.5), seen[None])
    assert scores[0, top] == logits[top] - 1.0
    # Seeded: same seed, same draws; top_k=3 never leaves the top 3.
    params = SamplingParams(temperature=1.0, top_k=3, seed=5)
    a = [Sampler(params).choose(logits).token_id for _ in range(3)]
    sampler = Sampler(params)
    b = [sampler.choose(logits).token_id for _ in range(200)]
    assert a == [b[0]] * 3 and set(b) <= set(logits.topk(3).indices.tolist()) and len(set(b)) > 1
    # The logprob reported is after the warpers; top_n lists the likeliest first.
    choice = Sampler(params).choose(logits, top_n=3)
    assert [i for i, _ in choice.top] == logits.topk(3).indices.tolist()
    assert choice.logprob == pytest.approx(dict(choice.top)[choice.token_id])
    with pytest.raises(CamelidError):
        SamplingParams(top_p=0)
    with pytest.raises(CamelidError, match="finite"):
        SamplingParams(temperature=float("nan"))


def test_cached_loop_matches_hf_generate(stories):
    model, tok = stories
    prompt = tok("Once upon a time, Tom")["input_ids"]
    greedy = Sampler(SamplingParams(temperature=0, repetition_penalty=1.3))
    ours = list(generate_ids(model, prompt, 24, greedy))
    hf = model.generate(torch.tensor([prompt]), max_new_tokens=24, do_sample=False, repetition_penalty=1.3,
                        eos_token_id=None, pad_token_id=0)[0, len(prompt):].tolist()
    assert ours == hf and len(ours) == 24
    # Sampling is reproducible for a seed and differs across seeds.
    params = [SamplingParams(temperature=0.8, top_p=0.95, top_k=40, repetition_penalty=1.1, seed=s) for s in (7, 7, 8)]
    runs = [list(generate_ids(model, prompt, 16, Sampler(p))) for p in params]
    assert runs[0] == runs[1] != runs[2]


def test_eos_and_position_limit(stories, monkeypatch):
    model, tok = stories
    prompt = tok("Once upon a time")["input_ids"]
    greedy = list(generate_ids(model, prompt, 20, Sampler(SamplingParams(temperature=0))))
    drawn = []

    def ids():
        for t in generate_ids(model, prompt, 20, Sampler(SamplingParams(temperature=0))):
            drawn.append(t)
            yield t

    text = "".join(stream_text(tok, ids(), Stops.of(eos_ids={greedy[5]})))
    cut = greedy.index(greedy[5])
    assert text == tok.decode(greedy[:cut], skip_special_tokens=True) and drawn == greedy[: cut + 1]
    monkeypatch.setattr(model.config, "max_position_embeddings", len(prompt) + 12)
    long = list(generate_ids(model, prompt, 10_000, Sampler(SamplingParams(temperature=0))))
    assert len(prompt) + len(long) == model.config.max_position_embeddings
    with pytest.raises(CamelidError, match="at most"):
        list(generate_ids(model, prompt * 4, 5, Sampler(SamplingParams())))
    with pytest.raises(CamelidError, match="empty prompt"):
        list(generate_ids(model, [], 5, Sampler(SamplingParams())))


def test_stream_text_stop_strings(stories):
    model, tok = stories
    ids = tok("Once upon a time, there was a little girl named Lily. She loved to play.",
              add_special_tokens=False)["input_ids"]
    full = "".join(stream_text(tok, ids))
    assert full == tok.decode(ids, skip_special_tokens=True)
    pieces = list(stream_text(tok, ids, Stops.of(strings=["named Lily", "zzz"])))
    assert "".join(pieces) == "Once upon a time, there was a little girl "
    assert len(pieces) > 3  # streamed, not all at the end
    assert "".join(stream_text(tok, ids, Stops.of(strings=["."]))) == (
        "Once upon a time, there was a little girl named Lily")
    # Byte-fallback characters split over several tokens come out whole, never as U+FFFD.
    quoted = tok("He said, \u201cWow\u201d and smiled.", add_special_tokens=False)["input_ids"]
    assert len(quoted) > len(tok.tokenize("He said, Wow and smiled."))  # the quotes are byte tokens
    pieces = list(stream_text(tok, quoted))
    assert "".join(pieces) == tok.decode(quoted, skip_special_tokens=True) and not any("\ufffd" in p for p in pieces)


def test_batch_generate_matches_each_prompt_alone(stories):
    """`generate` (evaluation's entry point): rows of different lengths in one batch, each leaving at its own
    end, give what `generate_ids` gives for that prompt alone; seeded rows do not depend on their batch."""
    model, tok = stories
    prompts = [tok(p)["input_ids"] for p in ("Once upon a time", "The dog ran to the big red", "Lily")]
    greedy = SamplingParams(temperature=0, repetition_penalty=1.2)
    alone = [list(generate_ids(model, p, 30, Sampler(greedy))) for p in prompts]
    texts = [decode_generated(tok, p, a) for p, a in zip(prompts, alone, strict=True)]
    # A word only the first row writes ends it; a token only the third row draws ends that one as EOS.
    stop = next(" " + w for w in texts[0].split()[2:] if " " + w not in texts[1] + texts[2])
    eos = next(t for t in alone[2][3:] if t not in alone[0] + alone[1])
    stops = Stops.of(eos_ids={eos}, strings=[stop])
    out = generate(model, tok, prompts, greedy, stops, max_new_tokens=30)
    assert [c.finish_reason for c in out] == ["stop_sequence", "length", "eos_token"]
    assert out[0].text == texts[0][: texts[0].index(stop)]
    assert out[0].ids == alone[0][: len(out[0].ids)] and out[1].ids == alone[1]
    assert out[2].ids == alone[2][: alone[2].index(eos)]
    assert out[1].text == texts[1]
    sampled = SamplingParams(temperature=0.9, top_k=40, seed=3)
    together = generate(model, tok, prompts, sampled, max_new_tokens=12)
    assert generate(model, tok, prompts[1:2], sampled, max_new_tokens=12) == together[1:2]
    assert together[1].ids == list(generate_ids(model, prompts[1], 12, Sampler(sampled)))
    assert generate(model, tok, [], sampled) == [] and eos_token_ids(model, tok) == {tok.eos_token_id}


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
