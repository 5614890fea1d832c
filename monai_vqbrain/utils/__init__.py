"""Utilities shared by the package: checkpoint files, atomic file output and boolean flags."""

from .checkpoint import (
    CONVERT_COMMAND,
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
from .io import atomic_path, atomic_write_text

__all__ = [
    "CONVERT_COMMAND",
    "as_bool",
    "atomic_path",
    "atomic_write_text",
    "file_sha256",
    "load_checkpoint",
    "load_network_weights",
    "metadata_file",
    "network_state_dict",
    "read_model",
    "read_model_metadata",
    "save_checkpoint",
    "save_model",
]
