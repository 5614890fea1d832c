"""Report bad user input from bundle runs as one clear message and a documented exit status, not a traceback."""

from __future__ import annotations

import errno
import os
import signal
import sys
import threading
import warnings
from types import FrameType, TracebackType

from ..errors import RunInterrupted, SettingError, VQBrainError, exception_chain
from ..utils.flags import as_bool
from .monai_adapter import CONFIG_FILE_WARNING, FAILED_COMPONENT, MISSING_REFERENCE

#: OSError numbers that describe the user's disk rather than a bug: reported in one line like a bad input
_DISK_ERRORS = frozenset(
    {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.ENOTDIR, errno.EISDIR}
)


class MissingBaseConfigError(SettingError):
    """A config that extends another was run without it: its references to the base config's keys are undefined."""


def _missing_base_config(error: BaseException) -> MissingBaseConfigError | None:
    """The one-line error for a reference to an undefined key, when the running config extends a base config."""
    match = MISSING_REFERENCE.search(str(error))
    if match is None or _STATE["base_config"] is None:
        return None
    config, base = _STATE["config"], _STATE["base_config"]
    return MissingBaseConfigError(
        f"{config} extends {base} (it has no '{match.group(1)}'): pass both, base first, e.g. "
        f"--config_file \"['bundle/configs/{base}','bundle/configs/{config}']\""
    )


class ComponentSettingError(SettingError):
    """A component's constructor refused the values the settings gave it (``--network_def#num_embeddings 0``)."""


def _component_setting_error(error: BaseException | None) -> ComponentSettingError | None:
    """The one-line error for a ValueError or TypeError that a component's constructor raised while MONAI built it.

    Only a constructor's own error counts (the direct cause of MONAI's "Failed to instantiate component"), not one
    from deeper work such as a dataset applying transforms while it caches, which MONAI wraps again.
    """
    found = None
    for link in exception_chain(error):
        cause = link.__cause__
        match = FAILED_COMPONENT.match(str(link)) if isinstance(link, RuntimeError) else None
        if match is not None and isinstance(cause, (ValueError, TypeError)):
            # the innermost one: a component built from another names the one whose constructor refused
            reason = " ".join(str(cause).split()) or type(cause).__name__
            found = ComponentSettingError(f"cannot build {match.group(1)} from the settings: {reason}")
    return found


#: optional dependencies -> the extra of the package that installs them (``pyproject.toml``)
_EXTRAS = {"onnx": "onnx", "onnxruntime": "onnx", "onnxscript": "onnx", "mlflow": "mlflow"}
_EXTRA_USES = {"onnx": "ONNX export (onnx_export)", "mlflow": "MLflow tracking (--tracking mlflow)"}


class MissingExtraError(VQBrainError):
    """A feature needs an optional dependency that is not installed: an extra of the package names it."""


def _missing_extra(error: BaseException | None) -> MissingExtraError | None:
    """The one-line error for a ``ModuleNotFoundError`` of an optional dependency in an exception's chain."""
    for link in exception_chain(error):
        module = (getattr(link, "name", None) or "").split(".")[0]
        if isinstance(link, ModuleNotFoundError) and module in _EXTRAS:
            extra = _EXTRAS[module]
            return MissingExtraError(
                f"{_EXTRA_USES[extra]} needs the optional module '{module}', which is not installed: "
                f"pip install \"monai_vqbrain[{extra}]\" (from a checkout: pip install -e \".[{extra}]\")"
            )
    return None


def explain_missing_extras() -> None:
    """Make an uncaught ``ModuleNotFoundError`` of an optional dependency one line naming the extra to install.

    MONAI's own commands (``onnx_export``, ``ckpt_export``) run no ``initialize``, so :func:`install_error_hook`
    is not installed there: ``train.json``'s ``network_def`` requires this (``_requires_``), so that ``onnx_export``
    without the ``onnx`` extra ends in one ``error:`` line (exit status 1), not a traceback. Any other exception goes
    to the hook installed before, unchanged. Calling it again does nothing.
    """
    if _STATE.get("extras"):
        return
    previous_hook = sys.excepthook

    def hook(kind: type[BaseException], error: BaseException, traceback: TracebackType | None) -> None:
        missing = _missing_extra(error)
        if missing is None or _STATE["traceback"] or os.environ.get("MONAI_VQBRAIN_TRACEBACK"):
            previous_hook(kind, error, traceback)
            return
        print(f"error: {missing}", file=sys.stderr, flush=True)
        raise SystemExit(missing.exit_code)

    sys.excepthook = hook
    _STATE["extras"] = True


def _find_user_error(error: BaseException | None) -> BaseException | None:
    for link in exception_chain(error):
        if isinstance(link, VQBrainError) or (isinstance(link, OSError) and link.errno in _DISK_ERRORS):
            return link
        if isinstance(link, (ValueError, KeyError)) and (missing := _missing_base_config(link)) is not None:
            return missing
    return _missing_extra(error) or _component_setting_error(error)


