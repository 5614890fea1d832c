"""The whole-volume NIfTI reader: the reference the streaming slice reader of ``monai_vqbrain.data.nifti`` is
tested against (it reads each volume whole, reorients it to RAS, scales it and cuts every kept slice).

Tests only: the package streams slices (:class:`~monai_vqbrain.data.nifti.VolumeSlices`); a 512³ volume would take
40 bytes a voxel here.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import nibabel as nib
import numpy as np
from nibabel.orientations import apply_orientation, ornt_transform

from monai_vqbrain.data.limits import DEFAULT_MAX_VOLUME_VOXELS
from monai_vqbrain.data.nifti import (
    _RAS,
    _file_orientation,
    _open_volume,
    check_nifti_header,
    robust_range,
    scale_to_unit,
    volume_plane,
)
from monai_vqbrain.data.slices import FOREGROUND_THRESHOLD, _check_slice_options, _slice_candidates, list_volume_slices
from monai_vqbrain.errors import ImageFileError


class RasVolume(NamedTuple):
    """A volume read by :func:`read_volume_ras`: what training slices and what inference needs to write it back.

    Attributes:
        ras: float32 3D voxels reoriented to RAS, intensities as stored (a 2D image has a singleton third axis).
        image: the nibabel image (header and affine; its voxels are not kept).
        orientation: the orientation of the file's voxel axes (:func:`voxel_orientation`).
        shape: the file's spatial shape (2 or 3 dims).
    """

    ras: np.ndarray
    image: nib.spatialimages.SpatialImage
    orientation: np.ndarray
    shape: tuple[int, ...]


def read_volume_ras(path: str | os.PathLike, max_voxels: int | None = DEFAULT_MAX_VOLUME_VOXELS) -> RasVolume:
    """Read a NIfTI/Analyze volume, check it, and reorient it to RAS: the one reader of training and inference.

    Args:
        path: a NIfTI (``.nii``, ``.nii.gz``) or Analyze (``.img`` with ``.hdr``) file.
        max_voxels: the most voxels the header may declare (checked before reading voxels); None allows any.

    Raises:
        ImageFileError: naming the file when it cannot be read or is truncated, is too large, is not a 2D/3D grey
            image, holds NaN or infinite values, or has an affine without clear axis directions.
    """
    path = Path(path)
    image, shape = _open_volume(path, max_voxels)
    orientation = _file_orientation(path, image, shape + (1,) * (3 - len(shape)))
    try:
        data = np.asarray(image.get_fdata(dtype=np.float32), dtype=np.float32)
    except Exception as err:  # nibabel raises many types (EOFError, zlib and gzip errors, ValueError, ...)
        raise ImageFileError(f"cannot read the voxels of volume '{path}' ({err}); the file may be truncated") from err
    image.uncache()  # the voxels live on in ``data`` and its derivatives only
    data = data.reshape(shape + (1,) * (3 - len(shape)))
    finite = np.isfinite(data)
    if not finite.all():
        # zero-filling would make up intensities, for training as for a reconstruction
        raise ImageFileError(
            f"'{path}' holds {int(data.size - finite.sum())} NaN or infinite voxel values; expected finite "
            "intensities (replace them, e.g. by 0, or leave the file out)"
        )
    # nibabel affines map to RAS+ world coordinates; this is what MONAI's Orientation("RAS") does to the voxels
    ras = apply_orientation(data, ornt_transform(orientation, _RAS))
    return RasVolume(np.ascontiguousarray(ras, dtype=np.float32), image, orientation, shape)


def kept_slices(
    volume: np.ndarray, slice_axis: int, slice_range: tuple[float, float], min_foreground: float
) -> tuple[int, list[int]]:
    """The axis a RAS volume is cut along and the indices of the slices kept by ``slice_range`` and ``min_foreground``.

    Args:
        volume: a scaled RAS volume from :func:`cached_volume_ras`.
        slice_axis: the RAS axis to slice along; ignored for a volume with a singleton axis.
        slice_range: the (start, stop) part of that axis to keep, as fractions of its length.
        min_foreground: slices with a smaller fraction of pixels above :data:`FOREGROUND_THRESHOLD` are dropped.

    Returns:
        ``(axis, indices)``.
    """
    axis, indices = _slice_candidates(volume.shape, slice_axis, slice_range)
    kept = [k for k in indices if np.mean(volume_plane(volume, axis, k) > FOREGROUND_THRESHOLD) >= min_foreground]
    return axis, kept


@functools.lru_cache(maxsize=4)
def _cached_volume(path: str, stamp: tuple[int, int], max_voxels: int | None) -> np.ndarray:
    """The scaled RAS volume, keyed by the file's modification time and size, so a rewritten file is read again."""
    ras = read_volume_ras(path, max_voxels).ras
    volume = scale_to_unit(ras, *robust_range(ras))
    volume.setflags(write=False)  # shared by every slice item of the volume: nobody may change it in place
    return volume


def cached_volume_ras(path: str | os.PathLike, max_voxels: int | None = DEFAULT_MAX_VOLUME_VOXELS) -> np.ndarray:
    """Load a volume as float32, reoriented to RAS and scaled per volume to [0, 1] by robust percentiles (read-only).

    A small cache keeps the last volumes read: a split's slice items are ordered by volume, so each volume is read
    once per pass instead of once per slice.

    Args:
        path: a NIfTI (``.nii``, ``.nii.gz``) or Analyze (``.img`` with ``.hdr``) file.
        max_voxels: the most voxels the header may declare; None allows any.

    Returns:
        A 3D array; a 2D image comes back with a singleton third axis.

    Raises:
        ImageFileError: as :func:`read_volume_ras`.
    """
    info = os.stat(path)
    return _cached_volume(str(path), (info.st_mtime_ns, info.st_size), max_voxels)


def load_nifti_slices(
    files: Sequence[str | os.PathLike],
    slice_axis: int = 2,
    slice_range: Sequence[float] = (0.2, 0.8),
    min_foreground: float = 0.05,
    max_voxels: int | None = DEFAULT_MAX_VOLUME_VOXELS,
) -> list[dict]:
    """Load volumes and cut them into 2D slices, each volume read once.

    All headers are checked first, so a bad file stops the run before any voxels are read.

    Args:
        files: volume files (``.nii``, ``.nii.gz``, or ``.img`` with ``.hdr``).
        slice_axis: the RAS axis to slice along: 0 sagittal, 1 coronal, 2 axial.
        slice_range: the (start, stop) part of that axis to keep, as fractions of its length; the default keeps the
            middle 60%, where the brain cross-section is large.
        min_foreground: slices with a smaller fraction of pixels above 0.05 (after scaling) are skipped.
        max_voxels: the most voxels a file's header may declare (``max_volume_voxels``); None allows any.

    Returns:
        ``{"image": float32 array (1, H, W) in [0, 1], "name": "<file name>#slice<k>"}`` per kept slice, in file
        order, ``k`` being the index along ``slice_axis`` of the RAS volume.

    Raises:
        ImageFileError: naming a file that cannot be read or is not a 2D/3D image.
        ValueError: for invalid slicing options.
    """
    _check_slice_options(slice_axis, slice_range, min_foreground)
    for path in files:
        check_nifti_header(path, max_voxels)
    items: list[dict] = []
    for path in files:  # one volume at a time, so the cache holds it while its slices are cut
        for item in list_volume_slices([path], slice_axis, slice_range, min_foreground, max_voxels):
            volume = cached_volume_ras(item["image"], max_voxels)
            items.append({"image": volume_plane(volume, item["slice_axis"], item["slice_index"]), "name": item["name"]})
    return items
