"""Report bad user input from bundle runs as one clear message and a documented exit status, not a traceback.

Exit statuses of a bundle run (``python -m monai.bundle run ...``):

* 0: success;
* 1: an input, checkpoint or output problem (:class:`~monai_vqbrain.errors.VQBrainError`), or a full, read-only
  or forbidden disk;
* 2: a bad setting (:class:`~monai_vqbrain.errors.SettingError`): an unknown key or a value outside what is allowed;
* 3: the run finished but skipped some inputs (:class:`~monai_vqbrain.errors.InputsSkippedError`), unless
  ``--allow_skipped true``.

Any other exception is a bug and keeps Python's traceback.
"""

from __future__ import annotations

import errno
import os
import sys
from types import TracebackType

from ..errors import VQBrainError
from ..utils.flags import as_bool

#: OSError numbers that describe the user's disk rather than a bug: reported in one line like a bad input
_DISK_ERRORS = frozenset(
    {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.ENOTDIR, errno.EISDIR}
)


def _find_user_error(error: BaseException | None) -> BaseException | None:
    # MONAI's config parser wraps errors raised while instantiating components; look through the chain
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, VQBrainError):
            return error
        if isinstance(error, OSError) and error.errno in _DISK_ERRORS:
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def _one_line(error: BaseException) -> str:
    if isinstance(error, VQBrainError):
        return str(error)
    # an OSError: "[Errno 28] No space left on device: 'x'" reads better as the reason and the file
    filename = getattr(error, "filename", None)
    reason = getattr(error, "strerror", None) or str(error)
    return f"cannot write '{filename}': {reason}" if filename else reason


def install_error_hook(debug: object = False) -> None:
    """Make an uncaught user error print ``error: <message>`` on one line and exit with its status.

    Bundle configs call this first in ``initialize``. User errors are :class:`~monai_vqbrain.errors.VQBrainError`
    (exit status ``exit_code``: 1, 2 for a bad setting, 3 for skipped inputs) and disk errors (full, read-only,
    permission denied; status 1). Any other exception keeps Python's usual traceback.

    Args:
        debug: True (``--debug true``) keeps full tracebacks for user errors too, as does the environment
            variable ``MONAI_VQBRAIN_TRACEBACK=1``.
    """
    previous_hook = sys.excepthook
    # the hook goes in first, so that a bad --debug value is itself reported in one line
    show_traceback = [bool(os.environ.get("MONAI_VQBRAIN_TRACEBACK"))]

    def hook(kind: type[BaseException], error: BaseException, traceback: TracebackType | None) -> None:
        user_error = _find_user_error(error)
        if user_error is None or show_traceback[0]:
            previous_hook(kind, error, traceback)
            if user_error is None:
                return
        else:
            print(f"error: {_one_line(user_error)}", file=sys.stderr)
            sys.stderr.flush()
        # SystemExit raised by sys.excepthook sets the interpreter's exit status
        raise SystemExit(getattr(user_error, "exit_code", 1))

    sys.excepthook = hook
    show_traceback[0] = show_traceback[0] or as_bool(debug, "debug")
