"""Reading NIfTI/Analyze volumes a slice at a time: header checks, intensity scaling, orientation, and the
streaming reader :class:`VolumeSlices` (cached per process).

Slices come out in display orientation: each volume is reoriented to RAS, and a slice is rotated so that the higher
end of its vertical world axis (anterior for axial, superior for coronal and sagittal slices) is at the top and the
patient's right is on the image's right (neurological convention).

Memory holds a slice rather than a volume: a 512³ volume would take 40 bytes a voxel through a whole-volume reader
(the tests keep one, ``tests/nifti_oracle.py``, as the reference the slice reader is checked against).
"""

from __future__ import annotations

import functools
import math
import os
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
from monai_vqbrain.errors import ImageFileError

_RAS = axcodes2ornt("RAS")


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
        ImageFileError: naming the file when it cannot be read, is too large, or is not a 2D/3D grey image.
    """
    return _open_volume(Path(path), max_voxels)[1]


def robust_range(volume: np.ndarray, lower: float = 0.5, upper: float = 99.5) -> tuple[float, float]:
    """The intensities the per-volume scaling maps to 0 and 1: the ``lower`` and ``upper`` percentiles.

    Percentiles rather than min/max so that a few hot voxels do not darken the whole volume; min/max when the
    percentiles coincide (a volume of mostly one value). A constant volume scales to all zeros.

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

    A singleton axis without direction (a 2D slice saved with a zero slice thickness) is given a world axis no other
    voxel axis uses, which cannot change the voxel data.

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

    Opening reads and checks the header and affine only. :meth:`plane` gives the values :func:`volume_plane` gives
    of the whole volume read at once.

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
        self.ras_shape = tuple(self.shape3[self.file_index(axis, 0)[0]] for axis in range(3))
        #: what the voxels are read from; tests may wrap it to count what is read
        self.dataobj = self.image.dataobj

    def file_index(self, axis: int, index: int) -> tuple[int, int]:
        """The file's voxel axis and index that hold RAS slice ``index`` along RAS ``axis``."""
        file_axis = int(np.flatnonzero(self.to_ras[:, 0] == axis)[0])
        flipped = self.to_ras[file_axis, 1] < 0
        return file_axis, (self.shape3[file_axis] - 1 - index if flipped else index)

    def _read(self, axis: int, start: int, stop: int) -> np.ndarray:
        """The voxels from ``start`` to ``stop`` along the file's ``axis`` (whole along the others), float32 3D."""
        ndim = len(self.image.shape)
        slicer = tuple(slice(start, stop) if d == axis else (slice(None) if d < 3 else 0) for d in range(ndim))
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
        return data.reshape(tuple(stop - start if d == axis else n for d, n in enumerate(self.shape3)))

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
            return self._read(file_axis, file_index, stop)
        shape = tuple(stop - file_index if d == file_axis else n for d, n in enumerate(self.shape3))
        block = np.empty(shape, dtype=np.float32)
        per_chunk = max(1, chunk_bytes // (4 * self.shape3[0] * self.shape3[1]))
        wanted = tuple(slice(file_index, stop) if d == file_axis else slice(None) for d in range(3))
        for first in range(0, self.shape3[2], per_chunk):
            last = min(first + per_chunk, self.shape3[2])
            block[..., first:last] = self._read(2, first, last)[wanted]
        return block

    def slices_per_block(self, file_axis: int, block_bytes: int = 64 * 2**20) -> int:
        """How many slices along ``file_axis`` one read takes: 1 along the file's last axis, else ``block_bytes``'s."""
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

        Strided slices (across the file's last axis) are read in blocks of consecutive slices of at most
        ``block_bytes``, one pass over the file per block, rather than one pass (for ``.nii.gz``, one decompression)
        per slice.
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
                yield k, self.block_plane(block, file_axis, file_index - first, axis, low, high)
            del block
            position = end

    def block_plane(
        self, block: np.ndarray, file_axis: int, offset: int, axis: int, low: float | None, high: float | None
    ) -> np.ndarray:
        """Slice ``offset`` along ``file_axis`` of a block of file voxels (:meth:`read_file_slab`), as :meth:`plane`."""
        slab = apply_orientation(np.take(block, [offset], axis=file_axis), self.to_ras)
        if low is not None and high is not None:
            slab = scale_to_unit(slab, low, high)
        return volume_plane(slab, axis, 0)

    def plane(self, axis: int, index: int, low: float | None = None, high: float | None = None) -> np.ndarray:
        """Slice ``index`` along RAS ``axis`` in display orientation, float32 ``(1, H, W)``.

        Without ``low`` and ``high`` the intensities are as stored; with them, as :func:`scale_to_unit` maps them.
        """
        file_axis, file_index = self.file_index(axis, index)
        return self.block_plane(self.read_file_slab(file_axis, file_index), file_axis, 0, axis, low, high)

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
        key; the second counts the low 16 bits within the buckets that hold the order statistics np.percentile's
        ``linear`` method interpolates.

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


def file_stamp(path: str | os.PathLike) -> tuple[int, int]:
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
    return _cached_volume_slices(str(path), file_stamp(path), max_voxels, os.getpid())


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
    return _cached_range(str(path), file_stamp(path), max_voxels)


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
