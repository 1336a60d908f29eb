"""Model folders: resolve (local or Hub), read tensors lazily, write sharded safetensors atomically."""

from camelid._lazy import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "cast": ("cast_checked", "convert", "with_config_dtype"),
    "jsonio": ("read_json", "write_json"),
    "output": ("SIDE_FILES", "TOKENIZER_FILES", "atomic_output_dir", "atomic_output_file", "check_output", "check_output_file", "copy_side_files",
               "ensure_free_space", "partial_dir", "single_threaded", "verify_manifest", "write_manifest",
               "write_model_dir"),
    "source": ("Checkpoint", "TensorInfo", "open_checkpoint", "resolve_model_dir", "row_slices"),
    "summary": ("info",),
    "writer": ("ShardWriter", "TensorSpec", "parse_size", "save_sharded"),
})
