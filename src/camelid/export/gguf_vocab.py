"""A SentencePiece Llama tokenizer as GGUF metadata: vocabulary, scores, token types, special ids, chat template.

The layout is llama.cpp's "llama" (SPM) vocabulary as its converter writes it (`convert_hf_to_gguf.py`,
`_create_vocab_sentencepiece` + gguf-py `SpecialVocab`): pieces and scores from `tokenizer.model`, token
types 1 normal, 2 unknown, 3 control, 5 unused, 6 byte (SentencePiece's own flags), added tokens as
control (special) or user-defined with score -1000, ids past the tokenizer padded as `[PAD{i}]` (unused,
score -10000). Special ids, `add_bos`/`add_eos` and the chat template are taken from the tokenizer camelid
itself runs (`camelid.runtime.tokenizer.load_tokenizer`), so llama.cpp and camelid agree on the ids.
"""

from __future__ import annotations

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


def read_vocab(model_dir: Path, vocab_size: int, chat_template: str | None = None) -> GGUFVocab:
    """The GGUF vocabulary of `model_dir`; `chat_template` (a camelid template name or Jinja) replaces the
    model's own chat template, if it has one."""
    from camelid.chat import template_source
    from camelid.runtime.tokenizer import load_tokenizer

    tokens, scores, types, add_space_prefix = _sentencepiece(model_dir, vocab_size)
    tok = load_tokenizer(model_dir)
    for i, added in tok.added_tokens_decoder.items():
        if i >= vocab_size:
            raise CheckpointError(f"{model_dir}: added token {added.content!r} has id {i}, past vocab_size {vocab_size}")
        if tokens[i] == added.content.encode("utf-8") and types[i] in (T.UNKNOWN, T.CONTROL):
            continue  # SentencePiece's own <unk>, <s>, </s>
        # User-defined pieces are matched on the text before SentencePiece's "▁" escaping, as the converter does.
        tokens[i] = (added.content if added.special else added.content.replace("\u2581", " ")).encode("utf-8")
        types[i] = int(T.CONTROL if added.special else T.USER_DEFINED)
        scores[i] = -1000.0
    special = {kind: getattr(tok, f"{kind}_token_id") for kind in ("bos", "eos", "unk", "pad")}
    probe = tok("a")["input_ids"]  # what camelid's tokenizer adds around a text, llama.cpp must add too
    if chat_template is not None:
        chat_template = template_source(tok, chat_template)
    else:
        own = getattr(tok, "chat_template", None)
        chat_template = own.get("default") if isinstance(own, dict) else own
    return GGUFVocab(
        tokens, scores, types, {k: v for k, v in special.items() if v is not None},
        add_bos=bool(probe) and probe[0] == tok.bos_token_id, add_eos=bool(probe) and probe[-1] == tok.eos_token_id,
        add_space_prefix=add_space_prefix, chat_template=chat_template or None,
    )


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
