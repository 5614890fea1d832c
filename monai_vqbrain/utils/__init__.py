"""Utilities shared by the package: checkpoint files, atomic file output and boolean flags."""

from .checkpoint import (
    CONVERT_COMMAND,
    DEFAULT_MAX_CHECKPOINT_BYTES,
    METADATA_KEY,
    check_checkpoint_file,
    check_checkpoint_size,
    check_finite_weights,
    check_state_dict_matches,
    checkpoint_byte_limit,
    convert_checkpoint,
    file_sha256,
    load_checkpoint,
    load_network_weights,
    metadata_file,
    network_state_dict,
    read_model,
    read_model_metadata,
    save_checkpoint,
    save_model,
)
from .flags import as_bool
from .io import atomic_path, atomic_write_bytes, atomic_write_text, remove_stale_temporary_files
from .modules import unwrap_network

__all__ = [
    "CONVERT_COMMAND",
    "DEFAULT_MAX_CHECKPOINT_BYTES",
    "METADATA_KEY",
    "as_bool",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_checkpoint_file",
    "check_checkpoint_size",
    "check_finite_weights",
    "check_state_dict_matches",
    "checkpoint_byte_limit",
    "convert_checkpoint",
    "file_sha256",
    "load_checkpoint",
    "load_network_weights",
    "metadata_file",
    "network_state_dict",
    "read_model",
    "read_model_metadata",
    "remove_stale_temporary_files",
    "save_checkpoint",
    "save_model",
    "unwrap_network",
]
