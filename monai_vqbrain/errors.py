"""Errors raised for bad user input: each message names the offending file and what was expected."""

from __future__ import annotations

from collections.abc import Iterator


class VQBrainError(Exception):
    """Base class of every error this package raises for bad input.

    Attributes:
        exit_code: the process exit status a bundle run ends with when this error stops it (see
            :func:`~monai_vqbrain.workflows.install_error_hook`).
    """

    exit_code: int = 1


class DatasetError(VQBrainError, ValueError):
    """A dataset folder is missing, empty or not in an expected layout."""


class ImageFileError(VQBrainError, ValueError):
    """An image file is missing, corrupt, not an image, or of an unexpected shape or content."""


class CheckpointError(VQBrainError, ValueError):
    """A checkpoint is missing, unreadable, or was saved from another architecture or configuration."""


class OutputPathError(VQBrainError, ValueError):
    """An output would overwrite an input file, another output, or an existing file without ``overwrite``."""


class SettingError(VQBrainError, ValueError):
    """A setting (config entry or ``--key value`` override) is unknown or has a value outside what is allowed."""

    exit_code = 2


class OutputWriteError(VQBrainError, OSError):
    """An output could not be written: the disk is full, the folder is read-only, or permission is denied."""


class RunInterrupted(VQBrainError):
    """A run stopped by Ctrl-C (``KeyboardInterrupt``): reported in one line, with how to resume, and exit status 130
    (128 + SIGINT, as a shell reports an interrupted command).

    Attributes:
        epoch: the training epoch in progress when it was interrupted, when known.
    """

    exit_code = 130

    def __init__(self, message: str = "interrupted", epoch: int | None = None) -> None:
        super().__init__(message)
        self.epoch = epoch


class InputsSkippedError(VQBrainError):
    """A run finished but skipped some of its inputs; raised last so that the exit status tells the caller."""

    exit_code = 3


def exception_chain(error: BaseException | None) -> Iterator[BaseException]:
    """``error`` and its causes (or contexts), outermost first: MONAI wraps errors raised while it builds a config.

    Args:
        error: the exception caught.
    """
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def find_user_error(error: BaseException | None) -> VQBrainError | None:
    """The first :class:`VQBrainError` in an exception's chain (:func:`exception_chain`), or None.

    Args:
        error: the exception caught.
    """
    return next((link for link in exception_chain(error) if isinstance(link, VQBrainError)), None)
