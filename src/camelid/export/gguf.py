"""HF Llama folder -> GGUF files for llama.cpp (and Ollama, LM Studio), one per quantization type.

`export_gguf(model, out, GGUFExport(types=("f16", "q8_0", "q4_k_m")))` writes `out/<name>.F16.gguf`,
`out/<name>.Q8_0.gguf`, `out/<name>.Q4_K_M.gguf` (TheBloke's naming, `<name>` the lower-cased model name).
The types gguf-py can quantize (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1: gguf `quants.py`) are written
directly, every matrix in that type (llama-quantize's mixes would keep some tensors wider); the K-quant mixes
(Q2_K ... Q6_K and the _S/_M/_L variants: gguf-py can only dequantize them) come from llama.cpp's own
quantizer (`llama_model_quantize`, through llama-cpp-python) applied to a lossless GGUF of the model.

Everything streams: tensor metadata is planned from the checkpoint header, the GGUF header, key-values and
tensor infos are written by gguf's GGUFWriter, and tensor data is read, permuted and encoded ~1M values at
a time into the file, so peak memory stays near one chunk whatever the model size. Each file is written to
`<file>.partial` and renamed when complete.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from camelid.checkpoint import (
    Checkpoint,
    atomic_output_file,
    check_output_file,
    ensure_free_space,
    open_checkpoint,
)
from camelid.errors import CamelidError, CheckpointError

try:
    import gguf
except ImportError as e:  # an optional extra
    raise CamelidError("GGUF export needs the gguf package: pip install 'camelid[gguf]'") from e

from camelid.export.gguf_tensors import GGUFTensor, encoded_chunks, plan_tensors
from camelid.export.gguf_vocab import add_vocab, read_vocab

Q, F = gguf.GGMLQuantizationType, gguf.LlamaFileType
GGUF_MAGIC = b"GGUF"  # the file's first bytes (gguf constants.GGUF_MAGIC, little-endian)


@dataclass(frozen=True)
class GGUFType:
    name: str  # as in the file name and on the cards: "Q4_K_M"
    file_type: gguf.LlamaFileType  # `general.file_type` (a different numbering from the tensor types)
    tensor_type: gguf.GGMLQuantizationType | None  # written by gguf-py; None: llama.cpp's quantizer

    @property
    def needs_llama_cpp(self) -> bool:
        return self.tensor_type is None


GGUF_TYPES: dict[str, GGUFType] = {t.name.lower(): t for t in (
    GGUFType("F32", F.ALL_F32, Q.F32), GGUFType("F16", F.MOSTLY_F16, Q.F16), GGUFType("BF16", F.MOSTLY_BF16, Q.BF16),
    GGUFType("Q8_0", F.MOSTLY_Q8_0, Q.Q8_0), GGUFType("Q5_1", F.MOSTLY_Q5_1, Q.Q5_1),
    GGUFType("Q5_0", F.MOSTLY_Q5_0, Q.Q5_0), GGUFType("Q4_1", F.MOSTLY_Q4_1, Q.Q4_1),
    GGUFType("Q4_0", F.MOSTLY_Q4_0, Q.Q4_0),
    *(GGUFType(n, F[f"MOSTLY_{n}"], None) for n in (
        "Q6_K", "Q5_K_M", "Q5_K_S", "Q4_K_M", "Q4_K_S", "Q3_K_L", "Q3_K_M", "Q3_K_S", "Q2_K")),
)}
# llama-quantize's short names (tools/quantize/quantize.cpp QUANT_OPTIONS): "Q4_K" is an alias of Q4_K_M.
_ALIASES = {"q3_k": "q3_k_m", "q4_k": "q4_k_m", "q5_k": "q5_k_m"}
_LOSSLESS = {"F16": "f16", "BF16": "bf16"}  # K-quant input for a source of that safetensors type; else F32
# llama.cpp's quantizer converts each tensor to f32 and quantizes it in slabs of rows below `max_buf_size`
# (llama-quant.cpp, llama_model_quantize_impl); its default, 8 GiB, holds a whole 32000 x 4096 embedding
# (524 MB of f32, 47 % of a 1.74 GB model's size at peak with its output buffer). 32 MiB slabs keep the
# quantizer's heap near 40 MB; the result is the same (each row block is quantized independently).
QUANT_SLAB_BYTES = 32 << 20


@dataclass(frozen=True)
class GGUFExport:
    types: tuple[str, ...] = ("f16",)  # keys of GGUF_TYPES (case-insensitive) or llama-quantize's aliases
    name: str | None = None  # file name stem; default: the model folder's (or repo's) name, lower-cased
    chat_template: str | None = None  # camelid template name or Jinja; default: the model's own, if any
    threads: int = 0  # llama.cpp quantizer threads (0: all cores)
    overwrite: bool = False


def parse_types(types: Sequence[str] | str) -> list[GGUFType]:
    names = [t.strip().lower() for t in (types.split(",") if isinstance(types, str) else types) if t.strip()]
    if not names:
        raise CamelidError("no GGUF type given (e.g. --types f16,q8_0,q4_k_m)")
    out = []
    for n in names:
        t = GGUF_TYPES.get(_ALIASES.get(n, n))
        if t is None:
            raise CamelidError(f"unknown GGUF type {n!r}; known: {', '.join(GGUF_TYPES)}")
        if t not in out:
            out.append(t)
    return out


def _rope_theta(cfg: dict) -> float | None:
    rope = cfg.get("rope_parameters") or {}  # Transformers 5 nests rope_theta here
    kind = rope.get("rope_type") or (cfg.get("rope_scaling") or {}).get("rope_type") or (
        cfg.get("rope_scaling") or {}).get("type")
    if kind not in (None, "default"):
        raise CheckpointError(f"RoPE scaling {kind!r} is not supported by camelid's GGUF export")
    return cfg.get("rope_theta", rope.get("rope_theta"))


def check_llama(ckpt: Checkpoint) -> dict:
    cfg = ckpt.config
    if cfg.get("model_type") != "llama":
        raise CheckpointError(f"{ckpt.dir}: GGUF export supports Llama models, not model_type {cfg.get('model_type')!r}")
    if cfg.get("quantization_config"):
        raise CheckpointError(f"{ckpt.dir} is quantized ({cfg['quantization_config'].get('quant_method')}); "
                              "export GGUF from the fp16 model")
    missing = [k for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                           "vocab_size", "rms_norm_eps") if k not in cfg]
    if missing:
        raise CheckpointError(f"{ckpt.dir}/config.json lacks {', '.join(missing)}")
    return cfg


def _add_metadata(w: gguf.GGUFWriter, cfg: dict, name: str, file_type: gguf.LlamaFileType) -> None:
    # The keys llama.cpp's converter writes for LlamaForCausalLM (TextModel.set_gguf_parameters).
    w.add_name(name)
    if "max_position_embeddings" in cfg:
        w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg.get("num_key_value_heads", cfg["num_attention_heads"]))
    if (theta := _rope_theta(cfg)) is not None:
        w.add_rope_freq_base(float(theta))
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    if cfg.get("head_dim"):
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    w.add_rope_dimension_count(head_dim)
    w.add_vocab_size(cfg["vocab_size"])
    w.add_file_type(file_type)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _header_writer(cfg: dict, plan: list[GGUFTensor], gtype: GGUFType, vocab, name: str) -> gguf.GGUFWriter:
    """A GGUFWriter holding the file's key-values and tensor infos (not yet written)."""
    w = gguf.GGUFWriter(None, "llama")
    _add_metadata(w, cfg, name, gtype.file_type)
    add_vocab(w, vocab)
    for t in plan:
        # With raw_dtype and a non-uint8 dtype the writer takes `shape` as the logical (element) shape.
        w.add_tensor_info(t.name, t.shape, np.dtype(np.float32), t.nbytes, raw_dtype=t.qtype)
    return w


