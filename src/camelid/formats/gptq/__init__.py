"""The AutoGPTQ/GPTQModel "gptq" checkpoint (v1; "gptq_v2" read too), owned here alone: its config
(`config`), bit packing and the reference math (`pack`), which Linears are quantized and how the rest are
declared (`layout`), and a dense reference reader (`reader`). Imports torch, never transformers (the
reader's `dense_model` imports it when called)."""

from camelid._lazy import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "config": ("QUANTIZER", "GPTQConfig", "read_config", "write_config"),
    "layout": ("declare_unquantized", "dynamic_excludes", "modules_in_block", "pack_linear", "packable"),
    "pack": ("SUPPORTED_BITS", "default_g_idx", "dequantize", "pack_qweight", "pack_qzeros", "pack_rows",
             "unpack_qweight", "unpack_qzeros", "unpack_rows"),
    "reader": ("dense_model", "dequantized_state_dict"),
})
