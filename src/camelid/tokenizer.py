"""A model folder's tokenizer (`load_tokenizer`, shared by quantization, inference and evaluation), and a
SentencePiece ("slow") Llama tokenizer for Transformers 5, which only ships the `tokenizers` one.

A LLaMA-family folder with `tokenizer.model` is tokenized by SentencePiece itself, whether or not it also
ships a `tokenizer.json`: SentencePiece's ids are the ones the model was trained on (Meta's llama
`tokenizer.py` calls `sp_model.encode`; open-instruct trained and evaluated Tulu with `--use_slow_tokenizer`,
Transformers 4's `LlamaTokenizer`, whose `legacy` default was True) and the ones llama.cpp gives
(`src/llama-vocab.cpp`, `LLAMA_VOCAB_TYPE_SPM`). The converted `tokenizers` pipeline differs on real text:
- runs of spaces: SentencePiece splits words before whitespace (`split_by_whitespace`), the converted
  pipeline (Metaspace, `split: false`) merges across them: "Then  explain" is "▁", "▁explain" in
  SentencePiece and "▁▁", "exp", "lain" there; a 4-space code indent "▁▁▁", "▁return" against "▁▁▁▁", "return";
- after a special token written in the text (`</s>` between Tulu turns, a literal `<s>`): SentencePiece
  encodes each span with its dummy prefix "▁" (Transformers' legacy=True, llama.cpp's `is_prev_special`),
  Transformers 5's fast tokenizer (legacy=False) adds none;
- `remove_extra_whitespaces` (set in llama2.c's stories260K tokenizer.model): SentencePiece collapses
  repeated spaces, as the llama2.c and Meta reference tokenizers do.
"""

from __future__ import annotations

import re
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase
from transformers.tokenization_utils_sentencepiece import SPIECE_UNDERLINE, SentencePieceBackend

from camelid.checkpoint.jsonio import read_json
from camelid.errors import CheckpointError


