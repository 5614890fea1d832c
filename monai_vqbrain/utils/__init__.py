"""Small utilities shared by the package: atomic file output and device/precision helpers."""

from .flags import as_bool
from .io import atomic_path, atomic_write_bytes, atomic_write_text, remove_stale_temporary_files
from .modules import unwrap_network

__all__ = ["as_bool", "unwrap_network", "atomic_path", "atomic_write_bytes", "atomic_write_text", "remove_stale_temporary_files"]
from .checkpoint import (  # noqa: E402
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

__all__ += [
    "CONVERT_COMMAND",
    "convert_checkpoint",
    "file_sha256",
    "metadata_file",
    "read_model",
    "read_model_metadata",
    "save_model",
    "DEFAULT_MAX_CHECKPOINT_BYTES",
    "METADATA_KEY",
    "check_checkpoint_file",
    "check_checkpoint_size",
    "checkpoint_byte_limit",
    "check_finite_weights",
    "check_state_dict_matches",
    "load_checkpoint",
    "load_network_weights",
    "network_state_dict",
    "save_checkpoint",
]
