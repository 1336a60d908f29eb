"""The layer loop: quantize a Llama checkpoint layer by layer, never holding more than one layer.

Embeddings turn the calibration windows into hidden states (kept in fp16, optionally in a file on
disk); each decoder layer is then read from disk, its Linears quantized group by group on Hessians
of their real inputs, and the hidden states pushed through the quantized layer to become the next
layer's inputs. Each finished layer is saved in OUT.partial with the hidden states after it, so an
interrupted run continues from the last finished layer. The final checkpoint is streamed together
from the per-layer files.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm.auto import tqdm

from camelid.checkpoint.jsonio import write_json
from camelid.checkpoint.output import atomic_output_dir, check_output, copy_side_files, write_manifest
from camelid.checkpoint.source import Checkpoint, open_checkpoint
from camelid.checkpoint.writer import ShardWriter, TensorSpec, save_sharded
from camelid.device import compute_dtype, resolve_device
from camelid.dtypes import SAFETENSORS_DTYPES
from camelid.errors import CamelidError
from camelid.formats.gptq.config import QUANTIZER, GPTQConfig, write_config
from camelid.formats.gptq.layout import declare_unquantized, pack_linear, packable
from camelid.quant.calib import calibration_windows
from camelid.quant.checks import FiniteWeights, check_run, default_seq_len, linear_dims
from camelid.quant.format import QuantParams
from camelid.quant.gptq import Hessian, QuantResult, gptq, prepare_hessian, rtn
from camelid.quant.layer import (
    GROUPS,
    LINEARS,
    layer_output,
    layer_prefix,
    llama_config,
    load_layer,
    rotary,
    stage_input,
)
from camelid.tokenizer import load_tokenizer

STATE = "state"
LARGE_MODEL_BYTES = 2 * 10**9  # above this, bounded RSS matters more than allocation speed
LAYERS = "layers"


def check_params(p: QuantParams, config: dict) -> None:
    if p.bits not in (2, 3, 4, 8):
        raise CamelidError(f"--bits must be 2, 3, 4 or 8, got {p.bits}")
    if p.group_size != -1 and p.group_size <= 0:
        raise CamelidError(f"--group-size must be positive or -1 (one group), got {p.group_size}")
    if not 0 <= p.damp < 1:
        raise CamelidError(f"--damp must be in [0, 1), got {p.damp}")
    if p.method not in ("gptq", "rtn"):
        raise CamelidError(f"--method must be gptq or rtn, got {p.method}")
    if config.get("model_type") != "llama":
        raise CamelidError(f"only Llama-architecture models are supported, got model_type {config.get('model_type')!r}")
    if p.lm_head and config.get("tie_word_embeddings", False):
        raise CamelidError("--lm-head needs an untied lm_head; this model ties it to the embeddings")


def activation_buffer(shape: tuple[int, ...], spill: Path | None, dtype: torch.dtype = torch.float16) -> torch.Tensor:
    """Half-precision buffer for calibration activations; with `spill`, backed by a file instead of RAM."""
    if spill is None:
        return torch.empty(shape, dtype=dtype)
    spill.parent.mkdir(parents=True, exist_ok=True)
    n = 1
    for s in shape:
        n *= s
    return torch.from_file(str(spill), shared=True, size=n, dtype=dtype).view(shape)


def _libc():
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: nothing to tune
        return None


def map_large_allocations(threshold: int = 1 << 20) -> None:
    """Serve allocations >= 1 MB with mmap so that freeing them returns the memory to the OS.

    glibc raises its mmap threshold up to 32 MB after large frees; the layer loop's many
    activation-sized buffers then come from the heap, and its fragmentation grows RSS layer after
    layer. A fixed threshold (mallopt M_MMAP_THRESHOLD) keeps peak memory at one layer's worth."""
    libc = _libc()
    if libc is not None and hasattr(libc, "mallopt"):
        libc.mallopt(-3, threshold)  # M_MMAP_THRESHOLD


def release_freed_memory() -> None:
    """Hand freed heap memory back to the OS after each layer."""
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def quantize_weight(w: torch.Tensor, h: Hessian | None, p: QuantParams, prepared: tuple | None = None,
                    overwrite: bool = False) -> QuantResult:
    if p.method == "rtn":
        return rtn(w, p.bits, p.group_size, p.sym, p.mse)
    return gptq(w, None if prepared else h.value(), p.bits, p.group_size, p.sym, p.act_order, p.static_groups,
                p.damp, p.mse, prepared=prepared, overwrite=overwrite)