class LlamaSentencePieceTokenizer(SentencePieceBackend):
    """Transformers-4 slow `LlamaTokenizer` semantics: BOS prepended (`add_bos_token`), legacy encoding,
    decoding through SentencePiece (so leading spaces and byte-fallback pieces come out right).

    One exception to legacy encoding: text right after a token added on top of the SentencePiece vocabulary
    (CodeLlama-70B's `<step>`, id 32015) gets no dummy prefix, its own leading space becoming the "▁". Meta's
    CodeLlama-70B reference encodes each message on its own and joins them with `<step>`; its model card's
    ids are what the HF template text (" <step> Source: ...", `<step>` lstrip) gives this way.
    """

    model_input_names = ["input_ids", "attention_mask"]

    def __init__(self, vocab_file: str, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token=None,
                 add_bos_token: bool = True, add_eos_token: bool = False, legacy: bool = True, **kwargs):
        self.add_bos_token = add_bos_token
        self.add_eos_token = add_eos_token
        kwargs.pop("special_tokens_pattern", None)
        super().__init__(vocab_file=vocab_file, unk_token=unk_token, bos_token=bos_token, eos_token=eos_token,
                         pad_token=pad_token, legacy=legacy, add_bos_token=add_bos_token,
                         add_eos_token=add_eos_token, special_tokens_pattern="none", **kwargs)

    def tokenize(self, text: str, **kwargs) -> list[str]:
        added = [t for t, i in self._added_tokens_encoder.items() if i >= self.sp_model.get_piece_size()]
        if not added or kwargs.get("split_special_tokens", self.split_special_tokens):
            return super().tokenize(text, **kwargs)
        parts = re.split("(" + "|".join(map(re.escape, sorted(added, key=len, reverse=True))) + ")", text)
        for i in range(1, len(parts), 2):  # the added tokens' lstrip/rstrip, as Transformers applies them
            token = self._added_tokens_decoder[self._added_tokens_encoder[parts[i]]]
            parts[i - 1] = parts[i - 1].rstrip() if token.lstrip else parts[i - 1]
            parts[i + 1] = parts[i + 1].lstrip() if token.rstrip else parts[i + 1]
        out = super().tokenize(parts[0], **kwargs) if parts[0] else []
        for token, span in zip(parts[1::2], parts[2::2], strict=True):
            out.append(token)
            # The span's text up to its first special token is encoded without the dummy prefix: "<unk>" +
            # text, the unk's pieces dropped (Transformers' legacy=False `_tokenize`); the rest as usual.
            head = self.tokens_trie.split(span)[0] if span else ""
            if head in self._added_tokens_encoder:
                head = ""
            if head:
                unk = len(self.sp_model.encode(self.unk_token))
                out += self.sp_model.encode(self.unk_token + head, out_type=str)[unk:]
            if len(head) < len(span):
                out += super().tokenize(span[len(head):], **kwargs)
        return out

    def build_inputs_with_special_tokens(self, token_ids_0: list[int], token_ids_1: list[int] | None = None) -> list[int]:
        bos = [self.bos_token_id] if self.add_bos_token and self.bos_token_id is not None else []
        eos = [self.eos_token_id] if self.add_eos_token and self.eos_token_id is not None else []
        out = bos + token_ids_0 + eos
        if token_ids_1 is not None:
            out += bos + token_ids_1 + eos
        return out

    def get_special_tokens_mask(self, token_ids_0, token_ids_1=None, already_has_special_tokens=False):
        if already_has_special_tokens:
            return super().get_special_tokens_mask(token_ids_0, token_ids_1, already_has_special_tokens=True)
        bos = [1] if self.add_bos_token else []
        eos = [1] if self.add_eos_token else []
        mask = bos + [0] * len(token_ids_0) + eos
        if token_ids_1 is not None:
            mask += bos + [0] * len(token_ids_1) + eos
        return mask

    def num_special_tokens_to_add(self, pair: bool = False) -> int:
        return (int(self.add_bos_token) + int(self.add_eos_token)) * (2 if pair else 1)

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        # As Transformers 4 (legacy): drop the dummy-prefix space of the first piece, decode runs of
        # ordinary pieces with SentencePiece, and keep added/special tokens verbatim.
        if tokens and tokens[0].startswith(SPIECE_UNDERLINE):
            tokens = [tokens[0][1:], *tokens[1:]]
        out, run, prev_special = "", [], False
        for i, tok in enumerate(tokens):
            if tok in self.all_special_tokens or tok in self._added_tokens_encoder:
                if not prev_special and i != 0 and self.legacy:
                    out += " "
                out += self.sp_model.decode(run) + tok
                run, prev_special = [], True
            else:
                if prev_special and i == 1 and self.legacy and tok.startswith(SPIECE_UNDERLINE):
                    out += " "
                run.append(tok)
                prev_special = False
        return out + self.sp_model.decode(run)


def load_tokenizer(model_dir: str | Path) -> PreTrainedTokenizerBase:
    """The SentencePiece tokenizer for a LLaMA-family folder with `tokenizer.model`, else `AutoTokenizer`."""
    model_dir = Path(model_dir)
    sp_file = model_dir / "tokenizer.model"
    cfg_file = model_dir / "tokenizer_config.json"
    cfg = read_json(cfg_file) if cfg_file.exists() else {}
    cls = str(cfg.get("tokenizer_class") or "LlamaTokenizer")
    # SentencePiece even when the folder also ships tokenizer.json, and legacy whatever its config says
    # (Llama-2's HF config says false): Meta's reference encodes "[INST]" after BOS as "▁[", as legacy does.
    if sp_file.exists() and cls.removesuffix("Fast") in ("LlamaTokenizer", "CodeLlamaTokenizer"):
        return LlamaSentencePieceTokenizer.from_pretrained(str(model_dir), legacy=True)
    try:
        return AutoTokenizer.from_pretrained(str(model_dir))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{model_dir}: cannot load a tokenizer ({e})") from e
