"""camelid's GGUF files run by llama.cpp (llama-cpp-python): they load and generate, F16 gives the source
model's greedy tokens, llama.cpp tokenizes Tulu prompts to camelid's ids, and eval measures GGUF rows."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("gguf", reason="GGUF export needs the gguf package (the gguf extra)")
pytest.importorskip("llama_cpp", reason="needs llama-cpp-python (pip install 'camelid[gguf]')")

from helpers import STORIES, write_tiny_llama  # noqa: E402

import camelid  # noqa: E402
from camelid.eval import kl_divergence  # noqa: E402
from camelid.export import GGUFExport, export_gguf  # noqa: E402
from camelid.runtime.llamacpp import load_gguf  # noqa: E402

pytestmark = pytest.mark.llamacpp
PROMPT = "Once upon a time, there was a little girl named Lily. She"
CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Sum 2 and 3.\nThen  explain\n\n briefly."},
    {"role": "assistant", "content": "5, because 2 + 3 = 5."},
    {"role": "user", "content": "And 4 + 4?"},
]
# stories260K's tokenizer.model sets SentencePiece's remove_extra_whitespaces, which llama.cpp's SPM tokenizer
# does not apply (see camelid.export.gguf_vocab): its conversation has no runs of spaces.
SIMPLE = [{"role": "user", "content": "Tell me a story.\nAbout a cat\n\nnamed Tom."},
          {"role": "assistant", "content": "Once upon a time."}, {"role": "user", "content": "More!"}]


def _greedy_transformers(model, ids: list[int], n: int) -> list[int]:
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False, attention_mask=None)
    return out[0, len(ids):].tolist()


@pytest.fixture(scope="module")
def stories_ggufs(tmp_path_factory):
    out = tmp_path_factory.mktemp("gguf")
    types = ("f16", "q8_0", "q4_0", "q4_k_m")
    return dict(zip(types, export_gguf(STORIES, out, GGUFExport(types=types)), strict=True))


@pytest.fixture(scope="module")
def stories():
    return camelid.load(STORIES, device="cpu", dtype="float32")


def test_f16_generates_the_source_models_greedy_tokens(stories_ggufs, stories):
    model, tok = stories
    ids = tok(PROMPT)["input_ids"]
    lm, gguf_tok = load_gguf(stories_ggufs["f16"], n_ctx=256, threads=1)
    assert gguf_tok(PROMPT)["input_ids"] == ids
    want = _greedy_transformers(model, ids, 48)
    assert lm.greedy(ids, 48) == want
    assert len(set(want)) > 10  # a real continuation, not one repeated token


@pytest.mark.parametrize("qtype", ["q8_0", "q4_0", "q4_k_m"])
def test_quantized_files_load_generate_and_stay_close(stories_ggufs, stories, qtype, shared_data):
    model, tok = stories
    lm, _ = load_gguf(stories_ggufs[qtype], n_ctx=128, threads=1)
    out = lm.greedy(tok(PROMPT)["input_ids"], 16)
    assert len(out) == 16 and all(0 <= i < 512 for i in out)
    text = (shared_data / "eval" / "tinystories" / "tinystories_sample.txt").read_text()
    r = kl_divergence(lm, model, tok, text, seq_len=128)
    # Bounds far above what these types measure on stories260K (benchmarks/gguf.py), far below a broken
    # file (a missing Q/K permutation gives KL > 1 and top-1 near chance).
    assert r["kld_mean"] < {"q8_0": 0.01, "q4_0": 0.3, "q4_k_m": 0.3}[qtype]
    assert r["top1_agreement_pct"] > {"q8_0": 95, "q4_0": 60, "q4_k_m": 60}[qtype]


def test_k_quant_tensors_come_from_llama_cpp(tmp_path):
    import gguf

    # Rows of 256 values: K-quant blocks fit (stories260K's 64-wide rows make llama.cpp fall back).
    model = write_tiny_llama(tmp_path / "m", hidden_size=256, intermediate_size=512, num_attention_heads=4,
                             num_key_value_heads=2)
    (path,) = export_gguf(model, tmp_path / "out", GGUFExport(types=("q4_k_m",), threads=1))
    assert path.name == "m.Q4_K_M.gguf"
    reader = gguf.GGUFReader(path)
    assert reader.fields["general.file_type"].contents() == gguf.LlamaFileType.MOSTLY_Q4_K_M
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["blk.0.attn_q.weight"] == "Q4_K" and "Q6_K" in types.values()  # the Q4_K_M mix
    assert not list((tmp_path / "out").glob("*.partial")) and len(list((tmp_path / "out").iterdir())) == 1
    ref, tok = camelid.load(model, device="cpu", dtype="float32")
    lm, _ = load_gguf(path, n_ctx=64, threads=1)
    ids = torch.randint(3, 512, (2, 64), generator=torch.Generator().manual_seed(0))
    kl = torch.nn.functional.kl_div(torch.log_softmax(lm(input_ids=ids).logits, -1),
                                    torch.log_softmax(ref(input_ids=ids).logits.float(), -1),
                                    log_target=True, reduction="none").sum(-1)
    assert kl.mean() < 0.05  # a random init model is nearly uniform: tiny KL, unless the file is wrong


def test_k_quants_in_small_slabs_write_the_same_bytes(tmp_path, monkeypatch):
    import camelid.export.gguf as export

    model = write_tiny_llama(tmp_path / "m", hidden_size=256, intermediate_size=512, num_attention_heads=4,
                             num_key_value_heads=2)
    files = {}
    # 4 KiB: a few rows per slab (each F16 row of 256 values needs 512 + 1024 f32 bytes + its Q4_K/Q6_K row);
    # 0: llama.cpp's default (8 GiB: every tensor in one slab).
    for slab in (4096, 0):
        monkeypatch.setattr(export, "QUANT_SLAB_BYTES", slab)
        (path,) = export_gguf(model, tmp_path / f"out{slab}", GGUFExport(types=("q4_k_m",), threads=1))
        files[slab] = path.read_bytes()
    assert files[4096] == files[0]


def test_eval_cli_measures_a_gguf_against_its_source(stories_ggufs, tmp_path, capsys):
    from camelid.cli import main

    data = tmp_path / "text.txt"
    data.write_text("Once upon a time there was a cat.\nThe cat liked to sleep in the sun.\n" * 20)
    args = ["eval", "kld", str(stories_ggufs["f16"]), "--reference", str(STORIES), "--data", str(data),
            "--seq-len", "64"]
    assert main(args) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["kld_mean"] < 1e-4 and r["top1_agreement_pct"] > 99
    assert main(["eval", "ppl", str(stories_ggufs["f16"]), "--data", str(data), "--seq-len", "64"]) == 0
    ppl = json.loads(capsys.readouterr().out)["ppl"]
    assert ppl == pytest.approx(r["ppl"], rel=1e-3)
    assert main(args + ["--kernel", "int4"]) == 2  # settings of camelid.load make no sense for a GGUF file
    assert "not GGUF files" in capsys.readouterr().err


def _tulu_ids_agree(model_dir, gguf_path, conversation):
    from camelid.tokenizer import load_tokenizer

    tok = load_tokenizer(model_dir)
    _, gguf_tok = load_gguf(gguf_path, n_ctx=64, threads=1)
    for messages in (conversation[-1:], conversation):
        text = camelid.render_template(tok, messages, template="tulu")
        assert text.startswith("<s><|user|>\n") or text.startswith("<s><|system|>\n")
        want = camelid.apply_template(tok, messages, template="tulu")
        # The rendered text carries its BOS as "<s>": llama.cpp must read it as the token, and add none.
        assert gguf_tok(text, add_special_tokens=False)["input_ids"] == want
    return want


def test_tulu_prompt_tokenizes_to_camelids_ids_stories(stories_ggufs):
    _tulu_ids_agree(STORIES, stories_ggufs["f16"], SIMPLE)


@pytest.mark.slow
def test_camel45m_f16_greedy_and_tulu_ids(shared_data, tmp_path_factory):
    src = shared_data / "models" / "camel45m"
    root = tmp_path_factory.mktemp("camel45m")
    (path,) = export_gguf(src, root / "gguf", GGUFExport(types=("f16",), chat_template="tulu"))
    # camel45m ships tokenizer.json too; camelid tokenizes it with SentencePiece all the same (camelid.tokenizer).
    ids = _tulu_ids_agree(src, path, CONVERSATION)
    assert ids[:1] == [1] and 13 in ids  # BOS, and "\n" as its byte piece <0x0A>
    model, tok = camelid.load(src, device="cpu", dtype="float32")
    lm, _ = load_gguf(path, n_ctx=256, threads=1)
    prompt = tok("Question: Tom has 3 apples and buys 4 more. How many apples does he have?\nAnswer:")["input_ids"]
    assert lm.greedy(prompt, 32) == _greedy_transformers(model, prompt, 32)
