"""Workflow glue the bundle configs call: input checks, clean error reporting, run metadata."""

from .cli_errors import install_error_hook
from .run_checks import check_checkpoint_dir, network_metadata

__all__ = ["check_checkpoint_dir", "install_error_hook", "network_metadata"]
