"""Finding the user's input files (files, folders and glob patterns) and telling their format by their name."""

from __future__ import annotations

import fnmatch
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from monai_vqbrain.errors import DatasetError, ImageFileError, SettingError

logger = logging.getLogger(__name__)

PNG_SUFFIXES = (".png",)

NIFTI_SUFFIXES = (".nii.gz", ".nii")

SUPPORTED_SUFFIXES = PNG_SUFFIXES + NIFTI_SUFFIXES
"""File name endings accepted as inputs (case-insensitive)."""

_GLOB_CHARACTERS = frozenset("*?[")


def image_format(path: str | os.PathLike) -> str:
    """``"png"`` or ``"nifti"`` from a file name's ending.

    Raises:
        ImageFileError: naming the file when its ending is not a supported image format.
    """
    name = Path(path).name.lower()
    if name.endswith(PNG_SUFFIXES):
        return "png"
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    raise ImageFileError(f"'{path}' is not a supported image file; expected a PNG (.png) or NIfTI (.nii, .nii.gz) file")


def strip_image_suffix(path: str | os.PathLike) -> str:
    """The file name without its image ending: ``x.nii.gz`` -> ``x``, ``case_1_slice_0.nii.png`` -> ``case_1_slice_0.nii``."""
    name = Path(path).name
    for suffix in NIFTI_SUFFIXES + PNG_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def _is_listed(path: Path) -> bool:
    """Whether a folder's or glob's entry is an input: a file or a dangling symbolic link (reported as bad), not hidden.

    A dangling link is the user's file gone missing, so it is named in the run's report rather than dropped;
    FIFOs, sockets and devices are never taken, as reading one would block or never end.
    """
    return (path.is_file() or (path.is_symlink() and not path.exists())) and not path.name.startswith(".")


def glob_parts(path: Path) -> tuple[Path, list[str]]:
    """A glob split into the folder before its first wildcard and the path components from there on."""
    parts = path.parts
    first = next(i for i, part in enumerate(parts) if _GLOB_CHARACTERS & set(part))
    return Path(*parts[:first]), list(parts[first:])


def _component_matches(name: str, pattern: str) -> bool:
    """``glob``'s rule for one path component: wildcards never match a leading dot (hidden files and folders)."""
    return (pattern.startswith(".") or not name.startswith(".")) and fnmatch.fnmatchcase(name, pattern)


def _glob(path: Path) -> list[Path]:
    """The paths a glob matches, as ``glob.glob(recursive=True)`` finds them, without following a folder twice.

    Python's glob follows every symbolic link to a folder, so a link to ``.`` (or any cycle) makes ``**`` recurse
    until the path is too long: hours, or forever with two such links. Here each real folder is entered once; a
    link that leads back to a folder already entered is skipped with one warning naming it.
    """
    root, patterns = glob_parts(path)
    matches: list[Path] = []
    entered: set[str] = set()

    def visit(folder: Path, remaining: list[str]) -> None:
        if not remaining:
            matches.append(folder)
            return
        pattern, rest = remaining[0], remaining[1:]
        if pattern == "**":
            # '**' matches this folder itself and every folder below it, each entered once
            real = os.path.realpath(folder)
            if real in entered:
                logger.warning(
                    f"skipped folder '{folder}': a symbolic link back to '{real}', whose files the glob already "
                    "lists (a link cycle would make the glob endless)"
                )
                return
            entered.add(real)
            visit(folder, rest)
            for entry in _entries(folder):
                if entry.name.startswith("."):
                    continue
                if _is_folder(entry):
                    visit(Path(entry.path), remaining)
                elif not rest:
                    matches.append(Path(entry.path))  # a trailing '**' matches files too
            return
        if not _GLOB_CHARACTERS & set(pattern):
            candidate = folder / pattern
            if rest and candidate.is_dir() or not rest and (candidate.exists() or candidate.is_symlink()):
                visit(candidate, rest)
            return
        for entry in _entries(folder):
            if _component_matches(entry.name, pattern) and (not rest or _is_folder(entry)):
                visit(Path(entry.path), rest)

    if root.is_dir():
        visit(root, patterns)
    return sorted(matches)


