"""OASIS-style NIfTI/Analyze volumes: finding them, splitting subjects without leakage, and cutting 2D slices.

The folder layout and the split rules are README.md's ("NIfTI / Analyze volumes"). Slices come out in display
orientation: each volume is reoriented to RAS, and a slice is rotated so that the higher end of its vertical world axis
(anterior for axial, superior for coronal and sagittal slices) is at the top and the patient's right is on the
image's right (neurological convention).

Training and inference read volumes through :class:`VolumeSlices`: one slice at a time from nibabel's array proxy,
the per-volume intensity percentiles streamed, so that memory holds a slice rather than a volume (a 512³ volume
would take 40 bytes a voxel through a whole-volume reader; the tests keep one, ``tests/nifti_oracle.py``, as the
reference the slice reader is checked against).
"""

from __future__ import annotations

import errno
import functools
import math
import os
import random
import re
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform

from monai_vqbrain.data.limits import (
    DEFAULT_MAX_IMAGE_PIXELS,
    DEFAULT_MAX_VOLUME_VOXELS,
    DEFAULT_MIN_SLICE_SIZE,
    check_image_size,
    check_slice_shape,
)
from monai_vqbrain.data.oasis import SPLIT_ALIASES, canonical_split
from monai_vqbrain.errors import DatasetError, ImageFileError

__all__ = [
    "VOLUME_SUFFIXES",
    "FOREGROUND_THRESHOLD",
    "is_volume_file",
    "has_volume_files",
    "find_volume_files",
    "subject_id",
    "split_subjects",
    "list_nifti_volumes",
    "check_nifti_header",
    "robust_range",
    "scale_to_unit",
    "voxel_orientation",
    "VolumeSlices",
    "open_volume_slices",
    "volume_intensity_range",
    "read_volume_plane",
    "kept_volume_slices",
    "volume_plane",
    "list_volume_slices",
]

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".img")
"""File name endings of the volumes looked for; an Analyze ``.img`` needs its ``.hdr`` beside it."""

FOREGROUND_THRESHOLD = 0.05
"""Intensity (after scaling to [0, 1]) above which a pixel counts as foreground for ``min_foreground``."""

_RAS = axcodes2ornt("RAS")
_SUBJECT_PATTERN = re.compile(r"OAS\d_\d{4}")
# sub-folder names that mark an explicit split, mapped to the split they hold
_SPLIT_FOLDER_NAMES = {**SPLIT_ALIASES, "training": "train", "testing": "test"}


def is_volume_file(path: str | os.PathLike) -> bool:
    """True when the file name ends like a NIfTI volume or an Analyze image (hidden files excluded)."""
    name = Path(path).name
    return not name.startswith(".") and name.lower().endswith(VOLUME_SUFFIXES)


def _strip_volume_suffix(name: str) -> str:
    """The file name without its volume extension(s): ``x.nii.gz`` -> ``x``."""
    lower = name.lower()
    for suffix in VOLUME_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _analyze_header(image_path: Path) -> Path | None:
    """The ``.hdr`` beside an Analyze ``.img`` (either case), or None when it is missing."""
    stem = image_path.name[: -len(".img")]
    for suffix in (".hdr", ".HDR"):
        header = image_path.with_name(stem + suffix)
        if header.is_file():
            return header
    return None


def _walk_volume_files(root: Path) -> Iterable[Path]:
    """Yield the volume files below ``root`` in a stable order, skipping hidden files and folders."""
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if is_volume_file(name):
                yield Path(folder) / name


def _refuse_link_loop(path: Path) -> None:
    """Refuse a data file that is a loop of symbolic links (``a -> b -> a``), naming it, rather than a traceback.

    Raises:
        ImageFileError: naming the file.
    """
    try:
        os.stat(path)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise ImageFileError(
                f"'{path}' is a loop of symbolic links (it leads back to itself); expected an image file: remove the "
                "link or point it at the file"
            ) from None


def has_volume_files(root: str | os.PathLike) -> bool:
    """True when any NIfTI/Analyze volume file lies below ``root``; stops at the first one found."""
    return next(iter(_walk_volume_files(Path(root).expanduser())), None) is not None


