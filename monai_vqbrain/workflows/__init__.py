"""Workflow glue the bundle configs call: setting and input checks, clean error reporting, run metadata."""

from .cli_errors import install_error_hook
from .keys import config_override_keys, reference_markdown
from .next_steps import log_next_steps, next_step_commands
from .run_checks import (
    check_checkpoint_dir,
    check_output_dirs,
    check_outputs_absent,
    executed_config_file,
    local_tracking_uri,
    network_metadata,
)
from .settings import (
    check_override_keys,
    check_settings,
    command_line_overrides,
    config_bundle_root,
    print_settings,
)

__all__ = [
    "check_checkpoint_dir",
    "check_output_dirs",
    "check_outputs_absent",
    "check_override_keys",
    "check_settings",
    "config_override_keys",
    "command_line_overrides",
    "config_bundle_root",
    "print_settings",
    "reference_markdown",
    "executed_config_file",
    "install_error_hook",
    "local_tracking_uri",
    "log_next_steps",
    "next_step_commands",
    "network_metadata",
]
