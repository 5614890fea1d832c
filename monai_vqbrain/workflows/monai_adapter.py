"""The one place that relies on MONAI's bundle behaviour beyond its public interface; ``tests/test_monai_adapter.py``
pins each item, so a MONAI upgrade that changes one fails there, loudly, instead of silently elsewhere.

MONAI 1.6 offers a bundle's configs no public way to learn

* the folder of the config files being run: ``ConfigWorkflow`` keeps it as its public ``config_root_path`` but
  hands neither itself nor that folder to the expressions it evaluates (:func:`running_workflow` finds it);
* the other keys of the config an expression belongs to: the ``ConfigParser`` evaluating it does not hand itself
  to the expression either (:func:`running_parser` finds it), so without it each config would list its override
  keys a second time just to have them validated together;
* the override keys of a ``python -m monai.bundle run`` command line: they are merged into the config before any
  of it is evaluated, and a ``None`` value is dropped on the way (``update_kwargs(ignore_none=True)``), so a typo
  or a ``--key None`` would silently leave the configured value in place (:func:`bundle_command_line` reads them);
* why a config failed to resolve or build: only the text of MONAI's messages says it (:data:`MISSING_REFERENCE`,
  :data:`FAILED_COMPONENT`), and the one warning it prints on every config file it parses
  (:data:`CONFIG_FILE_WARNING`).

Nothing else in the package reads ``sys.argv``, the call stack or MONAI's message texts.
"""

from __future__ import annotations

import ast
import inspect
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: ``monai.bundle.run``'s own arguments on its command line: never config keys
RUN_ARGUMENTS = frozenset(
    {"config_file", "meta_file", "logging_file", "init_id", "run_id", "final_id", "tracking", "args_file", "workflow_name"}
)

#: MONAI's parser on a reference to a key no config defines: "the referring item `@debug` is not defined ..."
MISSING_REFERENCE = re.compile(r"referring item `@([^`]+)` is not defined")

#: MONAI's ``instantiate`` on a constructor's error: "Failed to instantiate component 'x.Y' with keywords: ..."
FAILED_COMPONENT = re.compile(r"^Failed to instantiate component '([^']+)'")

#: MONAI's UserWarning on every config file ``create_workflow`` parses (a ``warnings.filterwarnings`` message)
CONFIG_FILE_WARNING = r"parsing config_file .*: any `\"_target_\"` value in it is resolved to an importable callable"


def _running(kind: type) -> Any | None:
    """The innermost ``self`` of type ``kind`` on the call stack, or None."""
    frame = inspect.currentframe()
    try:
        while frame is not None:
            candidate = frame.f_locals.get("self")
            if isinstance(candidate, kind):
                return candidate
            frame = frame.f_back
        return None
    finally:
        del frame  # a frame kept in a local would keep every frame above it alive


def running_workflow() -> Any | None:
    """The MONAI ``ConfigWorkflow`` whose ``initialize``, ``run`` or property is evaluating the config now, or None.

    MONAI does not hand the workflow to the expressions it evaluates, but the workflow's own method is on the call
    stack (its ``self``) whenever it evaluates them: from ``python -m monai.bundle run``, ``monai.bundle.run``,
    ``create_workflow`` or ``ConfigWorkflow`` alike. A bare ``ConfigParser`` has no workflow.
    """
    from monai.bundle import ConfigWorkflow

    return _running(ConfigWorkflow)


def running_parser() -> Any | None:
    """The MONAI ``ConfigParser`` evaluating the current expression, or None outside one.

    Its ``get_parsed_content`` is on the call stack (its ``self``) whenever it evaluates an expression, whether a
    workflow or a bare ``ConfigParser`` drives it.
    """
    from monai.bundle import ConfigParser

    return _running(ConfigParser)


def bundle_command_line(argv: Sequence[str] | None = None) -> tuple[list[tuple[str, str | None]], list[str]] | None:
    """The override keys (with their value texts) and config files of a ``python -m monai.bundle run`` command line.

    Args:
        argv: the command line; ``sys.argv`` when None.

    Returns:
        ``([(key, value text or None), ...], config_files)``, or None when ``argv`` is not a ``monai.bundle run``
        command line (for example when the bundle is run from Python, whose keyword arguments are not visible here).
    """
    argv = list(sys.argv if argv is None else argv)
    if not argv or Path(argv[0]).as_posix().rsplit("/", 2)[-2:] != ["bundle", "__main__.py"]:
        return None
    args = argv[1:]
    if not args or args[0] != "run":
        return None
    pairs: list[tuple[str, str | None]] = []
    config_file: Any = None
    index = 1
    while index < len(args):
        token = args[index]
        index += 1
        if not token.startswith("--"):
            continue
        key, has_value, value = token[2:].partition("=")
        if not has_value and index < len(args) and not args[index].startswith("--"):
            value, has_value = args[index], True
            index += 1
        if key == "config_file":
            config_file = value
        elif key not in RUN_ARGUMENTS:
            pairs.append((key, value if has_value else None))
    files: list[str] = []
    if config_file is not None:
        try:
            parsed = ast.literal_eval(config_file)
        except (ValueError, SyntaxError):
            parsed = config_file
        files = [str(f) for f in (parsed if isinstance(parsed, (list, tuple)) else [parsed])]
    return pairs, files