def find_volume_files(root: str | os.PathLike) -> list[Path]:
    """List the NIfTI/Analyze volumes below ``root`` (recursively), sorted by path.

    Args:
        root: the folder to search.

    Raises:
        ImageFileError: naming an Analyze ``.img`` whose ``.hdr`` is missing.
    """
    files = []
    for path in _walk_volume_files(Path(root).expanduser()):
        _refuse_link_loop(path)
        if path.name.lower().endswith(".img") and _analyze_header(path) is None:
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
    return match[-1] if match else _strip_volume_suffix(path.name)


def _split_counts(num_subjects: int, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    """Numbers of validation and test subjects: rounded fractions, at least one each when there are >= 3 subjects."""
    counts = []
    for fraction in (val_fraction, test_fraction):
        count = round(num_subjects * fraction) if fraction > 0 else 0
        if fraction > 0 and num_subjects >= 3:
            count = max(count, 1)
        counts.append(count)
    num_val, num_test = counts
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


def _spatial_shape(shape: Sequence[int], path: Path) -> tuple[int, ...]:
    """The 2D or 3D spatial shape of a volume, dropping trailing singleton dims (e.g. a 4D volume of one frame).

    Raises:
        ImageFileError: naming the file when it is a true 4D (or higher) volume, or has fewer than 2 dims or no voxels.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) > 3:
        if any(s != 1 for s in shape[3:]):
            raise ImageFileError(
                f"'{path}' is a {len(shape)}D volume of shape {shape}; expected a 3D volume (or a 4D one whose "
                "extra dimensions are all 1)"
            )
        shape = shape[:3]
    if len(shape) < 2 or min(shape) < 1:
        raise ImageFileError(f"'{path}' has shape {shape}; expected a 3D volume (or a 2D slice)")
    return shape


def _open_volume(
    path: Path, max_voxels: int | None = DEFAULT_MAX_VOLUME_VOXELS, keep_file_open: bool = False
) -> tuple[nib.spatialimages.SpatialImage, tuple[int, ...]]:
    """Open a volume (header only; nibabel reads voxels lazily) and return it with its checked spatial shape.

    ``keep_file_open`` keeps one file handle for the slices read from it, so that a ``.nii.gz`` read slice after
    slice is decompressed once, not once per slice.
    """
    try:
        image = nib.load(str(path), keep_file_open=keep_file_open) if keep_file_open else nib.load(str(path))
        shape = image.shape
        dtype = image.get_data_dtype()
    except Exception as err:  # nibabel raises many types (ImageFileError, gzip/zlib errors, EOFError, ...)
        raise ImageFileError(f"cannot read volume '{path}' ({err}); expected a NIfTI or Analyze image") from err
    check_image_size(path, shape, max_voxels, "max_volume_voxels")
    if dtype.fields is not None or dtype.kind not in "biuf":
        kind = "RGB/RGBA (one colour triple per voxel)" if dtype.fields is not None else f"{dtype} values"
        raise ImageFileError(
            f"'{path}' stores {kind}; expected one grey intensity per voxel (integer or floating point)"
        )
    return image, _spatial_shape(shape, path)


def check_nifti_header(path: str | os.PathLike, max_voxels: int | None = DEFAULT_MAX_VOLUME_VOXELS) -> tuple[int, ...]:
    """Read only the header of a NIfTI/Analyze file and check it holds a 2D or 3D grey image of bounded size.

    Args:
        path: the volume file.
        max_voxels: the most voxels the header may declare (``max_volume_voxels``); None allows any.

    Returns:
        Its spatial shape (2 or 3 dims, extra singleton dims dropped).

    Raises:
        ImageFileError: naming the file when it cannot be read, is too large, stores colour or complex voxels, or
            is not a 2D/3D image.
    """
    return _open_volume(Path(path), max_voxels)[1]


def robust_range(volume: np.ndarray, lower: float = 0.5, upper: float = 99.5) -> tuple[float, float]:
    """The intensities the per-volume scaling maps to 0 and 1: the ``lower`` and ``upper`` percentiles.

    Percentiles rather than min/max so that a few hot voxels do not darken the whole volume. When the percentiles
    coincide (a volume that is mostly one value, e.g. tiny foreground) min/max is used instead; equal values mean a
    constant volume, which scales to all zeros.

    Args:
        volume: the voxel intensities.
        lower: the percentile mapped to 0.
        upper: the percentile mapped to 1.
    """
    low, high = (float(v) for v in np.percentile(volume, [lower, upper]))
    if high <= low:
        low, high = float(volume.min()), float(volume.max())
    return low, high


def scale_to_unit(volume: np.ndarray, low: float, high: float) -> np.ndarray:
    """``volume`` mapped linearly from ``[low, high]`` to ``[0, 1]`` and clipped, as float32 (zeros when constant).

    Args:
        volume: the voxel intensities.
        low: the intensity mapped to 0, from :func:`robust_range`.
        high: the intensity mapped to 1.
    """
    if high <= low:
        return np.zeros_like(volume, dtype=np.float32)
    scaled = (volume - low) / (high - low)
    return np.clip(scaled, 0.0, 1.0, out=scaled).astype(np.float32, copy=False)


def voxel_orientation(affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray | None:
    """nibabel's axis orientation of a 3D volume with this affine, or None when an axis has no direction.

    A singleton axis may have no direction (e.g. a 2D slice saved with a zero slice thickness): it is given a world
    axis no other voxel axis uses, which cannot change the voxel data since the axis has one voxel.

    Args:
        affine: the voxel-to-world affine.
        shape: the 3D voxel shape.
    """
    orientation = io_orientation(affine)
    undefined = np.isnan(orientation[:, 0])
    if not undefined.any():
        return orientation
    if any(shape[axis] != 1 for axis in np.flatnonzero(undefined)):
        return None
    free = [axis for axis in range(3) if axis not in orientation[~undefined, 0]]
    orientation[undefined] = [[axis, 1.0] for axis in free[: int(undefined.sum())]]
    return orientation


def _file_orientation(path: Path, image: nib.spatialimages.SpatialImage, shape: tuple[int, ...]) -> np.ndarray:
    """The orientation of a volume's voxel axes, from its affine; ``shape`` is its 3D voxel shape.

    Raises:
        ImageFileError: naming the file when its affine holds NaN or infinite values, or gives a voxel axis (of more
            than one voxel) no direction (a singular affine).
    """
    try:
        affine = np.asarray(image.affine, dtype=np.float64)
    except Exception as err:  # a header whose fields give no affine
        raise ImageFileError(
            f"'{path}' has no readable voxel-to-world affine ({err}); expected a valid qform or sform"
        ) from err
    if affine.shape != (4, 4) or not np.isfinite(affine).all():
        raise ImageFileError(
            f"'{path}' has a voxel-to-world affine with NaN or infinite values ({affine.tolist()}); expected a valid "
            "affine (qform or sform)"
        )
    try:
        orientation = voxel_orientation(affine, shape)
    except np.linalg.LinAlgError:
        orientation = None
    if orientation is None:
        raise ImageFileError(
            f"'{path}' has an affine with no clear axis directions ({affine.tolist()}); expected a "
            "valid voxel-to-world affine (qform or sform)"
        )
    return orientation


def _read_scaled(dataobj: object, slicer: tuple) -> np.ndarray:
    """``dataobj[slicer]`` as float32, scaled by the header's slope and intercept exactly as ``get_fdata`` scales.

    nibabel's ``get_fdata(dtype=float32)`` scales in float32 while ``dataobj[slicer]`` scales in the slope's own
    type; the array proxy's scaling with the float32 type keeps a slice's values those of the whole volume.
    """
    get_scaled = getattr(dataobj, "_get_scaled", None)
    if get_scaled is not None:
        return np.asarray(get_scaled(dtype=np.float32, slicer=slicer), dtype=np.float32)
    return np.asarray(np.asarray(dataobj)[slicer], dtype=np.float32)  # an image made in memory


def _ordered_keys(values: np.ndarray) -> np.ndarray:
    """uint32 keys that sort as the float32 ``values`` do (the IEEE bit pattern, sign handled)."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    return np.where(bits & np.uint32(0x80000000), ~bits, bits | np.uint32(0x80000000))


def _key_values(keys: np.ndarray) -> np.ndarray:
    """The float32 values of :func:`_ordered_keys` keys."""
    keys = np.asarray(keys, dtype=np.uint32)
    bits = np.where(keys & np.uint32(0x80000000), keys & np.uint32(0x7FFFFFFF), ~keys)
    return bits.astype(np.uint32).view(np.float32)


class VolumeSlices:
    """One volume's RAS slices, read one at a time from nibabel's array proxy: memory for a slice, not the volume.

    Opening reads and checks the header and affine only. :meth:`plane` reads the voxels of one slice (the file's
    voxels that make RAS slice ``index`` along RAS ``axis``), reorients them and shows them in display orientation:
    the same values as :func:`volume_plane` of the whole volume read at once. :meth:`intensity_range`
    streams the volume slab by slab for the percentiles :func:`robust_range` would compute on it.

    Args:
        path: a NIfTI (``.nii``, ``.nii.gz``) or Analyze (``.img`` with ``.hdr``) file.
        max_voxels: the most voxels the header may declare; None allows any.

    Raises:
        ImageFileError: naming the file when its header is unreadable, too large, not a 2D/3D grey image, or its
            affine is not finite or gives an axis no direction.
    """

    def __init__(self, path: str | os.PathLike, max_voxels: int | None = DEFAULT_MAX_VOLUME_VOXELS) -> None:
        self.path = Path(path)
        self.image, self.shape = _open_volume(self.path, max_voxels, keep_file_open=True)
        self.shape3 = self.shape + (1,) * (3 - len(self.shape))
        self.orientation = _file_orientation(self.path, self.image, self.shape3)
        self.to_ras = ornt_transform(self.orientation, _RAS)
        self.from_ras = ornt_transform(_RAS, self.orientation)
        ras_shape = [0, 0, 0]
        for file_axis, (ras_axis, _) in enumerate(self.to_ras):
            ras_shape[int(ras_axis)] = self.shape3[file_axis]
        self.ras_shape = tuple(ras_shape)
        #: what the voxels are read from; tests may wrap it to count what is read
        self.dataobj = self.image.dataobj

    def file_index(self, axis: int, index: int) -> tuple[int, int]:
        """The file's voxel axis and index that hold RAS slice ``index`` along RAS ``axis``."""
        file_axis = int(np.flatnonzero(self.to_ras[:, 0] == axis)[0])
        flipped = self.to_ras[file_axis, 1] < 0
        return file_axis, (self.shape3[file_axis] - 1 - index if flipped else index)

    def _read(self, ranges: dict[int, tuple[int, int]]) -> np.ndarray:
        """The voxels in ``{axis: (start, stop)}`` (whole along the other spatial axes) as a float32 3D array."""
        ndim = len(self.image.shape)
        slicer = tuple(slice(*ranges[d]) if d in ranges else (slice(None) if d < 3 else 0) for d in range(ndim))
        try:
            data = _read_scaled(self.dataobj, slicer)
        except FileNotFoundError as err:
            raise ImageFileError(
                f"'{self.path}' can no longer be read ({err}); it was removed or moved while the run used it"
            ) from err
        except Exception as err:  # nibabel raises many types (EOFError, zlib and gzip errors, ValueError, ...)
            raise ImageFileError(
                f"cannot read the voxels of volume '{self.path}' ({err}); the file may be truncated"
            ) from err
        sizes = {d: stop - start for d, (start, stop) in ranges.items()}
        return data.reshape(tuple(sizes.get(d, n) for d, n in enumerate(self.shape3)))

    def read_file_slab(
        self, file_axis: int, file_index: int, stop: int | None = None, chunk_bytes: int = 16 * 2**20
    ) -> np.ndarray:
        """The voxels from ``file_index`` to ``stop`` (default: one voxel) along the file's ``file_axis``, as float32.

        Along the file's last axis the voxels lie together and are read at once. Across it they are strided: nibabel
        would read them in many small pieces (for ``.nii.gz``, seeking through the compressed stream each time), so
        the file is read in order instead, ``chunk_bytes`` of it at a time, keeping the wanted part of each chunk.
        """
        stop = file_index + 1 if stop is None else stop
        if file_axis == 2 or len(self.image.shape) < 3:
            return self._read({file_axis: (file_index, stop)})
        shape = tuple(stop - file_index if d == file_axis else n for d, n in enumerate(self.shape3))
        block = np.empty(shape, dtype=np.float32)
        per_chunk = max(1, chunk_bytes // (4 * self.shape3[0] * self.shape3[1]))
        wanted = [slice(None)] * 3
        wanted[file_axis] = slice(file_index, stop)
        for first in range(0, self.shape3[2], per_chunk):
            last = min(first + per_chunk, self.shape3[2])
            block[..., first:last] = self._read({2: (first, last)})[tuple(wanted)]
        return block

    def slices_per_block(self, file_axis: int, block_bytes: int = 64 * 2**20) -> int:
        """How many slices across ``file_axis`` one read takes: 1 along the file's last (contiguous) axis, else as
        many as fit in ``block_bytes``."""
        plane_bytes = 4 * math.prod(n for d, n in enumerate(self.shape3) if d != file_axis)
        return 1 if file_axis == 2 else max(1, block_bytes // max(plane_bytes, 1))

    def planes(
        self,
        axis: int,
        indices: Sequence[int],
        low: float | None = None,
        high: float | None = None,
        block_bytes: int = 64 * 2**20,
    ) -> Iterable[tuple[int, np.ndarray]]:
        """``(index, plane)`` for the RAS slices ``indices`` along ``axis``, as :meth:`plane` gives them, in file order.

        Slices along the file's last axis lie contiguously in the file and are read one at a time. Slices across it
        are strided: reading them one by one would read (and, for ``.nii.gz``, decompress) the whole file per slice,
        so they are read in blocks of consecutive slices of at most ``block_bytes`` (64 MiB), one pass over the
        file per block.
        """
        by_file = sorted((self.file_index(axis, k)[1], k) for k in indices)
        file_axis = self.file_index(axis, 0)[0]
        per_block = self.slices_per_block(file_axis, block_bytes)
        position = 0
        while position < len(by_file):
            # a run of consecutive file indices, at most per_block long
            end = position + 1
            while end < len(by_file) and end - position < per_block and by_file[end][0] == by_file[end - 1][0] + 1:
                end += 1
            first = by_file[position][0]
            block = self.read_file_slab(file_axis, first, by_file[end - 1][0] + 1)
            for file_index, k in by_file[position:end]:
                slab = np.take(block, [file_index - first], axis=file_axis)
                slab = apply_orientation(slab, self.to_ras)
                if low is not None and high is not None:
                    slab = scale_to_unit(slab, low, high)
                yield k, volume_plane(slab, axis, 0)
            del block
            position = end

    def ras_slab(self, axis: int, index: int) -> np.ndarray:
        """RAS slice ``index`` along ``axis`` as a RAS-ordered float32 array one voxel thick on ``axis``."""
        return apply_orientation(self.read_file_slab(*self.file_index(axis, index)), self.to_ras)

    def plane(self, axis: int, index: int, low: float | None = None, high: float | None = None) -> np.ndarray:
        """Slice ``index`` along RAS ``axis`` in display orientation, float32 ``(1, H, W)``, scaled by ``low``/``high``.

        Without ``low`` and ``high`` the intensities are as stored; with them, as :func:`scale_to_unit` maps them.
        """
        slab = self.ras_slab(axis, index)
        if low is not None and high is not None:
            slab = scale_to_unit(slab, low, high)
        return volume_plane(slab, axis, 0)

    def plane_shape(self, axis: int) -> tuple[int, int]:
        """``(height, width)`` of the display-oriented slices along RAS ``axis`` (rot90 swaps the in-plane axes)."""
        return tuple(self.ras_shape[a] for a in range(3) if a != axis)[::-1]

    def slice_axis(self, slice_axis: int) -> int:
        """The RAS axis slices are cut along: ``slice_axis``, or the singleton axis of a 2D image (one slice)."""
        singleton_axes = [axis for axis, size in enumerate(self.ras_shape) if size == 1]
        return singleton_axes[-1] if singleton_axes else slice_axis

    def check_planes(
        self,
        slice_axis: int,
        min_slice_size: int | None = DEFAULT_MIN_SLICE_SIZE,
        max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
    ) -> None:
        """Refuse, from the header, slices smaller than ``min_slice_size`` or padding to more than ``max_pixels``.

        Raises:
            ImageFileError: naming the file, its slices' shape and its RAS shape.
        """
        axis = self.slice_axis(slice_axis)
        detail = f" (its RAS shape is {'x'.join(map(str, self.ras_shape))}, sliced along RAS axis {axis})"
        check_slice_shape(self.path, self.plane_shape(axis), min_slice_size, max_pixels, detail)

    def _slabs(self) -> Iterable[np.ndarray]:
        """The voxels slab by slab along the file's last spatial axis, the order they lie in the file."""
        for index in range(self.shape3[2]):
            yield self.read_file_slab(2, index)

    def intensity_range(self, lower: float = 0.5, upper: float = 99.5) -> tuple[float, float]:
        """:func:`robust_range` of the volume, streamed: a slab of voxels in memory at a time, the same numbers.

        Two passes: the first checks every voxel is finite and counts the high 16 bits of each value's ordered
        key; the second counts the low 16 bits within the buckets that hold the order statistics the percentiles
        interpolate. The interpolation is numpy's ``linear`` method.

        Raises:
            ImageFileError: naming the file when it holds NaN or infinite voxel values or cannot be read.
        """
        high_counts = np.zeros(2**16, dtype=np.int64)
        count, non_finite = 0, 0
        minimum, maximum = np.float32(np.inf), np.float32(-np.inf)
        for slab in self._slabs():
            values = slab.ravel()
            finite = np.isfinite(values)
            if not finite.all():
                non_finite += int(values.size - finite.sum())
                continue
            count += values.size
            minimum, maximum = min(minimum, values.min()), max(maximum, values.max())
            high_counts += np.bincount(_ordered_keys(values) >> np.uint32(16), minlength=2**16)
        if non_finite:
            # zero-filling would make up intensities, for training as for a reconstruction
            raise ImageFileError(
                f"'{self.path}' holds {non_finite} NaN or infinite voxel values; expected finite "
                "intensities (replace them, e.g. by 0, or leave the file out)"
            )
        # the order statistics numpy's linear percentile interpolates between, as in np.percentile
        quantiles = np.asarray([lower, upper], dtype=np.float64) / 100
        virtual = (count - 1) * quantiles
        previous = np.clip(np.floor(virtual), 0, count - 1).astype(np.int64)
        following = np.clip(previous + 1, 0, count - 1)
        gamma = virtual - np.floor(virtual)
        ranks = sorted({int(r) for r in (*previous, *following)})
        cumulative = np.cumsum(high_counts)
        buckets = {rank: int(np.searchsorted(cumulative, rank, side="right")) for rank in ranks}
        low_counts = {bucket: np.zeros(2**16, dtype=np.int64) for bucket in set(buckets.values())}
        for slab in self._slabs():
            keys = _ordered_keys(slab.ravel())
            top = keys >> np.uint32(16)
            for bucket, counts in low_counts.items():
                counts += np.bincount(keys[top == bucket] & np.uint32(0xFFFF), minlength=2**16)
        values = {}
        for rank, bucket in buckets.items():
            before = int(cumulative[bucket - 1]) if bucket else 0
            low = int(np.searchsorted(np.cumsum(low_counts[bucket]), rank - before, side="right"))
            values[rank] = _key_values(np.uint32((bucket << 16) | low))[()]
        # numpy's _lerp on both quantiles at once, as np.percentile computes it (the same operations, the same bits)
        before = np.asarray([values[int(r)] for r in previous], dtype=np.float32)
        after = np.asarray([values[int(r)] for r in following], dtype=np.float32)
        difference = after - before
        lerp = np.add(before, difference * gamma)
        np.subtract(
            after, difference * (1 - gamma), out=lerp, where=gamma >= 0.5, casting="unsafe", dtype=type(lerp.dtype)
        )
        low, high = (float(v) for v in lerp)
        if high <= low:
            low, high = float(minimum), float(maximum)
        return low, high


@functools.lru_cache(maxsize=64)
def _cached_volume_slices(path: str, stamp: tuple[int, int], max_voxels: int | None, process: int) -> VolumeSlices:
    # keyed by process: a data-loader worker forked from this process would share the open file's offset
    return VolumeSlices(path, max_voxels)


def _stamp(path: str | os.PathLike) -> tuple[int, int]:
    """A file's modification time and size, so that a rewritten file is read again; a vanished file is named."""
    try:
        info = os.stat(path)
    except FileNotFoundError as err:
        raise ImageFileError(
            f"'{path}' was listed but no longer exists; it was removed or moved while the run used it (put it "
            "back, or start the run again)"
        ) from err
    return info.st_mtime_ns, info.st_size


def open_volume_slices(path: str | os.PathLike, max_voxels: int | None = DEFAULT_MAX_VOLUME_VOXELS) -> VolumeSlices:
    """A :class:`VolumeSlices` of ``path``, kept for the next slices of the same file (headers only, no voxels).

    Raises:
        ImageFileError: as :class:`VolumeSlices`, or naming a file that vanished since it was listed.
    """
    return _cached_volume_slices(str(path), _stamp(path), max_voxels, os.getpid())


@functools.lru_cache(maxsize=1024)
def _cached_range(path: str, stamp: tuple[int, int], max_voxels: int | None) -> tuple[float, float]:
    return _cached_volume_slices(path, stamp, max_voxels, os.getpid()).intensity_range()


def volume_intensity_range(
    path: str | os.PathLike, max_voxels: int | None = DEFAULT_MAX_VOLUME_VOXELS
) -> tuple[float, float]:
    """The intensities a volume's scaling maps to 0 and 1 (:meth:`VolumeSlices.intensity_range`), computed once.

    Raises:
        ImageFileError: as :class:`VolumeSlices`, for NaN or infinite voxels, or a file that vanished.
    """
    return _cached_range(str(path), _stamp(path), max_voxels)


def read_volume_plane(
    path: str | os.PathLike, axis: int, index: int, max_voxels: int | None = DEFAULT_MAX_VOLUME_VOXELS
) -> np.ndarray:
    """One kept slice of a volume, scaled per volume to [0, 1], float32 ``(1, H, W)``: what training reads.

    Only the slice's voxels are read (the volume's percentiles are computed once, streaming), so memory holds a
    slice, not the volume. The values are those of :func:`volume_plane` of the whole volume, reoriented and scaled.

    Raises:
        ImageFileError: naming the file when it cannot be read, holds NaN/inf values, or vanished since listing.
    """
    low, high = volume_intensity_range(path, max_voxels)
    volume = open_volume_slices(path, max_voxels)
    file_axis, file_index = volume.file_index(int(axis), int(index))
    per_block = volume.slices_per_block(file_axis)
    if per_block == 1:
        return volume.plane(int(axis), int(index), low, high)
    # a slice across the file's storage order: read the aligned block of slices around it once (at most 64 MiB,
    # one block for all volumes), so that the next slices of the volume, listed in order, come from memory
    start = file_index // per_block * per_block
    key = (str(path), volume.shape3, file_axis, start, _stamp(path), os.getpid())
    with _BLOCK_LOCK:
        if _LAST_BLOCK.get("key") != key:
            _LAST_BLOCK.clear()  # the old block is freed before the next is read
            stop = min(start + per_block, volume.shape3[file_axis])
            _LAST_BLOCK.update(key=key, block=volume.read_file_slab(file_axis, start, stop))
        block = _LAST_BLOCK["block"]
    slab = apply_orientation(np.take(block, [file_index - start], axis=file_axis), volume.to_ras)
    return volume_plane(scale_to_unit(slab, low, high), int(axis), 0)


# the last block of strided slices read_volume_plane read, shared by all volumes (and the cache's threads)
_LAST_BLOCK: dict = {}
_BLOCK_LOCK = threading.Lock()


def _check_slice_options(slice_axis: int, slice_range: Sequence[float], min_foreground: float) -> tuple[float, float]:
    """Validate the slicing options, returning ``slice_range`` as two floats."""
    if slice_axis not in (0, 1, 2):
        raise ValueError(f"slice_axis must be 0, 1 or 2 (an axis of the RAS volume), got {slice_axis!r}")
    try:
        start, stop = (float(v) for v in slice_range)
    except (TypeError, ValueError) as err:
        raise ValueError(f"slice_range must be two fractions (start, stop), got {slice_range!r}") from err
    if not 0.0 <= start < stop <= 1.0:
        raise ValueError(f"slice_range must satisfy 0 <= start < stop <= 1, got {slice_range!r}")
    if not 0.0 <= min_foreground <= 1.0:
        raise ValueError(f"min_foreground must be a fraction in [0, 1], got {min_foreground!r}")
    return start, stop


def _slice_candidates(shape: Sequence[int], slice_axis: int, slice_range: tuple[float, float]) -> tuple[int, list[int]]:
    """The axis a RAS volume of ``shape`` is cut along and the slice indices within ``slice_range``."""
    singleton_axes = [axis for axis, size in enumerate(shape) if size == 1]
    if singleton_axes:
        # a 2D image (or a 3D one that is one voxel thick) is a single slice whatever the slice axis
        return singleton_axes[-1], [0]
    length = shape[slice_axis]
    first = int(np.floor(slice_range[0] * length))
    last = max(int(np.ceil(slice_range[1] * length)), first + 1)
    return slice_axis, list(range(first, min(last, length)))


def kept_volume_slices(
    volume: VolumeSlices,
    intensity_range: tuple[float, float],
    slice_axis: int,
    slice_range: tuple[float, float],
    min_foreground: float,
) -> tuple[int, list[int]]:
    """The axis a volume is cut along and the slices kept by ``slice_range`` and ``min_foreground``, read slice by
    slice from a :class:`VolumeSlices` (the volume is never in memory whole).

    Args:
        volume: the volume's slices.
        intensity_range: the intensities mapped to 0 and 1 (:meth:`VolumeSlices.intensity_range`).
        slice_axis: the RAS axis to slice along; ignored for a volume with a singleton axis.
        slice_range: the (start, stop) part of that axis to keep, as fractions of its length.
        min_foreground: slices with a smaller fraction of pixels above :data:`FOREGROUND_THRESHOLD` are dropped.
    """
    axis, indices = _slice_candidates(volume.ras_shape, slice_axis, slice_range)
    if min_foreground <= 0:
        return axis, indices  # every slice passes: none needs reading
    low, high = intensity_range
    kept = {
        k
        for k, plane in volume.planes(axis, indices, low, high)
        if np.mean(plane > FOREGROUND_THRESHOLD) >= min_foreground
    }
    return axis, [k for k in indices if k in kept]


def volume_plane(volume: np.ndarray, axis: int, index: int) -> np.ndarray:
    """Slice ``index`` along ``axis`` of a RAS volume, in display orientation, as a float32 ``(1, H, W)`` array.

    Args:
        volume: a RAS volume, its intensities scaled to [0, 1].
        axis: the axis to cut along.
        index: the slice index along it.
    """
    # rot90 puts the higher end of the second in-plane axis (A or S) at the top and keeps R to the right
    plane = np.rot90(np.take(volume, index, axis=axis))
    return np.ascontiguousarray(plane[None], dtype=np.float32)


def list_volume_slices(
    files: Sequence[str | os.PathLike],
    slice_axis: int = 2,
    slice_range: Sequence[float] = (0.2, 0.8),
    min_foreground: float = 0.05,
    max_voxels: int | None = DEFAULT_MAX_VOLUME_VOXELS,
    max_items: int | None = None,
    min_slice_size: int | None = None,
    max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
) -> list[dict]:
    """List the kept 2D slices of volumes as datalist items, without holding their pixels.

    All headers (size, affine, slice shape) are checked first, so a bad file stops the run before any voxels are
    read. Each volume is then streamed slice by slice (for its intensity percentiles and to find the slices with
    enough foreground) until ``max_items`` slices are listed; memory holds a slice, never a volume.

    Args:
        files: volume files (``.nii``, ``.nii.gz``, or ``.img`` with ``.hdr``).
        slice_axis: the RAS axis to slice along: 0 sagittal, 1 coronal, 2 axial.
        slice_range: the (start, stop) part of that axis to keep, as fractions of its length.
        min_foreground: slices with a smaller fraction of pixels above 0.05 (after scaling) are skipped.
        max_voxels: the most voxels a file's header may declare (``max_volume_voxels``); None allows any.
        max_items: stop after this many slices; None lists all.
        min_slice_size: the smallest in-plane side a slice may have (``min_slice_size``); None allows any.
        max_pixels: the most pixels the square a slice is padded to may hold (``max_image_pixels``); None allows
            any.

    Returns:
        ``{"image": volume path (str), "slice_axis": int, "slice_index": int, "name": "<file name>#slice<k>"}`` per
        kept slice, in file order; :class:`~monai_vqbrain.data.transforms.LoadSliced` reads them.

    Raises:
        ImageFileError: naming a file that cannot be read, is not a 2D/3D image, has a NaN/infinite or singular
            affine, or whose slices are too small or too elongated.
        ValueError: for invalid slicing options.
    """
    start, stop = _check_slice_options(slice_axis, slice_range, min_foreground)
    paths = [Path(f) for f in files]
    for path in paths:
        open_volume_slices(path, max_voxels).check_planes(slice_axis, min_slice_size, max_pixels)
    items: list[dict] = []
    for path in paths:
        volume = open_volume_slices(path, max_voxels)
        intensities = volume_intensity_range(path, max_voxels)
        axis, indices = kept_volume_slices(volume, intensities, slice_axis, (start, stop), min_foreground)
        items += [
            {"image": str(path), "slice_axis": axis, "slice_index": k, "name": f"{path.name}#slice{k}"} for k in indices
        ]
        if max_items is not None and len(items) >= max_items:
            break
    return items[:max_items]
