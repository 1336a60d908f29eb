"""The layer loop: quantize a Llama checkpoint layer by layer, never holding more than one layer.

Embeddings turn the calibration windows into hidden states (kept in fp16/bf16, optionally in a file
on disk); each decoder layer is then read from disk, walked stage by stage (`layer.STAGES`), each
stage's group of Linears observed and quantized by a `QuantMethod`, and the hidden states pushed
through the quantized layer to become the next layer's inputs. Each finished layer is saved in
OUT.partial with the hidden states after it, so an interrupted run continues from the last finished
layer.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from camelid.checkpoint.source import Checkpoint
from camelid.quant.layer import STAGES, Stage, layer_output, layer_prefix, load_layer, rotary
from camelid.quant.methods import LinearGroup, Observer, QuantMethod
from camelid.quant.progress import (
    LAYERS,
    STATE,
    layer_file,
    load_hidden,
    load_progress,
    save_progress,
    write_tensors,
)
from camelid.quant.settings import QuantParams, RunOptions

LARGE_MODEL_BYTES = 2 * 10**9  # above this, bounded RSS matters more than allocation speed


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


@dataclass
class Activations:
    """The calibration windows' activations at the current layer, all windows, in two buffers
    [windows, seq_len, hidden] (RAM or, with spill, files), walked in batches of windows."""

    # the current layer's input h (the previous layer's output); under true-sequential, once
    # 'mlp input' ran, x2 = ln2(h2) instead (h is not needed again), and the layer's output at the end
    hidden: torch.Tensor
    # what the last stage left for the next one (its `Stage.leaves`: x1, the attention context, h2)
    left: torch.Tensor
    pe: tuple[torch.Tensor, torch.Tensor]  # rotary (cos, sin) of the window positions
    batch: int
    device: torch.device
    dtype: torch.dtype  # of the forward passes (the layer's)

    def walk(self, layer: torch.nn.Module, stage: Stage, observed: Observer | None, x2_in_h: bool) -> None:
        """Run `stage` over every batch: its group's input goes to `observed`, its state to the buffers."""
        for b in range(0, self.hidden.shape[0], self.batch):
            h = self.hidden[b:b + self.batch].to(self.device, self.dtype)
            left = self.left[b:b + self.batch].to(self.device, self.dtype) if stage.reads_left else None
            with torch.no_grad():
                x, left_next, h_next = stage.run(layer, h, left, self.pe, x2_in_h)
            if observed is not None:
                observed.add(x)
            if left_next is not None:
                self.left[b:b + self.batch] = left_next.to(self.left.dtype).cpu()
            if h_next is not None and x2_in_h:  # the layer input is not needed again
                self.hidden[b:b + self.batch] = h_next.to(self.hidden.dtype).cpu()

    def advance(self, layer: torch.nn.Module, x2_in_h: bool) -> None:
        """Inputs of the next layer, through this (now quantized) layer."""
        for b in range(0, self.hidden.shape[0], self.batch):
            h = self.hidden[b:b + self.batch].to(self.device, self.dtype)
            h2 = self.left[b:b + self.batch].to(self.device, self.dtype) if x2_in_h else None
            with torch.no_grad():
                self.hidden[b:b + self.batch] = layer_output(layer, h, self.pe, h2).to(self.hidden.dtype).cpu()


def _log_rows(layer: int | str, results: dict, seconds: float) -> list[dict]:
    """quant_log rows of one group: the group's time shared out by rows."""
    total = sum(r.q.shape[0] for r in results.values())
    return [{"layer": layer, "module": nm, "loss": f"{res.loss:.6g}", "damp": res.damp,
             "seconds": f"{seconds * res.q.shape[0] / total:.3f}"} for nm, res in results.items()]


def quantize_layer(layer: torch.nn.Module, i: int, ckpt: Checkpoint, acts: Activations | None,
                   method: QuantMethod, device: torch.device,
                   bar: tqdm | None = None) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """Quantize layer i in place (its Linears get their dequantized weights) and advance the
    activations to the layer's output. Returns the layer's output tensors and its quant_log rows.

    The forward passes run in the layer's dtype (bf16 where the CPU has bf16 matmul units); the
    Hessians are fp32 sums, and GPTQ starts from the checkpoint's own weights, read again in fp32.
    A method that folds scales (AWQ) sees every group on the unquantized layer, whose output is the
    next layer's input, and the tensors written are the checkpoint's through its fold.
    """
    p = method.params
    prefix = layer_prefix(i)
    mods = dict(layer.named_modules())
    dtype = next(layer.parameters()).dtype
    sequential = p.true_sequential and not method.folds_scales
    tensors: dict[str, torch.Tensor | None] = {}  # filled in stage order; fp16 ones once the fold is known
    rows: list[dict] = []
    pending: list[tuple[LinearGroup, Observer | None]] = []

    def finish(group: LinearGroup, observed: Observer | None) -> None:
        if bar is not None:
            bar.set_postfix_str(",".join(nm.split(".")[-1] for nm in group.names))
        t0 = time.perf_counter()
        results = method.quantize(group, observed)
        seconds = time.perf_counter() - t0
        for nm, res in results.items():
            lin = mods[nm]
            lin.weight.data = res.dequantized().to(lin.weight.device, dtype)
            tensors.update(method.pack(prefix + nm, res))
        rows.extend(_log_rows(i, results, seconds))

    for stage in STAGES:
        quantized = [nm for nm in stage.linears if method.packable(mods[nm].in_features, mods[nm].out_features)]
        for nm in stage.linears:
            if nm not in quantized:
                tensors[prefix + nm + ".weight"] = None
        group = observed = None
        if quantized:
            group = LinearGroup(quantized, [mods[nm].out_features for nm in quantized],
                                mods[quantized[0]].in_features,
                                lambda nm: ckpt.read(prefix + nm + ".weight").to(device, torch.float32), device)
            observed = method.observer(group) if acts is not None else None
        if acts is not None:
            acts.walk(layer, stage, observed, sequential)
        if group is not None:
            if sequential or not method.needs_activations:
                finish(group, observed)
            else:
                pending.append((group, observed))
        if sequential:
            for nm in stage.done_with:
                mods[nm].weight.data = torch.empty(0, dtype=dtype, device=device)
    fold = None
    if method.folds_scales:  # the next layer's input from the unquantized layer, then the scales
        acts.advance(layer, False)
        fold = method.fold(layer, acts.pe, pending)
        pending = [(replace(group, read_weight=lambda nm, read=group.read_weight: fold(nm, read(nm))), observed)
                   for group, observed in pending]
    for group, observed in pending:  # not true-sequential: every group saw the unquantized layer
        finish(group, observed)

    if acts is not None and not method.folds_scales:
        acts.advance(layer, sequential)
    for nm in ("input_layernorm", "post_attention_layernorm"):
        tensors[prefix + nm + ".weight"] = None
    for name, t in tensors.items():
        if t is None:  # a norm or an unquantized Linear
            w = ckpt.read(name)
            tensors[name] = (w if fold is None else fold(name[len(prefix):-len(".weight")], w.float())
                             ).to(torch.float16)
    return tensors, rows


