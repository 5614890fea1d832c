"""Finding OASIS-style NIfTI/Analyze volumes in a folder and splitting their subjects without leakage.

The folder layout and the split rules are README.md's ("NIfTI / Analyze volumes").
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Iterable
from pathlib import Path

from monai_vqbrain.data.oasis import SPLIT_ALIASES, canonical_split, refuse_link_loop
from monai_vqbrain.errors import DatasetError, ImageFileError

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".img")
"""File name endings of the volumes looked for; an Analyze ``.img`` needs its ``.hdr`` beside it."""

_SUBJECT_PATTERN = re.compile(r"OAS\d_\d{4}")

# sub-folder names that mark an explicit split, mapped to the split they hold
_SPLIT_FOLDER_NAMES = {**SPLIT_ALIASES, "training": "train", "testing": "test"}


def _walk_volume_files(root: Path) -> Iterable[Path]:
    """Yield the NIfTI/Analyze files below ``root`` in a stable order, skipping hidden files and folders."""
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith(".") and name.lower().endswith(VOLUME_SUFFIXES):
                yield Path(folder) / name


def has_volume_files(root: str | os.PathLike) -> bool:
    """True when any NIfTI/Analyze volume file lies below ``root``; stops at the first one found."""
    return any(_walk_volume_files(Path(root).expanduser()))


def find_volume_files(root: str | os.PathLike) -> list[Path]:
    """List the NIfTI/Analyze volumes below ``root`` (recursively), sorted by path.

    Args:
        root: the folder to search.

    Raises:
        ImageFileError: naming an Analyze ``.img`` whose ``.hdr`` is missing.
    """
    files = []
    for path in _walk_volume_files(Path(root).expanduser()):
        refuse_link_loop(path, "an image file")
        if path.name.lower().endswith(".img") and not any(path.with_suffix(s).is_file() for s in (".hdr", ".HDR")):
            raise ImageFileError(
                f"Analyze image '{path}' has no header: expected '{path.with_suffix('.hdr').name}' beside it"
            )
        # the entry, not its link target: a message must name the entry the user can remove or mend
        files.append(path.parent.resolve() / path.name)
    return sorted(files)


def subject_id(path: str | os.PathLike, root: str | os.PathLike | None = None) -> str:
    """The subject a volume belongs to: the OASIS id (``OAS1_0001``) in its path, else its name without extension.

    Args:
        path: the volume file.
        root: when given, only the part of ``path`` below ``root`` is searched for an OASIS id, so that an id in
            the dataset folder's own name does not put every volume in one subject.
    """
    path = Path(path)
    searched = str(path.relative_to(root)) if root is not None and path.is_relative_to(root) else str(path)
    match = _SUBJECT_PATTERN.findall(searched)
    if match:
        return match[-1]
    suffix = next((suffix for suffix in VOLUME_SUFFIXES if path.name.lower().endswith(suffix)), "")
    return path.name[: len(path.name) - len(suffix)]


def _split_counts(num_subjects: int, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    """Numbers of validation and test subjects: rounded fractions, at least one each when there are >= 3 subjects."""
    num_val, num_test = (
        max(round(num_subjects * fraction), int(num_subjects >= 3)) if fraction > 0 else 0
        for fraction in (val_fraction, test_fraction)
    )
    # always leave at least one training subject
    while num_subjects > 0 and num_val + num_test > num_subjects - 1:
        if num_val >= num_test:
            num_val -= 1
        else:
            num_test -= 1
    return num_val, num_test


def split_subjects(
    subjects: Iterable[str], val_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 0
) -> dict[str, list[str]]:
    """Assign subjects to splits by a seeded shuffle of their sorted ids.

    Args:
        subjects: subject ids (duplicates are merged).
        val_fraction: fraction of subjects for ``validate``.
        test_fraction: fraction of subjects for ``test``.
        seed: the shuffle seed; the same seed and subjects always give the same split.

    Returns:
        ``{"train": [...], "validate": [...], "test": [...]}``, each sorted.

    Raises:
        ValueError: when the fractions are negative or leave no room for training subjects.
    """
    if val_fraction < 0 or test_fraction < 0 or val_fraction + test_fraction >= 1:
        raise ValueError(
            f"val_fraction ({val_fraction}) and test_fraction ({test_fraction}) must be >= 0 and sum to less than 1"
        )
    ordered = sorted(set(subjects))
    random.Random(seed).shuffle(ordered)
    num_val, num_test = _split_counts(len(ordered), val_fraction, test_fraction)
    return {
        "test": sorted(ordered[:num_test]),
        "validate": sorted(ordered[num_test : num_test + num_val]),
        "train": sorted(ordered[num_test + num_val :]),
    }


def _split_folders(root: Path) -> dict[str, Path]:
    """The explicit split sub-folders of ``root`` (``train``, ``validate``/``val``/``validation``, ``test``)."""
    folders: dict[str, Path] = {}
    for child in sorted(root.iterdir()):
        split = _SPLIT_FOLDER_NAMES.get(child.name.lower())
        if split is not None and child.is_dir():
            folders.setdefault(split, child)
    return folders


def list_nifti_volumes(
    root: str | os.PathLike, split: str, val_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 0
) -> list[Path]:
    """List the volumes of one split of a NIfTI/Analyze dataset.

    When ``root`` has ``train``/``validate``/``test`` sub-folders (``val``/``validation`` also name the validation
    one), the split's folder is searched; otherwise all volumes below ``root`` are grouped by :func:`subject_id`
    and the subjects are split by :func:`split_subjects`, so no subject is in two splits.

    Args:
        root: the dataset folder.
        split: ``"train"``, ``"validate"`` or ``"test"``.
        val_fraction: fraction of subjects for ``validate`` when splitting by subject.
        test_fraction: fraction of subjects for ``test`` when splitting by subject.
        seed: the subject shuffle seed.

    Returns:
        The split's volume files (absolute paths), sorted.

    Raises:
        DatasetError: when ``root`` or the split's folder is missing, or the split has no volume.
        ImageFileError: naming an Analyze ``.img`` whose ``.hdr`` is missing.
    """
    split = canonical_split(split)
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetError(f"NIfTI dataset folder '{root}' does not exist; expected a folder of .nii/.nii.gz volumes")
    folders = _split_folders(root)
    if folders:
        if split not in folders:
            raise DatasetError(
                f"NIfTI dataset folder '{root}' has split folders ({', '.join(sorted(p.name for p in folders.values()))}) "
                f"but none for split {split!r}; expected a sub-folder named {split!r}"
                + (" (or 'val'/'validation')" if split == "validate" else "")
            )
        files = find_volume_files(folders[split])
        if not files:
            raise DatasetError(
                f"split folder '{folders[split]}' holds no volumes; expected .nii, .nii.gz or .img+.hdr files below it"
            )
        return files

    files = find_volume_files(root)
    if not files:
        raise DatasetError(f"NIfTI dataset folder '{root}' holds no volumes; expected .nii, .nii.gz or .img+.hdr files")
    subjects = {path: subject_id(path, root.resolve()) for path in files}
    assignment = split_subjects(subjects.values(), val_fraction, test_fraction, seed)
    chosen = set(assignment[split])
    selected = [path for path in files if subjects[path] in chosen]
    if not selected:
        raise DatasetError(
            f"split {split!r} of NIfTI dataset folder '{root}' is empty: its {len(assignment['train'])} training, "
            f"{len(assignment['validate'])} validation and {len(assignment['test'])} test subjects come from "
            f"{len(set(subjects.values()))} subject(s) (val_fraction={val_fraction}, test_fraction={test_fraction}); "
            f"expected at least 3 subjects, or train/validate/test sub-folders"
        )
    return selected
