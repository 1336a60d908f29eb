"""A SentencePiece Llama tokenizer as GGUF metadata: vocabulary, scores, token types, special ids, chat template.

The layout is llama.cpp's "llama" (SPM) vocabulary as its converter writes it (`convert_hf_to_gguf.py`,
`_create_vocab_sentencepiece` + gguf-py `SpecialVocab`): pieces and scores from `tokenizer.model`, token
types 1 normal, 2 unknown, 3 control, 5 unused, 6 byte (SentencePiece's own flags), added tokens as
control (special) or user-defined with score -1000, ids past the tokenizer padded as `[PAD{i}]` (unused,
score -10000). Special ids, `add_bos`/`add_eos` and the chat template are resolved as the tokenizer camelid
itself runs (`camelid.tokenizer.load_tokenizer`) resolves them, so llama.cpp and camelid agree on ids.

One difference llama.cpp keeps: its SPM tokenizer does not apply SentencePiece's `remove_extra_whitespaces`
normalization (llama.cpp `src/llama-vocab.cpp` reads that flag for UGM vocabularies only), so for a
tokenizer.model with it set (llama2.c's stories260K; not LLaMA-1/2's) runs of spaces tokenize differently.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import gguf

from camelid.errors import CheckpointError

T = gguf.TokenType


@dataclass(frozen=True)
class GGUFVocab:
    tokens: list[bytes]
    scores: list[float]
    types: list[int]
    special_ids: dict[str, int]  # "bos", "eos", "unk", "pad" -> id
    add_bos: bool
    add_eos: bool
    add_space_prefix: bool  # SentencePiece's add_dummy_prefix
    chat_template: str | None


def _sentencepiece(model_dir: Path, vocab_size: int) -> tuple[list[bytes], list[float], list[int], bool]:
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2

    path = model_dir / "tokenizer.model"
    if not path.is_file():
        raise CheckpointError(f"{model_dir}: GGUF export needs the SentencePiece tokenizer.model "
                              "(LLaMA-1/2 vocabularies); BPE tokenizers (Llama 3) are not supported")
    try:
        sp = spm.SentencePieceProcessor(model_file=str(path))
        proto = sentencepiece_model_pb2.ModelProto.FromString(path.read_bytes())
    except (RuntimeError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a SentencePiece model ({e})") from e
    if sp.vocab_size() > vocab_size:
        raise CheckpointError(f"{path} has {sp.vocab_size()} pieces, more than the model's vocab_size {vocab_size}")
    tokens = [f"[PAD{i}]".encode() for i in range(vocab_size)]
    scores = [-10000.0] * vocab_size
    types = [int(T.UNUSED)] * vocab_size
    for i in range(sp.vocab_size()):
        tokens[i] = sp.id_to_piece(i).encode("utf-8")
        scores[i] = sp.get_score(i)
        types[i] = int(T.UNKNOWN if sp.is_unknown(i) else T.CONTROL if sp.is_control(i)
                       else T.UNUSED if sp.is_unused(i) else T.BYTE if sp.is_byte(i) else T.NORMAL)
    return tokens, scores, types, proto.normalizer_spec.add_dummy_prefix


def _json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise CheckpointError(f"{path}: invalid JSON ({e})") from e


def _added_tokens(model_dir: Path, special_texts: set[str]) -> dict[int, tuple[str, bool]]:
    """id -> (text, special) from tokenizer.json, tokenizer_config.json's added_tokens_decoder and
    added_tokens.json (the files Transformers builds a tokenizer's added tokens from); a token named as
    bos/eos/unk/pad token is special."""
    added = {int(t["id"]): (t["content"], bool(t.get("special"))) for t in
             _json(model_dir / "tokenizer.json").get("added_tokens", [])}
    for i, t in _json(model_dir / "tokenizer_config.json").get("added_tokens_decoder", {}).items():
        added[int(i)] = (t["content"], bool(t.get("special")))
    for text, i in _json(model_dir / "added_tokens.json").items():
        added.setdefault(int(i), (text, False))
    return {i: (text, special or text in special_texts) for i, (text, special) in added.items()}


def _token_text(entry) -> str | None:
    return entry.get("content") if isinstance(entry, dict) else entry


def _adds_bos(tok_cfg: dict) -> bool:
    """Whether the tokenizer camelid loads (camelid.tokenizer's SentencePiece one) puts BOS before a text: the
    config's add_bos_token, else yes."""
    return tok_cfg["add_bos_token"] if isinstance(tok_cfg.get("add_bos_token"), bool) else True


def _chat_template(model_dir: Path, tok_cfg: dict, override: str | None) -> str | None:
    """`override` (a camelid template name or Jinja), else the model's own: tokenizer_config.json's
    chat_template, chat_template.jinja or chat_template.json (the "default" of a list of named ones)."""
    from camelid.chat import template_source

    if override is not None:
        return template_source(None, override)
    own = tok_cfg.get("chat_template")
    if own is None and (model_dir / "chat_template.jinja").is_file():
        own = (model_dir / "chat_template.jinja").read_text(encoding="utf-8")
    elif own is None:
        own = _json(model_dir / "chat_template.json").get("chat_template")
    if isinstance(own, list):
        own = next((t["template"] for t in own if t.get("name") == "default"), None)
    return own or None


def read_vocab(model_dir: Path, vocab_size: int, chat_template: str | None = None) -> GGUFVocab:
    """The GGUF vocabulary of `model_dir`; `chat_template` (a camelid template name or Jinja) replaces the
    model's own chat template, if it has one.

    Read from the tokenizer files directly, as the tokenizer camelid runs resolves them (tests check the
    two agree): importing Transformers would take more memory than streaming a 7B model's tensors.
    """
    tokens, scores, types, add_space_prefix = _sentencepiece(model_dir, vocab_size)
    tok_cfg = _json(model_dir / "tokenizer_config.json")
    special_map = _json(model_dir / "special_tokens_map.json")
    special_texts = {kind: _token_text(tok_cfg.get(f"{kind}_token")) or _token_text(special_map.get(f"{kind}_token"))
                     or default for kind, default in (("bos", "<s>"), ("eos", "</s>"), ("unk", "<unk>"), ("pad", None))}
    for i, (text, special) in sorted(_added_tokens(model_dir, set(special_texts.values()) - {None}).items()):
        if i >= vocab_size:
            raise CheckpointError(f"{model_dir}: added token {text!r} has id {i}, past vocab_size {vocab_size}")
        if tokens[i] == text.encode("utf-8") and types[i] in (T.UNKNOWN, T.CONTROL):
            continue  # SentencePiece's own <unk>, <s>, </s>
        # User-defined pieces are matched on the text before SentencePiece's "▁" escaping, as the converter does.
        tokens[i] = (text if special else text.replace("\u2581", " ")).encode("utf-8")
        types[i] = int(T.CONTROL if special else T.USER_DEFINED)
        scores[i] = -1000.0
    model_cfg = _json(model_dir / "config.json")
    ids = {t: i for i, t in enumerate(tokens)}
    special_ids = {}
    for kind, text in special_texts.items():
        token_id = ids.get(text.encode("utf-8")) if text else None
        if token_id is None and isinstance(model_cfg.get(f"{kind}_token_id"), int):
            token_id = model_cfg[f"{kind}_token_id"]  # as gguf-py's SpecialVocab falls back to config.json
        if token_id is not None:
            special_ids[kind] = token_id
    return GGUFVocab(tokens, scores, types, special_ids, add_bos=_adds_bos(tok_cfg),
                     add_eos=bool(tok_cfg.get("add_eos_token", False)), add_space_prefix=add_space_prefix,
                     chat_template=_chat_template(model_dir, tok_cfg, chat_template))


def add_vocab(writer: gguf.GGUFWriter, vocab: GGUFVocab) -> None:
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(vocab.tokens)
    writer.add_token_scores(vocab.scores)
    writer.add_token_types(vocab.types)
    adders = {"bos": writer.add_bos_token_id, "eos": writer.add_eos_token_id, "unk": writer.add_unk_token_id,
              "pad": writer.add_pad_token_id}
    for kind, token_id in vocab.special_ids.items():
        adders[kind](token_id)
    writer.add_add_bos_token(vocab.add_bos)
    writer.add_add_eos_token(vocab.add_eos)
    writer.add_add_space_prefix(vocab.add_space_prefix)
    if vocab.chat_template is not None:
        writer.add_chat_template(vocab.chat_template)