def quantize_group(names: list[str], rows: list[int], read: Callable[[str], torch.Tensor], hess: Hessian | None,
                   p: QuantParams) -> tuple[dict[str, QuantResult], float]:
    """Quantize Linears that read the same input as one row-stacked matrix: GPTQ treats rows
    independently given H, so this equals quantizing each alone, with one factorization of H and one
    pass of the column loop instead of one per Linear. Returns results and seconds spent.

    The Hessian is factored (and its buffer consumed) before the weights are read, to keep the
    largest matrices of a layer from being alive at once."""
    t0 = time.perf_counter()
    prepared = prepare_hessian(hess, p.act_order, p.damp) if p.method == "gptq" else None
    # W^T of the stacked Linears, filled one Linear at a time, handed to GPTQ as its scratch buffer
    wt = None
    for nm, (start, stop) in zip(names, itertools.pairwise([0, *itertools.accumulate(rows)]), strict=True):
        w = read(nm)
        if wt is None:
            wt = torch.empty(w.shape[1], sum(rows), dtype=torch.float32, device=w.device)
        wt[:, start:stop] = w.t()
        del w
    res = quantize_weight(wt.t(), hess, p, prepared, overwrite=True)
    del wt, prepared
    return dict(zip(names, res.split_rows(rows), strict=True)), time.perf_counter() - t0


def quantize_layer(layer: torch.nn.Module, i: int, ckpt: Checkpoint, hidden: torch.Tensor | None,
                   carry: torch.Tensor | None, pe, p: QuantParams, batch: int, device: torch.device,
                   bar: tqdm | None = None) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """Quantize layer i in place (its Linears get their dequantized weights) and advance `hidden`
    to the layer's output. Returns the layer's output tensors and its quant_log rows.

    The forward passes run in the layer's dtype (bf16 where the CPU has bf16 matmul units); the
    Hessians are fp32 sums, and GPTQ starts from the checkpoint's own weights, read again in fp32.
    """
    prefix = layer_prefix(i)
    mods = dict(layer.named_modules())
    dtype = next(layer.parameters()).dtype
    tensors: dict[str, torch.Tensor] = {}
    rows: list[dict] = []
    pending: list[tuple[list[str], Hessian | None]] = []
    n = 0 if hidden is None else hidden.shape[0]
    need_data = p.method == "gptq"

    def finish(names: list[str], hess: Hessian | None) -> None:
        if bar is not None:
            bar.set_postfix_str(",".join(nm.split(".")[-1] for nm in names))
        results, seconds = quantize_group(
            names, [mods[nm].out_features for nm in names],
            lambda nm: ckpt.read(prefix + nm + ".weight").to(device, torch.float32), hess, p)
        total = sum(r.q.shape[0] for r in results.values())
        for nm, res in results.items():
            lin = mods[nm]
            lin.weight.data = res.dequantized().to(lin.weight.device, dtype)
            tensors.update(pack_linear(prefix + nm, res.q, res.scales, res.zeros, res.g_idx, p.bits))
            # the group's time, shared out by rows
            rows.append({"layer": i, "module": nm, "loss": f"{res.loss:.6g}", "damp": res.damp,
                         "seconds": f"{seconds * res.q.shape[0] / total:.3f}"})

    for stage, group in enumerate(GROUPS):
        quantized = [nm for nm in group if packable(mods[nm].in_features, mods[nm].out_features,
                                                       p.bits, p.group_size)]
        for nm in group:
            if nm not in quantized:
                tensors[prefix + nm + ".weight"] = ckpt.read(prefix + nm + ".weight").to(torch.float16)
        hess = Hessian(mods[group[0]].in_features, device) if need_data and quantized else None
        if need_data:
            for b in range(0, n, batch):
                h = hidden[b:b + batch].to(device, dtype)
                c = None if stage == 0 else carry[b:b + batch].to(device, dtype)
                with torch.no_grad():
                    x, c_next, h_next = stage_input(layer, stage, h, c, pe, x2_in_h=p.true_sequential)
                if hess is not None:
                    hess.add(x)
                if stage < 3:
                    carry[b:b + batch] = c_next.to(carry.dtype).cpu()
                if h_next is not None and p.true_sequential:  # the layer input is not needed again
                    hidden[b:b + batch] = h_next.to(hidden.dtype).cpu()
        if quantized:
            if p.true_sequential or not need_data:
                finish(quantized, hess)
            else:
                pending.append((quantized, hess))
        if stage == 2 and p.true_sequential:
            # h2 is in `carry`: attention is done for this layer, its weights need not stay in RAM
            # while the widest Hessian (down_proj's) is factored
            for nm in (*GROUPS[0], *GROUPS[1]):
                mods[nm].weight.data = torch.empty(0, dtype=dtype, device=device)
    for names, hess in pending:  # not true-sequential: every group saw the unquantized layer
        finish(names, hess)

    if need_data:  # inputs of the next layer, through this (now quantized) layer
        for b in range(0, n, batch):
            h = hidden[b:b + batch].to(device, dtype)
            h2 = carry[b:b + batch].to(device, dtype) if p.true_sequential else None
            with torch.no_grad():
                hidden[b:b + batch] = layer_output(layer, h, pe, h2).to(hidden.dtype).cpu()
    for nm in ("input_layernorm", "post_attention_layernorm"):
        tensors[prefix + nm + ".weight"] = ckpt.read(prefix + nm + ".weight").to(torch.float16)
    return tensors, rows