def embed(ckpt: Checkpoint, ids: torch.Tensor, into: torch.Tensor) -> None:
    table = ckpt.read("model.embed_tokens.weight").to(into.dtype)
    for r in range(0, ids.shape[0], 16):
        torch.index_select(table, 0, ids[r:r + 16].reshape(-1), out=into[r:r + 16].view(-1, table.shape[1]))
    del table


def quantize_lm_head(ckpt: Checkpoint, config, acts: Activations | None, method: QuantMethod,
                     device: torch.device) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """lm_head as a group of its own, observed on norm(final hidden states) in fp32."""
    out_f, in_f = ckpt.tensors["lm_head.weight"].shape
    group = LinearGroup(["lm_head"], [out_f], in_f, lambda nm: ckpt.read(nm + ".weight").to(device, torch.float32),
                        device)
    observed = method.observer(group) if acts is not None else None
    if observed is not None:
        from transformers.models.llama.modeling_llama import LlamaRMSNorm

        norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps).to(device)
        norm.weight.data = ckpt.read("model.norm.weight").to(device, torch.float32)
        for b in range(0, acts.hidden.shape[0], acts.batch):
            with torch.no_grad():
                observed.add(norm(acts.hidden[b:b + acts.batch].to(device, torch.float32)))
    t0 = time.perf_counter()
    results = method.quantize(group, observed)
    rows = _log_rows("lm_head", results, time.perf_counter() - t0)
    return method.pack("lm_head", results["lm_head"]), rows


def quantize_layers(work: Path, ckpt: Checkpoint, config, method: QuantMethod, ids: torch.Tensor | None,
                    fingerprint: str, options: RunOptions, device: torch.device,
                    dtype: torch.dtype) -> tuple[list[dict], dict[str, torch.Tensor]]:
    """Every decoder layer (resuming after the last finished one) and, with lm_head set, the head, into
    per-layer files in `work`. Returns the quant_log rows and the head's tensors."""
    p: QuantParams = method.params
    n_layers = config.num_hidden_layers
    if ckpt.nbytes > LARGE_MODEL_BYTES:  # page faults on fresh mmaps cost ~1/3 more CPU on small models
        map_large_allocations()
    prog = load_progress(work, fingerprint)
    (work / LAYERS).mkdir(exist_ok=True)
    (work / STATE).mkdir(exist_ok=True)
    acts = None
    if ids is not None:
        nsamples, seq_len = ids.shape
        shape = (nsamples, seq_len, config.hidden_size)
        store = torch.bfloat16 if dtype == torch.bfloat16 else torch.float16
        hidden = activation_buffer(shape, work / STATE / "hidden.buf" if options.spill else None, store)
        left = activation_buffer(shape, work / STATE / "carry.buf" if options.spill else None, store)
        if prog["layers_done"]:
            load_hidden(work, prog["layers_done"] - 1, hidden)
        else:
            embed(ckpt, ids, hidden)
        pe = tuple(t.to(device, dtype) for t in rotary(config, seq_len, device))
        acts = Activations(hidden, left, pe, options.batch_size or max(1, 4096 // seq_len), device, dtype)

    bar = tqdm(range(prog["layers_done"], n_layers), desc="quantize", unit="layer", disable=not options.progress,
               initial=prog["layers_done"], total=n_layers)
    for i in bar:
        layer = load_layer(ckpt, config, i, device, dtype)
        tensors, rows = quantize_layer(layer, i, ckpt, acts, method, device, bar)
        del layer
        write_tensors(layer_file(work, i), tensors)
        prog["layers_done"] = i + 1
        prog["log"] += rows
        save_progress(work, prog, None if acts is None else acts.hidden, i)
        del tensors
        release_freed_memory()
    bar.close()

    extra: dict[str, torch.Tensor] = {}
    if p.lm_head:
        extra, rows = quantize_lm_head(ckpt, config, acts, method, device)
        prog["log"] += rows
    return prog["log"], extra
