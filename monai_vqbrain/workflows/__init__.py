"""Workflow glue the bundle configs call: setting and input checks, clean error reporting, run metadata."""

from ..utils.run_checkpoints import check_checkpoint_dir, network_metadata
from .cli_errors import explain_missing_extras, install_error_hook
from .keys import config_override_keys, reference_markdown
from .next_steps import log_next_steps, next_step_commands
from .run_checks import (
    check_output_dirs,
    check_outputs_absent,
    check_resumed_dataset,
    executed_config_file,
    local_tracking_uri,
)
from .run_lock import LOCK_FILE, OutputFolderLockedError, lock_output_dirs, release_output_locks
from .settings import (
    check_override_keys,
    check_setting_combinations,
    check_settings,
    config_bundle_root,
    print_settings,
    run_bundle,
    run_settings,
)

__all__ = [
    "LOCK_FILE",
    "OutputFolderLockedError",
    "check_checkpoint_dir",
    "check_output_dirs",
    "check_outputs_absent",
    "check_override_keys",
    "check_resumed_dataset",
    "check_setting_combinations",
    "check_settings",
    "config_override_keys",
    "config_bundle_root",
    "explain_missing_extras",
    "print_settings",
    "reference_markdown",
    "executed_config_file",
    "install_error_hook",
    "local_tracking_uri",
    "log_next_steps",
    "next_step_commands",
    "lock_output_dirs",
    "network_metadata",
    "release_output_locks",
    "run_bundle",
    "run_settings",
]
