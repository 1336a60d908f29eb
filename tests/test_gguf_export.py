"""GGUF export read back with gguf-py's GGUFReader: metadata, vocabulary, tensor names/shapes/types, and the
data (Q/K permutation inverted) equal to the source. llama.cpp itself runs the files in test_gguf_llamacpp.py."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

gguf = pytest.importorskip("gguf", reason="GGUF export needs the gguf package (the gguf/compat extras)")

from helpers import STORIES, write_tiny_gptq_llama, write_tiny_llama  # noqa: E402

from camelid.checkpoint import Checkpoint  # noqa: E402
from camelid.errors import CamelidError, CheckpointError  # noqa: E402
from camelid.export import GGUFExport, export_gguf, gguf_tensors  # noqa: E402
from camelid.export.gguf_tensors import permute_rows, unpermute_rows  # noqa: E402

Q = gguf.GGMLQuantizationType


def _fields(reader) -> dict:
    return {k: f.contents() for k, f in reader.fields.items()}


def _tensor(t) -> np.ndarray:
    """A GGUF tensor's values as float32 in HF (row-major) shape."""
    return gguf.quants.dequantize(t.data, t.tensor_type).reshape(tuple(int(d) for d in reversed(t.shape)))


def _expected_names(ckpt: Checkpoint) -> dict[str, str]:
    """HF -> GGUF names from gguf-py's own table for LLAMA (an independent check of camelid's)."""
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, ckpt.config["num_hidden_layers"])
    out = {}
    for src in ckpt.tensors:
        if ckpt.config.get("tie_word_embeddings") and src == "lm_head.weight":
            continue
        out[names.get_name(src, try_suffixes=(".weight", ".bias"))] = src
    return out


def _check_against_source(path, ckpt: Checkpoint, atol_of_max: float) -> dict:
    cfg = ckpt.config
    reader = gguf.GGUFReader(path)
    expected = _expected_names(ckpt)
    assert {t.name for t in reader.tensors} == set(expected)
    types = {}
    for t in reader.tensors:
        src = ckpt.read(expected[t.name]).float().numpy()
        got = _tensor(t)
        assert got.shape == src.shape, t.name
        if ".attn_q." in t.name or ".attn_k." in t.name:
            heads = cfg["num_attention_heads"] if ".attn_q." in t.name else cfg["num_key_value_heads"]
            assert not np.array_equal(got, src)  # the rows were moved...
            got = unpermute_rows(got, heads)  # ...and moving them back gives the source
        np.testing.assert_allclose(got, src, rtol=0, atol=atol_of_max * np.abs(src).max(), err_msg=t.name)
        types[t.name] = t.tensor_type
    return types


@pytest.fixture(scope="module")
def stories_ggufs(tmp_path_factory):
    out = tmp_path_factory.mktemp("gguf")
    paths = export_gguf(STORIES, out, GGUFExport(types=("f16", "q8_0", "Q4_0", "bf16"), name="stories260k",
                                                 chat_template="tulu"))
    return dict(zip(("f16", "q8_0", "q4_0", "bf16"), paths, strict=True))


def test_files_are_named_as_on_the_cards(stories_ggufs):
    assert [p.name for p in stories_ggufs.values()] == [
        "stories260k.F16.gguf", "stories260k.Q8_0.gguf", "stories260k.Q4_0.gguf", "stories260k.BF16.gguf"]
    assert not list(stories_ggufs["f16"].parent.glob("*.partial"))