def write_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None,
                  rows_per_chunk: int | None = None) -> None:
    """Atomic single-file safetensors, streamed (row chunks for the big activation buffer)."""
    specs = [TensorSpec(k, v.dtype, tuple(v.shape)) for k, v in tensors.items()]
    w = ShardWriter(path, specs, metadata)
    try:
        for k, v in tensors.items():
            step = rows_per_chunk or max(v.shape[0] if v.dim() else 1, 1)
            for r in range(0, v.shape[0], step) if v.dim() else [0]:
                w.write(k, v[r:r + step] if v.dim() else v)
        w.close()
    except BaseException:
        w.abort()
        raise


def run_fingerprint(p: QuantParams, ids: torch.Tensor | None, ckpt: Checkpoint, extra: str = "") -> str:
    h = hashlib.sha256(json.dumps(p.as_dict(), sort_keys=True).encode() + extra.encode())
    h.update(json.dumps(ckpt.config, sort_keys=True).encode())
    h.update(ckpt.fingerprint().encode())  # the weights themselves: another model is refused, not merged
    if ids is not None:
        h.update(ids.to(torch.int64).numpy().tobytes())
    return h.hexdigest()


def load_progress(work: Path, fingerprint: str) -> dict:
    path = work / STATE / "progress.json"
    if not path.is_file():
        return {"fingerprint": fingerprint, "layers_done": 0, "log": []}
    progress = json.loads(path.read_text())
    if progress.get("fingerprint") != fingerprint:
        raise CamelidError(f"{work} holds an unfinished run with other settings or calibration data; "
                           "rerun with the same settings to resume, or delete that folder to start over")
    return progress


def save_progress(work: Path, progress: dict, hidden: torch.Tensor | None, layer: int) -> None:
    state = work / STATE
    if hidden is not None:
        write_tensors(state / f"hidden-{layer:05d}.safetensors", {"hidden": hidden}, {"layer": str(layer)},
                      rows_per_chunk=1)
    write_json(state / "progress.json", progress)
    for old in state.glob("hidden-*.safetensors"):
        if old.name != f"hidden-{layer:05d}.safetensors":
            old.unlink()


def load_hidden(work: Path, layer: int, into: torch.Tensor) -> None:
    from safetensors import safe_open

    with safe_open(work / STATE / f"hidden-{layer:05d}.safetensors", framework="pt") as f:
        sl = f.get_slice("hidden")
        for r in range(into.shape[0]):
            into[r] = sl[r:r + 1][0]


def embed(ckpt: Checkpoint, ids: torch.Tensor, into: torch.Tensor) -> None:
    table = ckpt.read("model.embed_tokens.weight").to(into.dtype)
    for r in range(0, ids.shape[0], 16):
        torch.index_select(table, 0, ids[r:r + 16].reshape(-1), out=into[r:r + 16].view(-1, table.shape[1]))
    del table


