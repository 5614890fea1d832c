"""Report bad user input from bundle runs as one clear message instead of a deep traceback."""

from __future__ import annotations

import sys
from types import TracebackType

from ..errors import VQBrainError


def _find_user_error(error: BaseException | None) -> VQBrainError | None:
    # MONAI's config parser wraps errors raised while instantiating components; look through the chain
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, VQBrainError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def install_error_hook() -> None:
    """Make an uncaught :class:`~monai_vqbrain.errors.VQBrainError` print ``error: <message>`` and exit with 1.

    Bundle configs call this in ``initialize``; any other exception keeps Python's usual traceback. Set the
    environment variable ``MONAI_VQBRAIN_TRACEBACK=1`` to see full tracebacks for our errors as well.
    """
    import os

    previous_hook = sys.excepthook

    def hook(kind: type[BaseException], error: BaseException, traceback: TracebackType | None) -> None:
        user_error = _find_user_error(error)
        if user_error is None or os.environ.get("MONAI_VQBRAIN_TRACEBACK"):
            previous_hook(kind, error, traceback)
            return
        print(f"error: {user_error}", file=sys.stderr)
        sys.stderr.flush()

    sys.excepthook = hook