def _is_folder(entry: os.DirEntry) -> bool:
    """Whether an entry is a folder (or a link to one); a loop of links (``a -> b -> a``) is not."""
    try:
        return entry.is_dir()
    except OSError:
        return False


def _entries(folder: Path) -> list[os.DirEntry]:
    """A folder's entries, sorted by name; none when it cannot be listed (as glob, which skips such folders)."""
    try:
        with os.scandir(folder) as entries:
            return sorted(entries, key=lambda entry: entry.name)
    except OSError:
        return []


def _files_of(spec: str) -> list[Path]:
    """The files one input specification names: a file, the image files in a folder, or the files a glob matches."""
    # absolute (not resolved) at once, so that every message and row names the file wherever the run started
    path = Path(spec).expanduser().absolute()
    if path.is_file():
        # a file named explicitly is taken whatever its ending, so a non-image file is reported, not ignored
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if _is_listed(p) and p.name.lower().endswith(SUPPORTED_SUFFIXES))
        if not files:
            raise DatasetError(
                f"input folder '{path}' holds no PNG or NIfTI files; expected files ending in "
                f"{', '.join(SUPPORTED_SUFFIXES)} directly in it (use a glob such as 'folder/**/*.png' for sub-folders)"
            )
        return files
    if _GLOB_CHARACTERS & set(spec):
        # the glob made absolute (``path``) matches absolute paths
        files = [p for p in _glob(path) if _is_listed(p)]
        if not files:
            raise DatasetError(f"input glob '{path}' matched no files; expected it to match PNG or NIfTI files")
        return files
    if path.exists():
        # a FIFO, socket or device: reading it would block or never end
        raise DatasetError(
            f"input '{path}' is not a regular file (a FIFO, socket or device); expected a PNG or NIfTI file, a "
            f"folder of them, or a quoted glob"
        )
    raise DatasetError(
        f"input '{path}' does not exist; expected a PNG or NIfTI file, a folder of them, or a quoted glob"
    )


def find_input_files(
    inputs: str | os.PathLike | Sequence[str | os.PathLike] | None, allow_none: bool = False
) -> list[Path]:
    """Expand the ``input`` of an inference run into a list of files.

    Args:
        inputs: a file, a folder (its PNG and NIfTI files, not recursive), a glob (``**`` recurses; every file it
            matches is taken, so a non-image file it matches is reported as a bad input), or a list of these.
        allow_none: return no files, rather than refuse, when no input is given: the infer workflow's ``dataset``
            is then empty, so MONAI's ``check_properties()`` can build it; its run refuses a missing input.

    Returns:
        The files as absolute paths, symbolic links not resolved (a link is an input of its own, named as the user
        named it), without duplicate paths, in the order given (folders and globs sorted by name).

    Raises:
        SettingError: when no input is given.
        DatasetError: when a path does not exist, a folder holds no images, or a glob matches nothing.
    """
    # the command line may hand over a number for a name like "123"; anything but a list or tuple is one path
    specs = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
    specs = [spec for spec in specs if spec is not None and str(spec).strip()]
    if not specs and allow_none:
        return []
    if not specs:
        # a missing setting, not a bad dataset: exit status 2, as for any other setting
        raise SettingError(
            "input must be a PNG or NIfTI file, a folder of them, a quoted glob or a list of these, got none "
            "(no input given); pass --input PATH"
        )
    # absolute paths, not resolved: a link's outputs and row are named after the link, and a link beside its target
    # is a second input, not a duplicate (check_outputs compares resolved paths to protect the inputs)
    return list(dict.fromkeys(path for spec in specs for path in _files_of(str(spec))))