def quantize_lm_head(ckpt: Checkpoint, config, hidden: torch.Tensor, p: QuantParams, batch: int,
                     device: torch.device) -> tuple[dict[str, torch.Tensor], list[dict]]:
    w = ckpt.read("lm_head.weight").to(device, torch.float32)
    hess = None
    if p.method == "gptq":
        from transformers.models.llama.modeling_llama import LlamaRMSNorm

        norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps).to(device)
        norm.weight.data = ckpt.read("model.norm.weight").to(device, torch.float32)
        hess = Hessian(w.shape[1], device)
        for b in range(0, hidden.shape[0], batch):
            with torch.no_grad():
                hess.add(norm(hidden[b:b + batch].to(device, torch.float32)))
    t0 = time.perf_counter()
    res = quantize_weight(w, hess, p)
    row = {"layer": "lm_head", "module": "lm_head", "loss": f"{res.loss:.6g}", "damp": res.damp,
           "seconds": f"{time.perf_counter() - t0:.3f}"}
    return pack_linear("lm_head", res.q, res.scales, res.zeros, res.g_idx, p.bits), [row]


def assemble(work: Path, ckpt: Checkpoint, n_layers: int, extra: dict[str, torch.Tensor],
             metadata: dict[str, str], max_shard_size: str) -> None:
    """Stream the per-layer files plus embeddings/norm/head into the final sharded checkpoint."""
    from safetensors import safe_open

    layer_files = [work / LAYERS / f"layer-{i:05d}.safetensors" for i in range(n_layers)]
    head = ["model.embed_tokens.weight"]
    tail = ["model.norm.weight"]
    if "lm_head.weight" in ckpt and "lm_head.qweight" not in extra:
        tail.append("lm_head.weight")
    specs = [TensorSpec(n, torch.float16, ckpt.tensors[n].shape) for n in head]
    for f in layer_files:
        with safe_open(f, framework="pt") as sf:
            for k in sf.keys():
                sl = sf.get_slice(k)
                specs.append(TensorSpec(k, SAFETENSORS_DTYPES[sl.get_dtype()],
                                        tuple(sl.get_shape())))
    specs += [TensorSpec(n, torch.float16, ckpt.tensors[n].shape) for n in tail]
    specs += [TensorSpec(k, v.dtype, tuple(v.shape)) for k, v in extra.items()]

    def chunks():
        for n in head:
            yield n, ckpt.read(n).to(torch.float16)
        for f in layer_files:
            with safe_open(f, framework="pt") as sf:
                for k in sf.keys():
                    yield k, sf.get_tensor(k)
        for n in tail:
            yield n, ckpt.read(n).to(torch.float16)
        yield from extra.items()

    save_sharded(work, specs, chunks(), max_shard_size=max_shard_size, metadata=metadata)