def test_metadata_and_vocabulary(stories_ggufs):
    import sentencepiece as spm

    from camelid.chat import TEMPLATES

    cfg = json.loads((STORIES / "config.json").read_text())
    f = _fields(gguf.GGUFReader(stories_ggufs["q8_0"]))
    assert f["general.architecture"] == "llama" and f["general.name"] == "stories260k"
    assert f["general.file_type"] == gguf.LlamaFileType.MOSTLY_Q8_0 == 7  # not the tensor type's 8
    assert f["general.quantization_version"] == 2
    assert (f["llama.block_count"], f["llama.embedding_length"], f["llama.feed_forward_length"]) == (
        cfg["num_hidden_layers"], cfg["hidden_size"], cfg["intermediate_size"])
    assert (f["llama.attention.head_count"], f["llama.attention.head_count_kv"]) == (8, 4)
    assert f["llama.context_length"] == cfg["max_position_embeddings"]
    assert f["llama.rope.dimension_count"] == cfg["hidden_size"] // cfg["num_attention_heads"]
    assert f["llama.rope.freq_base"] == cfg["rope_theta"]
    assert f["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(cfg["rms_norm_eps"])
    sp = spm.SentencePieceProcessor(model_file=str(STORIES / "tokenizer.model"))
    assert f["tokenizer.ggml.model"] == "llama"
    assert f["tokenizer.ggml.tokens"] == [sp.id_to_piece(i) for i in range(sp.vocab_size())]
    np.testing.assert_allclose(f["tokenizer.ggml.scores"], [sp.get_score(i) for i in range(sp.vocab_size())])
    token_type = f["tokenizer.ggml.token_type"]
    assert token_type[:3] == [2, 3, 3]  # <unk> unknown, <s> </s> control
    assert token_type[3:259] == [6] * 256  # byte fallback pieces <0x00>..<0xFF>
    assert set(token_type[259:]) == {1}
    assert (f["tokenizer.ggml.bos_token_id"], f["tokenizer.ggml.eos_token_id"],
            f["tokenizer.ggml.unknown_token_id"]) == (1, 2, 0)
    assert f["tokenizer.ggml.add_bos_token"] is True and f["tokenizer.ggml.add_eos_token"] is False
    assert f["tokenizer.chat_template"] == TEMPLATES["tulu"].source


def test_tensors_read_back_equal_the_source(stories_ggufs):
    ckpt = Checkpoint(STORIES)  # fp32 weights
    types = _check_against_source(stories_ggufs["f16"], ckpt, atol_of_max=1e-3)
    assert {types[n] for n in types if n.endswith("norm.weight")} == {Q.F32}
    assert "output.weight" not in types  # tied embeddings: llama.cpp reuses token_embd
    types = _check_against_source(stories_ggufs["q8_0"], ckpt, atol_of_max=1 / 127)
    assert types["token_embd.weight"] == types["blk.0.attn_q.weight"] == Q.Q8_0
    # ffn_down rows have 172 values, not whole 32-value blocks: F16, as llama.cpp's converter falls back
    assert types["blk.0.ffn_down.weight"] == Q.F16
    types = _check_against_source(stories_ggufs["q4_0"], ckpt, atol_of_max=1 / 7)
    assert types["blk.0.attn_v.weight"] == Q.Q4_0
    _check_against_source(stories_ggufs["bf16"], ckpt, atol_of_max=1 / 128)


def test_fp16_untied_model_is_copied_exactly(tmp_path, monkeypatch):
    # Small chunks: q/k are read, permuted and encoded several heads at a time; the result must not change.
    monkeypatch.setattr(gguf_tensors, "CHUNK_ELEMS", 300)
    model = write_tiny_llama(tmp_path / "m")
    (path,) = export_gguf(model, tmp_path / "out", GGUFExport(types=("f16",)))
    assert path.name == "m.F16.gguf"
    ckpt = Checkpoint(model)
    types = _check_against_source(path, ckpt, atol_of_max=0)  # fp16 -> F16: bit for bit
    assert types["output.weight"] == Q.F16
    f = _fields(gguf.GGUFReader(path))
    assert "tokenizer.chat_template" not in f  # the model has none and none was asked for


def test_planned_bytes_are_the_written_bytes(stories_ggufs):
    # camelid release plans each GGUF file's size before writing it (the card's Size column, --plan)
    from camelid.export.gguf import GGUF_TYPES, planned_file_bytes
    from camelid.export.gguf_vocab import read_vocab

    ckpt = Checkpoint(STORIES)
    vocab = read_vocab(ckpt.dir, ckpt.config["vocab_size"], "tulu")
    for t, path in stories_ggufs.items():
        assert planned_file_bytes(ckpt, GGUF_TYPES[t], vocab, "stories260k") == path.stat().st_size, t


def test_export_runs_without_torch(tmp_path):
    # Importing torch costs ~225 MB of RSS, more than a third of the export's memory target
    # (benchmarks/gguf_export.py --rss): safetensors are read with numpy and torch is never imported.
    import subprocess

    code = ("import sys; from camelid.export import GGUFExport, export_gguf; "
            f"export_gguf({str(STORIES)!r}, {str(tmp_path)!r}, GGUFExport(types=('f16', 'q8_0'))); "
            "print('torch' in sys.modules, 'transformers' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["False", "False"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stories260k.F16.gguf", "stories260k.Q8_0.gguf"]


def test_permutation_is_llamas_interleaving():
    # One head of 4 rotary dims, HF order [x0, x1 | y0, y1] (rotate-half halves) -> GGML pairs x0 y0 x1 y1.
    w = np.arange(8, dtype=np.float32).reshape(4, 2)
    assert permute_rows(w, 1).tolist() == [[0, 1], [4, 5], [2, 3], [6, 7]]
    assert np.array_equal(unpermute_rows(permute_rows(w, 1), 1), w)


def test_bad_inputs_fail_before_writing(tmp_path):
    with pytest.raises(CamelidError, match="unknown GGUF type 'q4_x'"):
        export_gguf(STORIES, tmp_path / "a", GGUFExport(types=("f16", "q4_x")))
    assert not (tmp_path / "a").exists()
    write_tiny_gptq_llama(tmp_path / "gptq")
    with pytest.raises(CheckpointError, match="quantized"):
        export_gguf(tmp_path / "gptq", tmp_path / "b", GGUFExport())
    out = tmp_path / "c"
    out.mkdir()
    (out / "stories260k.F16.gguf").write_text("keep me")
    with pytest.raises(CamelidError, match="already exists"):
        export_gguf(STORIES, out, GGUFExport(types=("q8_0", "f16"), name="stories260k"))
    with pytest.raises(CamelidError, match="not a GGUF file"):  # --overwrite replaces GGUF files only
        export_gguf(STORIES, out, GGUFExport(types=("q8_0", "f16"), name="stories260k", overwrite=True))
    assert sorted(p.name for p in out.iterdir()) == ["stories260k.F16.gguf"]
    assert (out / "stories260k.F16.gguf").read_text() == "keep me"
    (out / "stories260k.F16.gguf").unlink()
    first = export_gguf(STORIES, out, GGUFExport(types=("f16",), name="stories260k"))[0].read_bytes()
    export_gguf(STORIES, out, GGUFExport(types=("f16",), name="stories260k", overwrite=True))
    assert (out / "stories260k.F16.gguf").read_bytes() == first


def test_failure_midway_leaves_no_file(tmp_path, monkeypatch):
    def broken(x, qtype):
        raise OSError("disk on fire")

    monkeypatch.setattr(gguf_tensors, "encode", broken)
    with pytest.raises(OSError, match="disk on fire"):
        export_gguf(STORIES, tmp_path, GGUFExport(types=("q8_0",)))
    assert list(tmp_path.iterdir()) == []


def test_k_quants_without_llama_cpp_name_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import llama_cpp raises ImportError
    with pytest.raises(CamelidError, match=r"GGUF types Q4_K_M needs llama-cpp-python: pip install 'camelid\[gguf\]'"):
        export_gguf(STORIES, tmp_path / "out", GGUFExport(types=("f16", "q4_k_m")))
    assert not (tmp_path / "out").exists()


def test_cli_export(tmp_path, capsys):
    from camelid.cli import main

    assert main(["export", "gguf", str(STORIES), str(tmp_path), "--types", "q8_0,f16", "--name", "s"]) == 0
    out = capsys.readouterr().out
    assert "s.Q8_0.gguf" in out and "s.F16.gguf" in out
    assert main(["export", "gguf", str(STORIES), str(tmp_path), "--types", "q8_0", "--name", "s"]) == 2
    assert "already exists" in capsys.readouterr().err


def _tulu_like(tmp_path):
    """stories260K's tokenizer plus a [PAD] token (id 512, as Tulu's 32000) and a chat_template.jinja."""
    folder = tmp_path / "tulu-like"
    folder.mkdir()
    for name in ("tokenizer.model", "tokenizer_config.json"):
        (folder / name).write_bytes((STORIES / name).read_bytes())
    (folder / "added_tokens.json").write_text(json.dumps({"[PAD]": 512}))
    (folder / "special_tokens_map.json").write_text(json.dumps({"pad_token": "[PAD]"}))
    (folder / "chat_template.jinja").write_text("{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}")
    (folder / "config.json").write_text(json.dumps({"vocab_size": 514}))
    return folder


@pytest.mark.parametrize("which", ["stories260K", "camel45m", "tulu-like"])
def test_vocab_agrees_with_camelids_tokenizer(which, shared_data, tmp_path):
    from camelid.export.gguf_vocab import read_vocab
    from camelid.tokenizer import load_tokenizer

    folder = {"stories260K": STORIES, "camel45m": shared_data / "models" / "camel45m"}.get(which) or _tulu_like(tmp_path)
    n = json.loads((folder / "config.json").read_text())["vocab_size"]
    vocab = read_vocab(folder, n)
    tok = load_tokenizer(folder)
    assert len(vocab.tokens) == n
    assert vocab.special_ids == {
        k: getattr(tok, f"{k}_token_id") for k in ("bos", "eos", "unk", "pad") if getattr(tok, f"{k}_token_id") is not None}
    probe = tok("a b")["input_ids"]
    assert vocab.add_bos == (probe[0] == tok.bos_token_id) and vocab.add_eos == (probe[-1] == tok.eos_token_id)
    assert vocab.chat_template == (tok.chat_template or None)
    for i, added in tok.added_tokens_decoder.items():
        assert vocab.tokens[i] == added.content.encode()
        T = gguf.TokenType
        assert vocab.types[i] == (T.UNKNOWN if i == tok.unk_token_id else T.CONTROL if added.special else T.USER_DEFINED)
    if which == "tulu-like":
        assert vocab.special_ids["pad"] == 512 and vocab.types[513] == gguf.TokenType.UNUSED
        assert vocab.tokens[513] == b"[PAD513]"
