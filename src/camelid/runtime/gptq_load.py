"""Build a Transformers model whose GPTQ (or AWQ) linears are `GPTQLinear`s, without ever holding fp
weights for them. AWQ layers are unpacked into the same `kernels.GPTQWeight` (`kernels.unpack_awq`), so
they run on the same int4 / dense kernels with the same (q - z) * s math.

The skeleton is built with parameters on the meta device (buffers such as RoPE's inv_freq stay real,
since nothing in the checkpoint recreates them), each Linear that has a `<prefix>.qweight` in the
checkpoint is swapped for a `GPTQLinear` built from its tensors, and every other parameter is read from
the checkpoint. Which layers are quantized is decided by the tensors present, so GPTQModel `dynamic`
exclusions, `modules_to_not_convert` and odd-shaped layers (stories260K's 172-input down_proj) simply stay
nn.Linear.
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from camelid.checkpoint.source import Checkpoint, resolve_model_dir
from camelid.device import resolve_device
from camelid.errors import CheckpointError
from camelid.formats import awq
from camelid.formats.awq import AWQConfig
from camelid.formats.declared import find_quantization_config
from camelid.formats.gptq.config import GPTQConfig
from camelid.formats.gptq.pack import SUPPORTED_BITS, default_g_idx
from camelid.runtime import cpu_kernels
from camelid.runtime import kernels as K
from camelid.runtime.qlinear import GPTQLinear

log = logging.getLogger(__name__)


@contextlib.contextmanager
def params_on_meta():
    """Create nn.Parameters on the meta device (no memory), keep buffers where they are made."""
    register = nn.Module.register_parameter

    def register_on_meta(module, name, param):
        register(module, name, param)
        if param is not None and param.device.type != "meta":
            p = module._parameters[name]
            module._parameters[name] = nn.Parameter(p.to("meta"), requires_grad=p.requires_grad)

    nn.Module.register_parameter = register_on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = register


def read_quant_config(model_dir: Path) -> GPTQConfig | AWQConfig | None:
    """The GPTQ or AWQ settings of `model_dir` (whichever its quantization block declares), or None."""
    found = find_quantization_config(model_dir)
    if found is None:
        return None
    return AWQConfig.from_dict(*found) if awq.is_awq(found[0]) else GPTQConfig.from_dict(*found)


def default_gptq_dtype(device: torch.device) -> torch.dtype:
    # The int4 kernels take bf16 activations: a bf16 model makes the per-layer casts no-ops.
    return torch.bfloat16 if device.type == "cpu" or torch.cuda.is_bf16_supported() else torch.float16


def _layer_bits(ckpt: Checkpoint, prefix: str, in_features: int, default: int) -> int:
    # GPTQModel `dynamic` may give layers their own bits; the qweight shape says which.
    rows = ckpt.tensors[f"{prefix}.qweight"].shape[0]
    bits = rows * 32 // in_features
    if rows * 32 != bits * in_features or bits not in SUPPORTED_BITS:
        raise CheckpointError(f"{prefix}.qweight has {rows} rows, which fits no GPTQ bit width for {in_features} inputs")
    if bits != default:
        log.info("%s: %d-bit (config says %d)", prefix, bits, default)
    return bits


def unpack_layer(ckpt: Checkpoint, prefix: str, linear: nn.Linear, qcfg: GPTQConfig | AWQConfig) -> K.GPTQWeight:
    packed = [ckpt.read(f"{prefix}.{t}") for t in ("qweight", "qzeros", "scales")]
    if isinstance(qcfg, AWQConfig):
        return K.unpack_awq(*packed, qcfg.group_size, name=prefix)
    bits = _layer_bits(ckpt, prefix, linear.in_features, qcfg.bits)
    g_idx = ckpt.read(f"{prefix}.g_idx") if f"{prefix}.g_idx" in ckpt else None
    return K.unpack_gptq(*packed, g_idx, bits, qcfg.v1, qcfg.group_size, name=prefix)


def build_gptq_linear(ckpt: Checkpoint, prefix: str, linear: nn.Linear, qcfg: GPTQConfig | AWQConfig,
                      device: torch.device, dtype: torch.dtype, kernel: str) -> GPTQLinear:
    w = unpack_layer(ckpt, prefix, linear, qcfg)
    if (w.in_features, w.out_features) != (linear.in_features, linear.out_features):
        raise CheckpointError(f"{prefix}: quantized weight is [{w.in_features} -> {w.out_features}] but the model "
                              f"expects [{linear.in_features} -> {linear.out_features}]")
    capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
    chosen = K.choose_kernel(w, device, kernel, name=prefix, capability=capability)
    bias = ckpt.read(f"{prefix}.bias") if f"{prefix}.bias" in ckpt else None
    return GPTQLinear(w, chosen, device, dtype, bias=bias)


def load_gptq(model_dir: Path, qcfg: GPTQConfig | AWQConfig, device: torch.device, dtype: torch.dtype | None,
              kernel: str = "auto") -> PreTrainedModel:
    if kernel != "auto" and kernel not in K.KERNELS:
        raise CheckpointError(f"unknown kernel {kernel!r}; choose from auto, {', '.join(K.KERNELS)}")
    ckpt = Checkpoint(model_dir)
    dtype = dtype or default_gptq_dtype(device)
    try:
        config = AutoConfig.from_pretrained(model_dir)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{model_dir}: cannot read config.json ({e})") from e
    # Transformers would hand a config with quantization_config to its own GPTQ / AWQ integration.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with params_on_meta():
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)

    quantized = [n.removesuffix(".qweight") for n in ckpt.tensors if n.endswith(".qweight")]
    if not quantized:
        raise CheckpointError(f"{model_dir}: {qcfg.source} declares {type(qcfg).__name__.removesuffix('Config')} but no "
                              "tensor is named *.qweight")
    for prefix in quantized:
        try:
            linear = model.get_submodule(prefix)
        except AttributeError:
            raise CheckpointError(f"{model_dir}: checkpoint has {prefix}.qweight but the model has no module {prefix}") from None
        if not isinstance(linear, nn.Linear):
            raise CheckpointError(f"{prefix} is a {type(linear).__name__}, not a Linear; cannot hold quantized weights")
        parent_name, _, child = prefix.rpartition(".")
        setattr(model.get_submodule(parent_name), child, build_gptq_linear(ckpt, prefix, linear, qcfg, device, dtype, kernel))

    _load_remaining(model, ckpt, device, dtype)
    return model


def _load_remaining(model: PreTrainedModel, ckpt: Checkpoint, device: torch.device, dtype: torch.dtype) -> None:
    """Fill every parameter still on meta from the checkpoint (float tensors cast to `dtype`)."""
    tied = set(getattr(model, "all_tied_weights_keys", {}) or {})
    missing = []
    for name, param in list(model.named_parameters(remove_duplicate=False)):
        if param.device.type != "meta":
            continue
        if name not in ckpt:
            if name not in tied:
                missing.append(name)
            continue
        t = ckpt.read(name)
        if tuple(t.shape) != tuple(param.shape):
            raise CheckpointError(f"{name}: checkpoint shape {tuple(t.shape)} != model shape {tuple(param.shape)}")
        module_name, _, pname = name.rpartition(".")
        t = t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype)
        model.get_submodule(module_name)._parameters[pname] = nn.Parameter(t, requires_grad=False)
    if missing:
        raise CheckpointError(f"{ckpt.dir}: missing tensors {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    model.tie_weights()
    still = [n for n, p in model.named_parameters() if p.device.type == "meta"]
    if still:
        raise CheckpointError(f"{ckpt.dir}: no weights for {', '.join(still[:5])}")
    model.to(device)  # buffers (RoPE) made on CPU


def plan_kernels(path_or_repo, revision: str | None = None, device: str | torch.device = "auto",
                 kernel: str = "auto") -> dict:
    """The kernel each GPTQ layer would get on `device`, from the checkpoint's shapes and g_idx alone
    (no weights unpacked): what `camelid info` can show without loading the model."""
    model_dir = resolve_model_dir(path_or_repo, revision)
    dev = resolve_device(device)
    qcfg = read_quant_config(model_dir)
    if qcfg is None:
        return {"quantized": False}
    is_awq = isinstance(qcfg, AWQConfig)
    ckpt = Checkpoint(model_dir)
    capability = torch.cuda.get_device_capability(dev) if dev.type == "cuda" else None
    layers, reasons = {}, {}
    for name, info in ckpt.tensors.items():
        if not name.endswith(".qweight"):
            continue
        prefix = name.removesuffix(".qweight")
        rows, n_out = info.shape
        if is_awq:  # [in, out // 8], contiguous groups
            n_in, n_out = rows, n_out * awq.PACK
            g = default_g_idx(n_in, qcfg.group_size).to(torch.long)
        elif f"{prefix}.g_idx" in ckpt:
            g = ckpt.read(f"{prefix}.g_idx").to(torch.long)
            n_in = g.numel()
        else:
            n_in = rows * 32 // qcfg.bits
            g = default_g_idx(n_in, qcfg.group_size).to(torch.long)
        bits = awq.BITS if is_awq else _layer_bits(ckpt, prefix, n_in, qcfg.bits)
        w = K.GPTQWeight(q=torch.empty(n_in, n_out, dtype=torch.int32, device="meta"), zeros=None, scales=None,
                         g=torch.sort(g).values, perm=None, bits=bits)
        layers[prefix] = chosen = K.choose_kernel(w, dev, kernel, name=prefix, capability=capability)
        # Why each kernel the rule prefers over the chosen one did not apply (none when it was forced).
        if kernel == "auto" and chosen != K.KERNELS[0]:
            passed = {k: K.why_not(k, w, dev, capability) for k in K.KERNELS[:K.KERNELS.index(chosen)]}
            reasons[prefix] = "; ".join(f"{k}: {r}" for k, r in passed.items())
    plan = {"quantized": True, "device": str(dev), "bits": qcfg.bits, "group_size": qcfg.group_size,
            "format": "awq" if is_awq else qcfg.checkpoint_format, "kernels": dict(sorted(Counter(layers.values()).items())),
            "not_faster": reasons}
    if dev.type == "cpu":
        plan["cpu"] = cpu_kernels.status()
    return plan


def describe_kernels(model: nn.Module) -> dict:
    """Which kernel runs each quantized layer, for `camelid info` and logs."""
    layers = {name: m for name, m in model.named_modules() if isinstance(m, GPTQLinear)}
    counts = Counter(m.kernel for m in layers.values())
    dense_linears = sum(1 for m in model.modules() if type(m) is nn.Linear)
    first = next(iter(model.parameters()), None)
    return {
        "device": str(first.device) if first is not None else "cpu",
        "dtype": str(getattr(model, "dtype", first.dtype if first is not None else None)).removeprefix("torch."),
        "quantized_layers": len(layers),
        "unquantized_linears": dense_linears,
        "kernels": dict(sorted(counts.items())),
        "act_order_layers": sum(1 for m in layers.values() if m.perm is not None),
        "bits": dict(sorted(Counter(str(m.bits) for m in layers.values()).items())),
        "notes": {k: v for k, v in KERNEL_NOTES.items() if k in counts},
        **({"cpu": cpu_kernels.status()} if first is None or first.device.type == "cpu" else {}),
    }


KERNEL_NOTES = {
    "q4x8": "camelid C++ (runtime/cpu/q4x8.cpp): 4-bit weights x int8 activations, integer dot products; "
            "dequantize + dense GEMM for prefill-sized inputs; 0.5 byte/weight + 8 bytes/block",
    "int4": "torch int4 tinygemm (_weight_int4pack_mm[_for_cpu]), bf16 activations, 0.5 byte/weight",
    "int8": "torch _weight_int8pack_mm, per-channel scales, 1 byte/weight",
    "dense": "dequantized at load to the model dtype (full-precision memory)",
}