def quantize(model: str | Path, out: str | Path, *, bits: int = 4, group_size: int = 128,
             act_order: bool = False, damp: float = 0.01, dataset: str = "wikitext2",
             dataset_path: str | Path | None = None, seq_len: int | None = None, nsamples: int = 128,
             sym: bool = True, true_sequential: bool = True, static_groups: bool = False, mse: bool = False,
             lm_head: bool = False, device: str = "auto", seed: int = 0, method: str = "gptq",
             template: str = "alpaca", calibration: torch.Tensor | None = None, batch_size: int | None = None,
             spill: bool = False, overwrite: bool = False, revision: str | None = None,
             max_shard_size: str = "5GB", progress: bool = True, compute: str = "auto") -> Path:
    """Quantize a Llama checkpoint to a GPTQ (v1) checkpoint in `out`. Returns `out`.

    `calibration` ([n, seq_len] token ids) overrides dataset/nsamples/seq_len; `seq_len` None is 2048, or
    the model's context if shorter. `spill` keeps the
    calibration activations in a file in OUT.partial instead of RAM. `compute` is the dtype of the
    calibration forward passes (auto: bf16 where the hardware has bf16 matmul, else fp32). Rerunning after an interruption
    resumes from the last finished layer.
    """
    p = QuantParams(bits, group_size, act_order, damp, sym, true_sequential, static_groups, mse, lm_head, method)
    ckpt = open_checkpoint(model, revision)
    check_output(out, overwrite, [ckpt.dir])  # before the (long) calibration, not after
    check_params(p, ckpt.config)
    dev = resolve_device(device)
    dtype = compute_dtype(dev, compute)
    config = llama_config(ckpt.config)
    n_layers = config.num_hidden_layers
    if calibration is not None:
        nsamples, seq_len = calibration.shape
    seq_len = default_seq_len(ckpt) if seq_len is None else seq_len
    check_run(p, ckpt, n_layers, seq_len, nsamples, calibrated=method == "gptq")
    ckpt = FiniteWeights(ckpt)

    if ckpt.nbytes > LARGE_MODEL_BYTES:  # page faults on fresh mmaps cost ~1/3 more CPU on small models
        map_large_allocations()
    # OUT.partial is locked before calibration: a second run into the same OUT refuses at once.
    with atomic_output_dir(out, overwrite=overwrite, resume=True, inputs=[ckpt.dir]) as work:
        ids = None
        if method == "gptq":
            if calibration is None:
                tok = load_tokenizer(ckpt.dir)
                calibration = calibration_windows(tok, dataset, dataset_path, nsamples, seq_len, seed, template)
            ids = calibration.to(torch.long)
            nsamples, seq_len = ids.shape
        batch = batch_size or max(1, 4096 // seq_len)
        prog = load_progress(work, run_fingerprint(p, ids, ckpt, str(dtype)))
        (work / LAYERS).mkdir(exist_ok=True)
        (work / STATE).mkdir(exist_ok=True)
        hidden = carry = pe = None
        if ids is not None:
            shape = (nsamples, seq_len, config.hidden_size)
            store = torch.bfloat16 if dtype == torch.bfloat16 else torch.float16
            hidden = activation_buffer(shape, work / STATE / "hidden.buf" if spill else None, store)
            carry = activation_buffer(shape, work / STATE / "carry.buf" if spill else None, store)
            if prog["layers_done"]:
                load_hidden(work, prog["layers_done"] - 1, hidden)
            else:
                embed(ckpt, ids, hidden)
            pe = tuple(t.to(dev, dtype) for t in rotary(config, seq_len, dev))

        bar = tqdm(range(prog["layers_done"], n_layers), desc="quantize", unit="layer", disable=not progress,
                   initial=prog["layers_done"], total=n_layers)
        for i in bar:
            layer = load_layer(ckpt, config, i, dev, dtype)
            tensors, rows = quantize_layer(layer, i, ckpt, hidden, carry, pe, p, batch, dev, bar)
            del layer
            write_tensors(work / LAYERS / f"layer-{i:05d}.safetensors", tensors)
            prog["layers_done"] = i + 1
            prog["log"] += rows
            save_progress(work, prog, hidden, i)
            del tensors
            release_freed_memory()
        bar.close()

        extra: dict[str, torch.Tensor] = {}
        if lm_head:
            extra, rows = quantize_lm_head(ckpt, config, hidden, p, batch, dev)
            prog["log"] += rows
        skipped = [n for n in (f"{layer_prefix(i)}{m}" for i in range(n_layers) for m in LINEARS)
                   if not packable(*linear_dims(ckpt, n), p.bits, p.group_size)]
        dynamic, in_block = declare_unquantized(skipped, n_layers, GROUPS)
        run = {
            "dataset": None if ids is None else (str(dataset_path) if dataset_path else dataset),
            "seq_len": None if ids is None else seq_len, "nsamples": None if ids is None else nsamples,
            "seed": seed, "template": template, "compute_dtype": str(dtype).removeprefix("torch."),
            "damp_used": max([r["damp"] for r in prog["log"]], default=p.damp),
            "damp_auto_increment": 0.01, "static_groups": static_groups, "true_sequential": true_sequential,
            "unquantized_modules": skipped,
        }
        qcfg = GPTQConfig(bits=p.bits, group_size=p.group_size, desc_act=p.act_order, sym=p.sym, damp_percent=p.damp,
                          true_sequential=p.true_sequential, static_groups=p.static_groups, lm_head=p.lm_head,
                          model_name_or_path=str(model), dynamic=dynamic, modules_in_block_to_quantize=in_block,
                          meta={"quantizer": [QUANTIZER], "method": p.method, "mse": p.mse, **run})
        assemble(work, ckpt, n_layers, extra, qcfg.safetensors_metadata(), max_shard_size)
        copy_side_files(ckpt.dir, work)
        write_config(work, ckpt.config, qcfg)
        with open(work / "quant_log.csv", "w", newline="") as f:
            w = csv.DictWriter(f, ["layer", "module", "loss", "damp", "seconds"])
            w.writeheader()
            w.writerows(prog["log"])
        shutil.rmtree(work / LAYERS)
        shutil.rmtree(work / STATE)
        write_manifest(work)  # also what lets a later --overwrite recognise this folder as camelid's
    return Path(out)


