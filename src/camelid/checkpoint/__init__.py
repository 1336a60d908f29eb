"""Model folders: resolve (local or Hub), read tensors lazily, write sharded safetensors atomically."""

from camelid.checkpoint.convert import (
    DTYPES,
    cast_checked,
    convert,
    dtype_name,
    parse_dtype,
    with_config_dtype,
)
from camelid.checkpoint.output import (
    SIDE_FILES,
    TOKENIZER_FILES,
    atomic_output_dir,
    atomic_output_file,
    copy_side_files,
    ensure_free_space,
    partial_dir,
    single_threaded,
    verify_manifest,
    write_manifest,
    write_model_dir,
)
from camelid.checkpoint.source import Checkpoint, TensorInfo, open_checkpoint, resolve_model_dir, row_slices
from camelid.checkpoint.summary import info, quantization_config
from camelid.checkpoint.writer import ShardWriter, TensorSpec, parse_size, save_sharded, write_json

__all__ = [
    "DTYPES", "SIDE_FILES", "TOKENIZER_FILES", "Checkpoint", "ShardWriter", "TensorInfo", "TensorSpec",
    "atomic_output_dir", "atomic_output_file", "cast_checked", "convert", "copy_side_files", "dtype_name", "ensure_free_space",
    "info", "open_checkpoint", "parse_dtype", "parse_size", "partial_dir", "quantization_config",
    "resolve_model_dir", "row_slices", "save_sharded", "single_threaded", "verify_manifest", "with_config_dtype", "write_json",
    "write_manifest", "write_model_dir",
]
