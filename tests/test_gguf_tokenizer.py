"""camelid, SentencePiece and llama.cpp agree on the ids of chat prompts for LLaMA-family tokenizers.

llama.cpp reads the vocabulary camelid's GGUF export writes (a vocab-only GGUF, as llama.cpp's own
tokenizer tests use, `Llama(vocab_only=True)`). The SentencePiece reference is what Transformers 4's slow
LlamaTokenizer (legacy) and open-instruct's Tulu training did: the text split at the special tokens written in
it, each span encoded by `sp_model.encode` (its dummy prefix included).
"""

from __future__ import annotations

import json
import re
import shutil

import pytest

pytest.importorskip("gguf", reason="GGUF export needs the gguf package (the gguf extra)")
llama_cpp = pytest.importorskip("llama_cpp", reason="needs llama-cpp-python (pip install 'camelid[gguf]')")

import sentencepiece as spm  # noqa: E402
from helpers import STORIES  # noqa: E402
from test_chat_templates import CODELLAMA_IDS, DIALOG  # noqa: E402

from camelid.chat import apply_template, render_template  # noqa: E402
from camelid.export.gguf import GGUF_TYPES, _header_writer  # noqa: E402
from camelid.export.gguf_vocab import read_vocab  # noqa: E402
from camelid.tokenizer import load_tokenizer  # noqa: E402

pytestmark = pytest.mark.llamacpp
TULU = [  # runs of spaces, blank lines, a space after a newline, and </s> between turns
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Sum 2 and 3.\nThen  explain\n\n briefly."},
    {"role": "assistant", "content": "5, because 2 + 3 = 5."},
    {"role": "user", "content": "Write it in Python:\ndef add(a, b):\n    return a + b"},
]
# stories260K's tokenizer.model sets remove_extra_whitespaces, which llama.cpp's SPM tokenizer does not apply
# (camelid.export.gguf_vocab): no runs of spaces here.
TULU_SIMPLE = [{"role": "user", "content": "Tell me a story.\nAbout a cat\n\nnamed Tom."},
               {"role": "assistant", "content": "Once upon a time."}, {"role": "user", "content": "More!"}]


def vocab_gguf(model_dir, path):
    """A GGUF with camelid's metadata and vocabulary and no tensors."""
    cfg = json.loads((model_dir / "config.json").read_text())
    w = _header_writer(cfg, [], GGUF_TYPES["f16"], read_vocab(model_dir, cfg["vocab_size"]), "vocab")
    w.write_header_to_file(path)
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    return lambda text: llm.tokenize(text.encode(), add_bos=False, special=True)


def sentencepiece_ids(model_dir, text: str) -> list[int]:
    sp = spm.SentencePieceProcessor(model_file=str(model_dir / "tokenizer.model"))
    ids = []
    for span in re.split("(<s>|</s>)", text):
        ids += [sp.bos_id()] if span == "<s>" else [sp.eos_id()] if span == "</s>" else sp.encode(span) if span else []
    return ids


@pytest.fixture(scope="module")
def camel45m(shared_data):
    return shared_data / "models" / "camel45m"


@pytest.mark.parametrize("which", ["camel45m", "stories260K"])
def test_tulu_ids_agree(which, camel45m, tmp_path):
    model_dir, conversation = (camel45m, TULU) if which == "camel45m" else (STORIES, TULU_SIMPLE)
    assert which != "camel45m" or (model_dir / "tokenizer.json").exists()  # SentencePiece all the same
    tok = load_tokenizer(model_dir)
    llama = vocab_gguf(model_dir, tmp_path / "vocab.gguf")
    for messages in (conversation[-1:], conversation):
        text = render_template(tok, messages, template="tulu")
        ids = apply_template(tok, messages, template="tulu")
        assert text.startswith("<s><|")  # the template writes BOS; llama.cpp reads it as the token
        assert ids == sentencepiece_ids(model_dir, text) == llama(text)
    assert 2 in ids and 13 in ids  # EOS between turns; "\n" as the byte piece <0x0A>


def test_plain_text_ids_agree(camel45m, tmp_path):
    tok = load_tokenizer(camel45m)
    llama = vocab_gguf(camel45m, tmp_path / "vocab.gguf")
    text = "Question: Tom has 3 apples.\n\n  How many?  Answer:\tfour   "
    assert tok(text)["input_ids"] == [1, *sentencepiece_ids(camel45m, text)] == [1, *llama(text)]


@pytest.fixture(scope="module")
def codellama70b_dir(shared_data, tmp_path_factory):
    """The LLaMA-2 tokenizer.model and CodeLlama-70B's 16 added tokens (lstrip), `<step>` = 32015, as a folder."""
    d = tmp_path_factory.mktemp("codellama70b")
    shutil.copy(shared_data / "tokenizers" / "llama2" / "tokenizer.model", d / "tokenizer.model")
    names = [f"<reserved_{i}>" for i in range(15)] + ["<step>"]
    (d / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "CodeLlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "legacy": False, "added_tokens_decoder": {str(32000 + i): {
            "content": n, "lstrip": True, "rstrip": False, "normalized": False, "special": True,
            "single_word": False} for i, n in enumerate(names)}}))
    (d / "config.json").write_text(json.dumps({
        "model_type": "llama", "vocab_size": 32016, "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 1, "num_attention_heads": 1, "rms_norm_eps": 1e-5, "max_position_embeddings": 64}))
    return d


def test_codellama70b_ids_are_meta_s_and_llama_cpp_s_differ_only_at_step(codellama70b_dir, tmp_path):
    tok = load_tokenizer(codellama70b_dir)
    ids = apply_template(tok, DIALOG, "codellama-70b-instruct")
    # Meta's reference: each message encoded by SentencePiece on its own, joined by <step> (the model card ids).
    sp = spm.SentencePieceProcessor(model_file=str(codellama70b_dir / "tokenizer.model"))
    segments = render_template(tok, DIALOG, "codellama-70b-instruct").removeprefix("<s>").split(" <step> ")
    meta = [1]
    for i, segment in enumerate(segments):
        meta += ([32015] if i else []) + sp.encode(segment)
    assert ids == meta == CODELLAMA_IDS
    # llama.cpp ignores <step>'s lstrip and puts its dummy-prefix "▁" (29871) after every special token: it
    # reads the same text with a "▁" on each side of <step>, and otherwise the same ids.
    llama = vocab_gguf(codellama70b_dir, tmp_path / "vocab.gguf")
    got = llama(render_template(tok, DIALOG, "codellama-70b-instruct"))
    want = [t for i in ids for t in ([29871, 32015, 29871] if i == 32015 else [i])]
    assert got == want
    for segment in segments[1:]:  # each message alone: llama.cpp, SentencePiece and camelid agree
        assert llama(segment) == sp.encode(segment) == tok(segment, add_special_tokens=False)["input_ids"]
