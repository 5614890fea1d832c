"""Workflow glue the bundle configs call: setting and input checks, clean error reporting, run metadata."""

from .cli_errors import install_error_hook
from .run_checks import (
    check_checkpoint_dir,
    check_output_dirs,
    check_outputs_absent,
    check_resumed_dataset,
    local_tracking_uri,
    network_metadata,
)
from .run_lock import LOCK_FILE, OutputFolderLockedError, lock_output_dirs, release_output_locks
from .settings import (
    SETTING_RULES,
    check_override_keys,
    check_setting_combinations,
    check_settings,
    command_line_overrides,
    config_bundle_root,
    print_settings,
)

__all__ = [
    "LOCK_FILE",
    "OutputFolderLockedError",
    "SETTING_RULES",
    "check_checkpoint_dir",
    "check_output_dirs",
    "check_outputs_absent",
    "check_override_keys",
    "check_resumed_dataset",
    "check_setting_combinations",
    "check_settings",
    "command_line_overrides",
    "config_bundle_root",
    "print_settings",
    "install_error_hook",
    "local_tracking_uri",
    "lock_output_dirs",
    "network_metadata",
    "release_output_locks",
]
