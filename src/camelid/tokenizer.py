"""A model folder's tokenizer (`load_tokenizer`, shared by quantization, inference and evaluation), and a
SentencePiece ("slow") Llama tokenizer for Transformers 5, which only ships the `tokenizers` one.

The two differ on real inputs: SentencePiece normalizes text (e.g. collapses repeated spaces, as the
llama2.c and Meta reference tokenizers do), while the converted `tokenizers` pipeline keeps every space.
Models trained with the SentencePiece tokenizer (stories260K, LLaMA-1/2) need the SentencePiece one to
reproduce their reference ids, so `load_tokenizer` picks it whenever a folder ships `tokenizer.model`.
This mirrors Transformers 4's slow `LlamaTokenizer` with `legacy=True`.
"""

from __future__ import annotations

from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase
from transformers.tokenization_utils_sentencepiece import SPIECE_UNDERLINE, SentencePieceBackend

from camelid.checkpoint.jsonio import read_json
from camelid.errors import CheckpointError


class LlamaSentencePieceTokenizer(SentencePieceBackend):
    """Transformers-4 slow `LlamaTokenizer` semantics: BOS prepended (`add_bos_token`), legacy encoding,
    decoding through SentencePiece (so leading spaces and byte-fallback pieces come out right)."""

    model_input_names = ["input_ids", "attention_mask"]

    def __init__(self, vocab_file: str, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token=None,
                 add_bos_token: bool = True, add_eos_token: bool = False, legacy: bool = True, **kwargs):
        self.add_bos_token = add_bos_token
        self.add_eos_token = add_eos_token
        kwargs.pop("special_tokens_pattern", None)
        super().__init__(vocab_file=vocab_file, unk_token=unk_token, bos_token=bos_token, eos_token=eos_token,
                         pad_token=pad_token, legacy=legacy, add_bos_token=add_bos_token,
                         add_eos_token=add_eos_token, special_tokens_pattern="none", **kwargs)

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
    """The SentencePiece tokenizer for a LLaMA-family folder with `tokenizer.model` and no `tokenizer.json`,
    else `AutoTokenizer`."""
    model_dir = Path(model_dir)
    sp_file = model_dir / "tokenizer.model"
    cfg_file = model_dir / "tokenizer_config.json"
    cfg = read_json(cfg_file) if cfg_file.exists() else {}
    cls = str(cfg.get("tokenizer_class") or "LlamaTokenizer")
    # A folder that ships tokenizer.json was published (and verified, e.g. CodeLlama-70B's model card) with
    # the fast tokenizer, whose added tokens behave differently (no dummy-prefix "▁" after `<step>`): use it.
    has_fast = (model_dir / "tokenizer.json").exists()
    if sp_file.exists() and not has_fast and cls.removesuffix("Fast") in ("LlamaTokenizer", "CodeLlamaTokenizer"):
        return LlamaSentencePieceTokenizer.from_pretrained(str(model_dir))
    try:
        return AutoTokenizer.from_pretrained(str(model_dir))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{model_dir}: cannot load a tokenizer ({e})") from e
