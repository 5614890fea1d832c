"""Dataset entry points: resolve the dataset folder, detect its layout and build a cached MONAI dataset of slices."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from monai.data import CacheDataset
from monai.transforms import Compose

from monai_vqbrain.data.demo import default_demo_dir, ensure_demo_dataset
from monai_vqbrain.data.limits import DEFAULT_MAX_IMAGE_PIXELS, DEFAULT_MAX_VOLUME_VOXELS, DEFAULT_MIN_SLICE_SIZE
from monai_vqbrain.data.oasis import PNG_FOLDER_PREFIX, canonical_split, list_oasis_png_split, locate_png_root
from monai_vqbrain.data.slices import list_volume_slices
from monai_vqbrain.data.transforms import get_slice_transforms
from monai_vqbrain.data.volume_files import has_volume_files, list_nifti_volumes, subject_id
from monai_vqbrain.errors import DatasetError

logger = logging.getLogger(__name__)

DATASET_FORMATS = ("auto", "png", "nifti")
_EXPECTED_LAYOUT = (
    f"a folder holding {PNG_FOLDER_PREFIX}train/, {PNG_FOLDER_PREFIX}validate/ and {PNG_FOLDER_PREFIX}test/ "
    "(OASIS PNG slices) or NIfTI volumes (.nii, .nii.gz, .img+.hdr)"
)


def resolve_dataset_dir(dataset_dir: str | os.PathLike | None, demo_dir: str | os.PathLike | None = None) -> Path:
    """Turn the ``dataset_dir`` setting into an existing dataset folder.

    A given path must be an existing folder, so that a typo does not silently train on demo data.

    Args:
        dataset_dir: the dataset folder, or None/``""`` for the built-in demo dataset (generated on first use).
        demo_dir: where the demo dataset lives; :func:`default_demo_dir` when None.

    Returns:
        The absolute dataset folder.

    Raises:
        DatasetError: when ``dataset_dir`` is given but is not an existing folder.
    """
    if dataset_dir is None or str(dataset_dir).strip() == "":
        return ensure_demo_dataset(demo_dir or default_demo_dir())
    path = Path(dataset_dir).expanduser()
    if not path.exists():
        raise DatasetError(f"dataset_dir '{path}' does not exist; expected {_EXPECTED_LAYOUT}")
    if not path.is_dir():
        raise DatasetError(f"dataset_dir '{path}' is a file, not a folder; expected {_EXPECTED_LAYOUT}")
    return path.resolve()


def _describe_contents(root: Path, limit: int = 8) -> str:
    """A short listing of a folder, for error messages."""
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir() if not p.name.startswith("."))
    if not names:
        return "it is empty"
    shown = ", ".join(names[:limit]) + (f", ... ({len(names)} entries)" if len(names) > limit else "")
    return f"found: {shown}"


def detect_dataset_format(root: str | os.PathLike) -> str:
    """Tell which layout a dataset folder has.

    Args:
        root: the dataset folder.

    Returns:
        ``"png"`` when it holds ``keras_png_slices_*`` image folders (directly or in ``keras_png_slices_data/``),
        ``"nifti"`` when it holds ``.nii``/``.nii.gz``/``.img`` files anywhere below it.

    Raises:
        DatasetError: when the folder is missing or has neither layout, saying what was found.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetError(f"dataset folder '{root}' does not exist; expected {_EXPECTED_LAYOUT}")
    if locate_png_root(root) is not None:
        return "png"
    if has_volume_files(root):
        return "nifti"
    hint = ""
    if root.name.lower().startswith(PNG_FOLDER_PREFIX):
        hint = f"; '{root.name}' looks like one split folder: pass the folder that holds it ('{root.parent}')"
    raise DatasetError(
        f"dataset folder '{root}' has no known layout: expected {_EXPECTED_LAYOUT}; {_describe_contents(root)}{hint}"
    )


