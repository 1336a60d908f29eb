"""Model folders: resolve (local or Hub), read tensors lazily, write sharded safetensors atomically."""

from camelid.checkpoint.output import (
    SIDE_FILES,
    TOKENIZER_FILES,
    atomic_output_dir,
    copy_side_files,
    partial_dir,
    verify_manifest,
    write_manifest,
)
from camelid.checkpoint.source import Checkpoint, TensorInfo, open_checkpoint, resolve_model_dir
from camelid.checkpoint.writer import ShardWriter, TensorSpec, parse_size, save_sharded, write_json

__all__ = [
    "SIDE_FILES", "TOKENIZER_FILES", "Checkpoint", "ShardWriter", "TensorInfo", "TensorSpec",
    "atomic_output_dir", "copy_side_files", "open_checkpoint", "parse_size", "partial_dir",
    "resolve_model_dir", "save_sharded", "verify_manifest", "write_json", "write_manifest",
]
