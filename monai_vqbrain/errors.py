"""Errors raised for bad user input: each message names the offending file and what was expected."""

from __future__ import annotations


class VQBrainError(Exception):
    """Base class of every error this package raises for bad input."""


class DatasetError(VQBrainError, ValueError):
    """A dataset folder is missing, empty or not in an expected layout."""


class ImageFileError(VQBrainError, ValueError):
    """An image file is missing, corrupt, not an image, or of an unexpected shape or content."""


class CheckpointError(VQBrainError, ValueError):
    """A checkpoint is missing, unreadable, or was saved from another architecture or configuration."""


class OutputPathError(VQBrainError, ValueError):
    """An output would overwrite an input file, another output, or an existing file without ``overwrite``."""