def get_datalist(
    dataset_dir: str | os.PathLike | None,
    split: str,
    dataset_format: str = "auto",
    slice_axis: int = 2,
    slice_range: Sequence[float] = (0.2, 0.8),
    min_foreground: float = 0.05,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    max_items: int | None = None,
    max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
    max_volume_voxels: int | None = DEFAULT_MAX_VOLUME_VOXELS,
    min_slice_size: int | None = DEFAULT_MIN_SLICE_SIZE,
) -> list[dict]:
    """List the 2D slices of one split as datalist items for ``preprocessing`` (``train.json``) to load.

    The items are those of :func:`list_oasis_png_split` (OASIS PNG slices, and the demo data) or of
    :func:`list_volume_slices` (NIfTI and Analyze volumes). Files are checked here, so a missing folder or a corrupt
    file is reported before training.

    Args:
        dataset_dir: the dataset folder, or None/``""`` for the demo dataset (:func:`resolve_dataset_dir`).
        split: ``"train"``, ``"validate"`` or ``"test"``.
        dataset_format: ``"png"`` (OASIS PNG slices), ``"nifti"`` (volumes) or ``"auto"`` to detect.
        slice_axis: NIfTI only: the RAS axis to slice along (2: axial).
        slice_range: NIfTI only: the part of that axis to keep, as fractions of its length.
        min_foreground: NIfTI only: skip slices with a smaller fraction of pixels above 0.05.
        val_fraction: NIfTI only: fraction of subjects for ``validate`` when there are no split folders.
        test_fraction: NIfTI only: fraction of subjects for ``test`` when there are no split folders.
        seed: NIfTI only: seed of the subject split.
        max_items: keep only the first this many items (for quick runs); None keeps all.
        max_image_pixels: the most pixels a PNG's header may declare, and the most any slice (PNG or cut from a
            volume) may hold once padded to a square; None allows any.
        max_volume_voxels: the most voxels a NIfTI/Analyze header may declare; None allows any.
        min_slice_size: the smallest in-plane side a slice may have; None allows any.

    Raises:
        DatasetError: when the folder, the split or its images are missing.
        ImageFileError: when an image file is unreadable or of an unexpected shape.
        ValueError: for invalid options.
    """
    split = canonical_split(split)
    if dataset_format not in DATASET_FORMATS:
        raise ValueError(f"dataset_format must be one of {', '.join(DATASET_FORMATS)}, got {dataset_format!r}")
    if max_items is not None and (int(max_items) != max_items or max_items < 1):
        raise ValueError(f"max_items must be a positive integer or None, got {max_items!r}")
    root = resolve_dataset_dir(dataset_dir)
    found_format = detect_dataset_format(root) if dataset_format == "auto" else dataset_format
    if found_format == "png":
        items = list_oasis_png_split(root, split, max_items, max_image_pixels, min_slice_size)
    else:
        files = list_nifti_volumes(root, split, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
        items = list_volume_slices(
            files, slice_axis, slice_range, min_foreground, max_voxels=max_volume_voxels, max_items=max_items,
            min_slice_size=min_slice_size, max_pixels=max_image_pixels,
        )
        if not items:
            raise DatasetError(
                f"split {split!r} of NIfTI dataset folder '{root}' gave no slices from its {len(files)} volume(s): "
                f"every slice in slice_range={tuple(slice_range)} along slice_axis={slice_axis} has less than "
                f"min_foreground={min_foreground} of its pixels above 0.05; expected brain volumes, or lower "
                "min_foreground"
            )
        # what the subject split and the slice filters gave: worth seeing before training on it
        volumes = {str(item["image"]) for item in items}
        subjects = {subject_id(path, root.resolve()) for path in files}
        read = ""
        if max_items is not None and len(volumes) < len(files):
            read = f" (the first {len(volumes)}: max_items={max_items})"
        logger.info(
            f"NIfTI {split} split: {len(files)} volume(s){read} of {len(subjects)} subject(s), {len(items)} slice(s) "
            f"along slice_axis={slice_axis} in slice_range={list(slice_range)} with min_foreground={min_foreground}"
        )
    _warn_outside_links(root, split, items)
    return items


def _warn_outside_links(root: Path, split: str, items: Sequence[Mapping]) -> None:
    """Warn, in one line, that files of a split lie outside the data folder through symbolic links.

    They are read as data (links into a shared store are a way to select a subset), but a user who did not make them
    should know the run reads files outside ``dataset_dir``.
    """
    targets = {file: Path(file).resolve() for file in dict.fromkeys(str(item["image"]) for item in items)}
    outside = [(file, target) for file, target in targets.items() if not target.is_relative_to(root)]
    if outside:
        file, target = outside[0]
        logger.warning(
            f"{len(outside)} file(s) of the {split} split lie outside the data folder '{root}' through symbolic links "
            f"(e.g. '{file}' -> '{target}'); they are read as data: remove the links if that is not meant."
        )


def dataset_record(dataset_dir: str | os.PathLike, splits: Mapping[str, Sequence[Mapping]]) -> dict:
    """What a training run trained on, for its checkpoints: the folder, each split's size and a fingerprint.

    The fingerprint is a SHA-256 of the sorted ``split:relative path[#slice]`` lines of every item, so it changes when
    a file is added, removed or renamed, or when items move between splits (another ``seed``, ``val_fraction`` or
    ``max_items``), but not when the same folder is moved or copied elsewhere. A resumed run compares it with the
    one in the checkpoint (see :func:`~monai_vqbrain.workflows.check_checkpoint_dir`).

    Args:
        dataset_dir: the resolved dataset folder.
        splits: split name (``train``, ``validate``) to its datalist (items with ``image`` and, for volumes,
            ``slice_index``).
    """
    root = Path(dataset_dir).expanduser().resolve()
    lines = []
    for split, items in splits.items():
        for item in items:
            path = Path(str(item["image"])).expanduser().absolute()
            relative = path.relative_to(root).as_posix() if path.is_relative_to(root) else path.as_posix()
            suffix = f"#{item['slice_index']}" if "slice_index" in item else ""
            lines.append(f"{split}:{relative}{suffix}")
    sizes = {split: len(items) for split, items in splits.items()}
    return {
        "dir": str(root),
        "sizes": sizes,
        "fingerprint": hashlib.sha256("\n".join(sorted(lines)).encode()).hexdigest()[:16],
    }


def get_dataset(
    dataset_dir: str | os.PathLike | None,
    split: str,
    image_size: int = 128,
    cache_rate: float = 1.0,
    num_workers: int = 0,
    random_transforms: Sequence[Callable] | None = None,
    max_volume_voxels: int | None = DEFAULT_MAX_VOLUME_VOXELS,
    **datalist_kwargs: Any,
) -> CacheDataset:
    """Build the cached dataset of one split: items ``{"image": float32 tensor (1, S, S) in [0, 1], "name": str}``.

    The Python form of ``train.json``'s ``train#dataset``: a ``CacheDataset`` over :func:`get_datalist` with the
    ``preprocessing`` steps of :func:`~monai_vqbrain.data.transforms.get_slice_transforms`.

    Args:
        dataset_dir: the dataset folder, or None/``""`` for the demo dataset (:func:`resolve_dataset_dir`).
        split: ``"train"``, ``"validate"`` or ``"test"``.
        image_size: the side ``S`` of the square images.
        cache_rate: fraction of the items cached in memory by ``CacheDataset``.
        num_workers: threads that fill the cache (0 or 1: one thread).
        random_transforms: dictionary transforms applied after the cache on every access, e.g. the training
            split's random crops (``train_augmentation`` in ``train.json``).
        max_volume_voxels: the most voxels a NIfTI/Analyze header may declare; None allows any.
        datalist_kwargs: the other arguments of :func:`get_datalist`, by name.

    Raises:
        DatasetError, ImageFileError, ValueError: as :func:`get_datalist`.
    """
    transforms = get_slice_transforms(image_size, max_volume_voxels=max_volume_voxels)
    items = get_datalist(dataset_dir, split, max_volume_voxels=max_volume_voxels, **datalist_kwargs)
    if random_transforms:
        # CacheDataset caches the output of the deterministic steps and runs these on every access
        transforms = Compose([*transforms.transforms, *random_transforms])
    return CacheDataset(
        data=items, transform=transforms, cache_rate=cache_rate, num_workers=num_workers, progress=len(items) > 1000
    )
