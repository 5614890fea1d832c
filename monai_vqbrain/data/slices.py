"""The 2D slices of NIfTI/Analyze volumes: which are kept (slice range, foreground), and reading one for training."""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from monai_vqbrain.data.limits import DEFAULT_MAX_IMAGE_PIXELS, DEFAULT_MAX_VOLUME_VOXELS
from monai_vqbrain.data.nifti import file_stamp, open_volume_slices, volume_intensity_range

FOREGROUND_THRESHOLD = 0.05
"""Intensity (after scaling to [0, 1]) above which a pixel counts as foreground for ``min_foreground``."""

# the last block of strided slices read_volume_plane read, shared by all volumes (and the cache's threads)
_LAST_BLOCK: dict = {}
_BLOCK_LOCK = threading.Lock()


def read_volume_plane(
    path: str | os.PathLike, axis: int, index: int, max_voxels: int | None = DEFAULT_MAX_VOLUME_VOXELS
) -> np.ndarray:
    """One kept slice of a volume, scaled per volume to [0, 1], float32 ``(1, H, W)``: what training reads.

    Only the slice's voxels are read (the volume's percentiles are streamed once and kept); the values are those of
    :func:`~monai_vqbrain.data.nifti.volume_plane` of the whole volume, reoriented and scaled.

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
    key = (str(path), volume.shape3, file_axis, start, file_stamp(path), os.getpid())
    with _BLOCK_LOCK:
        if _LAST_BLOCK.get("key") != key:
            _LAST_BLOCK.clear()  # the old block is freed before the next is read
            stop = min(start + per_block, volume.shape3[file_axis])
            _LAST_BLOCK.update(key=key, block=volume.read_file_slab(file_axis, start, stop))
        block = _LAST_BLOCK["block"]
    return volume.block_plane(block, file_axis, file_index - start, int(axis), low, high)


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
    # a 2D image (or a 3D one that is one voxel thick) is its one slice, index 0, whatever the slice axis
    axis = singleton_axes[-1] if singleton_axes else slice_axis
    first = int(np.floor(slice_range[0] * shape[axis]))
    last = max(int(np.ceil(slice_range[1] * shape[axis])), first + 1)
    return axis, list(range(first, min(last, shape[axis])))


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
    read. Each volume is then streamed (for its intensity percentiles and to find the slices with enough
    foreground) until ``max_items`` slices are listed.

    Args:
        files: volume files (``.nii``, ``.nii.gz``, or ``.img`` with ``.hdr``).
        slice_axis: the RAS axis to slice along: 0 sagittal, 1 coronal, 2 axial.
        slice_range: the (start, stop) part of that axis to keep, as fractions of its length.
        min_foreground: slices with a smaller fraction of pixels above :data:`FOREGROUND_THRESHOLD` are skipped.
        max_voxels: the most voxels a file's header may declare (``max_volume_voxels``); None allows any.
        max_items: stop after this many slices; None lists all.
        min_slice_size: the smallest in-plane side a slice may have (``min_slice_size``); None allows any.
        max_pixels: the most pixels the square a slice is padded to may hold (``max_image_pixels``); None: any.

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
        low, high = volume_intensity_range(path, max_voxels)  # also refuses NaN voxels before training
        axis, indices = _slice_candidates(volume.ras_shape, slice_axis, (start, stop))
        if min_foreground > 0:  # else every slice passes: none needs reading
            planes = volume.planes(axis, indices, low, high)
            kept = {k for k, plane in planes if np.mean(plane > FOREGROUND_THRESHOLD) >= min_foreground}
            indices = [k for k in indices if k in kept]
        items += [
            {"image": str(path), "slice_axis": axis, "slice_index": k, "name": f"{path.name}#slice{k}"} for k in indices
        ]
        if max_items is not None and len(items) >= max_items:
            break
    return items[:max_items]