def _padded(n: int) -> int:
    return -(-n // gguf.GGUF_DEFAULT_ALIGNMENT) * gguf.GGUF_DEFAULT_ALIGNMENT


def planned_file_bytes(ckpt: Checkpoint, gtype: GGUFType, vocab, name: str) -> int:
    """Bytes of the file `write_gguf` writes, before writing it: its header, key-values and tensor infos as
    GGUFWriter lays them out (written to a scratch file), then each tensor's data padded to the alignment."""
    import tempfile

    plan = plan_tensors(ckpt, gtype.tensor_type)
    w = _header_writer(ckpt.config, plan, gtype, vocab, name)
    with tempfile.TemporaryDirectory() as tmp:
        w.write_header_to_file(Path(tmp) / "header.gguf")
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        head = w.fout[0].tell()
        w.close()
    return _padded(head) + sum(_padded(t.nbytes) for t in plan)


def write_gguf(ckpt: Checkpoint, path: Path, gtype: GGUFType, vocab, name: str) -> Path:
    """One GGUF file of `ckpt` with every matrix in `gtype` (a type gguf-py writes), streamed."""
    plan: list[GGUFTensor] = plan_tensors(ckpt, gtype.tensor_type)
    w = _header_writer(ckpt.config, plan, gtype, vocab, name)
    w.write_header_to_file(path)
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    # GGUFWriter.write_tensor_data takes a whole tensor (0.5 GB for a 7B embedding in fp32); the data are
    # written chunk by chunk into its file instead, with its alignment padding before and after each tensor.
    fout = w.fout[0]
    try:
        for t in plan:
            w.write_padding(fout, fout.tell())
            written = 0
            for chunk in encoded_chunks(ckpt, t):
                chunk.tofile(fout)
                written += chunk.nbytes
            if written != t.nbytes:
                raise CheckpointError(f"tensor {t.source}: wrote {written} bytes, planned {t.nbytes}")
            w.write_padding(fout, written)
    finally:
        w.close()
    return path


def quantize_with_llama_cpp(src: Path, dst: Path, gtype: GGUFType, threads: int = 0) -> None:
    """llama.cpp's quantizer (the llama-quantize tool's library call) on a GGUF file: K-quant mixes."""
    from camelid.runtime.llamacpp import require_llama_cpp

    llama_cpp = require_llama_cpp(f"GGUF type {gtype.name}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.nthread = threads
    params.ftype = int(gtype.file_type)  # llama.h's LLAMA_FTYPE_* use gguf-py's LlamaFileType numbering
    params.max_buf_size = QUANT_SLAB_BYTES
    rc = llama_cpp.llama_model_quantize(os.fsencode(src), os.fsencode(dst), ctypes.byref(params))
    if rc != 0 or not dst.is_file():
        raise CamelidError(f"llama.cpp failed to quantize {src} to {gtype.name} (return code {rc})")


def gguf_file_name(name: str, gtype: GGUFType) -> str:
    return f"{name}.{gtype.name}.gguf"


def export_gguf(model: str | os.PathLike, out: str | os.PathLike, settings: GGUFExport = GGUFExport(),
                revision: str | None = None) -> list[Path]:
    """Write `out/<name>.<TYPE>.gguf` for each of `settings.types`; returns the paths in that order."""
    types = parse_types(settings.types)
    if any(t.needs_llama_cpp for t in types):
        from camelid.runtime.llamacpp import require_llama_cpp

        require_llama_cpp("GGUF types " + ", ".join(t.name for t in types if t.needs_llama_cpp))
    ckpt = open_checkpoint(model, revision)
    cfg = check_llama(ckpt)
    name = settings.name or Path(str(model).rstrip("/")).name.lower()
    out = Path(out)
    paths = {t.name: out / gguf_file_name(name, t) for t in types}
    for path in paths.values():  # every file is checked before the first is written
        check_output_file(path, settings.overwrite, GGUF_MAGIC)
    vocab = read_vocab(ckpt.dir, cfg["vocab_size"], settings.chat_template)
    out.mkdir(parents=True, exist_ok=True)
    ensure_free_space(out, ckpt.nbytes * 2)  # a rough bound: no type is larger than the source but F32
    direct = [t for t in types if not t.needs_llama_cpp]
    for t in direct:
        with atomic_output_file(paths[t.name], settings.overwrite, GGUF_MAGIC) as tmp:
            write_gguf(ckpt, tmp, t, vocab, name)
    kquants = [t for t in types if t.needs_llama_cpp]
    if kquants:
        base = GGUF_TYPES[_LOSSLESS.get(_matrix_code(ckpt) or "", "f32")]
        source = paths.get(base.name)
        scratch = out / f".{gguf_file_name(name, base)}.kquant-source.partial"
        try:
            if source is None:
                write_gguf(ckpt, scratch, base, vocab, name)
                source = scratch
            for t in kquants:
                with atomic_output_file(paths[t.name], settings.overwrite, GGUF_MAGIC) as tmp:
                    quantize_with_llama_cpp(source, tmp, t, settings.threads)
        finally:
            scratch.unlink(missing_ok=True)
    return [paths[t.name] for t in types]


def _matrix_code(ckpt: Checkpoint) -> str | None:
    """The safetensors type of all the model's matrices, if one (the lossless GGUF type to hand llama.cpp's
    quantizer)."""
    codes = {info.code for info in ckpt.tensors.values() if len(info.shape) == 2}
    return codes.pop() if len(codes) == 1 else None