def _one_line(error: BaseException) -> str:
    if isinstance(error, VQBrainError):
        return str(error)
    # an OSError: "[Errno 28] No space left on device: 'x'" reads better as the reason and the file
    filename = getattr(error, "filename", None)
    reason = getattr(error, "strerror", None) or str(error)
    return f"cannot write '{filename}': {reason}" if filename else reason


# one hook per process, whatever the number of calls: a config calls it before and after its base config's keys
_STATE: dict = {"installed": False, "traceback": False, "config": None, "base_config": None, "signal": None}


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    """SIGTERM (``timeout``, ``docker stop``, Slurm) stops the run as Ctrl-C does: a ``KeyboardInterrupt`` here."""
    _STATE["signal"] = signum
    raise KeyboardInterrupt


def _handle_sigterm() -> None:
    """Handle SIGTERM like SIGINT, unless the process already handles it (a host program's own handler stays)."""
    if threading.current_thread() is not threading.main_thread():
        return  # signal handlers can only be set from the main thread
    if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, _stop_on_sigterm)


def install_error_hook(debug: object = False, config: str | None = None, base_config: str | None = None) -> None:
    """Make an uncaught user error print ``error: <message>`` on one line and exit with its status.

    Bundle configs call this first in ``initialize``; calling it again updates the settings of the one hook. Exit
    statuses of a bundle run (``python -m monai.bundle run ...``):

    * 0: success;
    * 1: an input, checkpoint or output problem (:class:`~monai_vqbrain.errors.VQBrainError`), or a full, read-only
      or forbidden disk;
    * 2: a bad setting (:class:`~monai_vqbrain.errors.SettingError`): an unknown key, a value outside what is
      allowed, a value that a component's constructor refuses (a ValueError or TypeError raised while MONAI builds
      it), or a config run without the base config it extends;
    * 3: the run finished but skipped some inputs (:class:`~monai_vqbrain.errors.InputsSkippedError`), unless
      ``--allow_skipped true``;
    * 130: interrupted by Ctrl-C (:class:`~monai_vqbrain.errors.RunInterrupted`): one line, during training
      ``interrupted at epoch N; resume with `--resume true```;
    * 143: stopped by SIGTERM (``timeout``, ``docker stop``, Slurm), handled as Ctrl-C is (the same cleanup: output
      locks released, temporary files removed) unless the process had a SIGTERM handler of its own:
      ``terminated (SIGTERM) at epoch N; resume with `--resume true```.

    Any other exception is a bug and keeps Python's traceback.

    Args:
        debug: True (``--debug true``) keeps full tracebacks for user errors too, as does the environment
            variable ``MONAI_VQBRAIN_TRACEBACK=1``.
        config: the file name of the config that calls this, when it extends ``base_config``.
        base_config: the config ``config`` extends (``train.json``): a reference to a key it does not define is
            then reported as running ``config`` without its base config, in one line, instead of MONAI's traceback.
    """
    if config is not None:
        _STATE["config"], _STATE["base_config"] = config, base_config
    # MONAI warns on every workflow it creates from a config file; the bundle's own configs are what the user runs,
    # and two lines of warning would bury the one line of an error. Only that warning.
    warnings.filterwarnings("ignore", message=CONFIG_FILE_WARNING, category=UserWarning)
    if not _STATE["installed"]:
        previous_hook = sys.excepthook

        def hook(kind: type[BaseException], error: BaseException, traceback: TracebackType | None) -> None:
            if isinstance(error, KeyboardInterrupt) and not _STATE["traceback"]:
                error = RunInterrupted()  # Ctrl-C outside a training engine (loading data, evaluating ...)
            interrupted = next((e for e in exception_chain(error) if isinstance(e, RunInterrupted)), None)
            if interrupted is not None and not _STATE["traceback"]:
                message, status = str(interrupted), interrupted.exit_code
                if _STATE["signal"] == signal.SIGTERM:  # stopped as Ctrl-C stops it, and said so
                    message, status = message.replace("interrupted", "terminated (SIGTERM)", 1), 128 + signal.SIGTERM
                if sys.stderr.isatty():
                    print(file=sys.stderr)  # not at the end of a progress bar's line
                print(message, file=sys.stderr, flush=True)  # not an error: what the user asked for
                raise SystemExit(status)
            user_error = _find_user_error(error)
            if user_error is None or _STATE["traceback"]:
                previous_hook(kind, error, traceback)
                if user_error is None:
                    return
            else:
                print(f"error: {_one_line(user_error)}", file=sys.stderr, flush=True)
            # SystemExit raised by sys.excepthook sets the interpreter's exit status
            raise SystemExit(getattr(user_error, "exit_code", 1))

        # the hook goes in first, so that a bad --debug value is itself reported in one line
        sys.excepthook = hook
        _STATE["installed"] = True
        _handle_sigterm()
    _STATE["traceback"] = bool(os.environ.get("MONAI_VQBRAIN_TRACEBACK"))
    _STATE["traceback"] = _STATE["traceback"] or as_bool(debug, "debug")
