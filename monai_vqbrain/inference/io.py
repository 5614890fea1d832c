"""Reading the user's PNG and NIfTI files into model-ready slices, and writing reconstructions in their own format.

The model card (``bundle/docs/README.md``, "Preprocessing" and "Inference on your files") describes each step, the
outputs and the size rule: every slice must be at least ``min_slice_size`` pixels along both in-plane sides, as
smaller ones hold too little to be resized to ``image_size``.
"""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.transforms import EnsureChannelFirst, LoadImage, SpatialPad
from nibabel.orientations import apply_orientation, axcodes2ornt, ornt_transform
from PIL import Image

from monai_vqbrain.data.limits import DEFAULT_MAX_IMAGE_PIXELS, DEFAULT_MAX_VOLUME_VOXELS, DEFAULT_MIN_SLICE_SIZE
from monai_vqbrain.data.nifti import VolumeSlices
from monai_vqbrain.data.oasis import check_png_file
from monai_vqbrain.data.transforms import ResizeSquared, ScaleByDtyped, SliceReader, ToGreyscaled
from monai_vqbrain.errors import ImageFileError
from monai_vqbrain.utils.io import atomic_path

from .input_files import image_format

logger = logging.getLogger(__name__)

_RAS = axcodes2ornt("RAS")


def _read_png(path: Path, min_slice_size: int, max_pixels: int | None) -> tuple[np.ndarray, tuple[int, ...], dict]:
    """Read and check a PNG file as one grey slice, made as in training (bit-depth scaling, grey)."""
    # its size, its padded square and its sides are judged from the header, before any pixel is decoded
    check_png_file(path, max_pixels, min_slice_size)
    try:
        # dtype=None keeps the stored integer type: its bit depth decides the scaling, as in training
        image = LoadImage(reader=SliceReader(), image_only=True, dtype=None)(str(path))
    except Exception as err:  # PIL raises several types for pixel data that fails to decode
        raise ImageFileError(f"cannot decode the pixels of '{path}' ({err}); the file may be truncated") from err
    image = EnsureChannelFirst()(image)
    if image.ndim != 3:
        raise ImageFileError(f"'{path}' has shape {tuple(image.shape)}; expected a 2D image")
    height, width = (int(s) for s in image.shape[-2:])
    image = image.as_tensor() if hasattr(image, "as_tensor") else image
    # the peak ScaleByDtyped divides by, so that writing multiplies by the same value
    peak = ScaleByDtyped.peak(image)
    dtype = "uint8" if image.dtype in (torch.uint8, torch.bool) else "uint16"
    grey = ToGreyscaled.to_grey(ScaleByDtyped.scale(image))
    return grey.numpy().astype(np.float32), (height, width), {"format": "png", "peak": peak, "dtype": dtype}


def _square_padding(height: int, width: int) -> tuple[int, int, int]:
    """The side of the square :class:`~monai_vqbrain.data.PadToSquared` pads a slice to, and its top and left pads."""
    side = max(height, width)
    (_, (top, _), (left, _)) = SpatialPad((side, side), method="symmetric").compute_pad_width((height, width))
    return side, int(top), int(left)


def _to_model_size(plane: np.ndarray, image_size: int) -> np.ndarray:
    """One ``(1, H, W)`` slice padded to its square and resized to ``image_size``, as ``PadToSquared`` and
    ``ResizeSquared`` do (the same operations, so the same values)."""
    height, width = plane.shape[-2:]
    side, top, left = _square_padding(height, width)
    square = np.zeros((1, side, side), dtype=np.float32)
    square[:, top : top + height, left : left + width] = plane
    return ResizeSquared.resize(torch.from_numpy(square), int(image_size)).numpy()


def _read_nifti(
    path: Path,
    slice_axis: int,
    min_slice_size: int,
    max_voxels: int | None,
    max_pixels: int | None,
    image_size: int | None,
) -> tuple[np.ndarray, tuple[int, ...], dict]:
    """Read, check, reorient, scale and slice a NIfTI file with the reader training uses, one slice at a time.

    The header, affine and slice shape are checked before any voxel is read, and the percentiles are streamed.
    """
    if slice_axis not in (0, 1, 2):
        raise ValueError(f"slice_axis must be 0, 1 or 2 (an axis of the RAS volume), got {slice_axis!r}")
    volume = VolumeSlices(path, max_voxels)  # header, size and affine checks: no voxel is read
    if not isinstance(volume.image, (nib.Nifti1Image, nib.Nifti2Image)):
        raise ImageFileError(f"'{path}' is a {type(volume.image).__name__}; expected a NIfTI-1 or NIfTI-2 image")
    volume.check_planes(slice_axis, min_slice_size, max_pixels)
    low, high = volume.intensity_range()
    # every slice, along the axis training would cut (a 2D image is one slice whatever the slice axis)
    axis = volume.slice_axis(slice_axis)
    count = volume.ras_shape[axis]
    plane_shape = volume.plane_shape(axis)
    size = plane_shape if image_size is None else (int(image_size), int(image_size))
    slices = np.empty((count, *size), dtype=np.float32)
    for index, plane in volume.planes(axis, range(count), low, high):
        slices[index] = plane[0] if image_size is None else _to_model_size(plane, int(image_size))[0]
    info = {
        "format": "nifti",
        "orientation": volume.orientation.tolist(),
        "axis": axis,
        "low": low,
        "high": high,
        "shape": list(volume.image.shape),
        "plane_shape": list(plane_shape),
        "image_size": None if image_size is None else int(image_size),
    }
    return slices, volume.shape, info


def restore_input_layout(info: dict, reconstruction: np.ndarray) -> np.ndarray:
    """Reconstructed slices ``(N, H, W)`` in ``[0, 1]`` back to the input file's layout and intensity scale.

    Args:
        info: an input's restoring information from :func:`read_input`.
        reconstruction: the reconstructed slices, as :func:`read_input`'s slices were cut.

    Returns:
        For a PNG, its ``(H, W)`` pixels on its own scale (0..255 or 0..65535), in the reconstruction's precision.
        For a NIfTI image, the volume in its voxel order and shape, mapped back through the inverse of the
        per-volume scaling (float64).
    """
    if info["format"] == "png":
        return reconstruction[0] * float(info["peak"])
    height, width = (int(s) for s in info["plane_shape"])
    side, top, left = _square_padding(height, width)
    orientation = np.asarray(info["orientation"], dtype=float)
    to_ras, from_ras = ornt_transform(orientation, _RAS), ornt_transform(_RAS, orientation)
    axis = int(info["axis"])
    file_axis = int(np.flatnonzero(to_ras[:, 0] == axis)[0])
    shape = tuple(int(s) for s in info["shape"])
    shape3 = shape[:3] + (1,) * (3 - len(shape[:3]))
    volume = np.empty(shape3, dtype=np.float64)
    low, high = float(info["low"]), float(info["high"])
    for index, plane in enumerate(reconstruction):
        if info.get("image_size") is not None:  # read at the model's size: resize back, un-pad, clip to [0, 1]
            full = ResizeSquared.resize(torch.as_tensor(np.asarray(plane, dtype=np.float32)[None]), side)
            plane = np.clip(np.asarray(full)[0, top : top + height, left : left + width], 0.0, 1.0)
        ras = np.expand_dims(np.rot90(np.asarray(plane, dtype=np.float64), k=-1), axis)
        ras = ras * (high - low) + low if high > low else np.full_like(ras, low)
        file_index = shape3[file_axis] - 1 - index if to_ras[file_axis, 1] < 0 else index
        target = [slice(None)] * 3
        target[file_axis] = slice(file_index, file_index + 1)
        volume[tuple(target)] = apply_orientation(ras, from_ras)
    return volume.reshape(shape)


def write_png(
    levels: np.ndarray,
    path: str | os.PathLike,
    dtype: np.dtype | str,
    peak: float,
    output_dtype: np.dtype | str | None = None,
    overwrite: bool = False,
) -> None:
    """Write pixels on an input PNG's own scale as a grey PNG, atomically.

    Args:
        levels: ``(H, W)`` pixels on the input's scale (0..``peak``), as :func:`restore_input_layout` gives them.
        path: the output file.
        dtype: the input's pixel type (``uint8`` or ``uint16``).
        peak: the value white had in the input.
        output_dtype: ``uint8`` or ``uint16`` to write another bit depth (rescaled to its range); None: ``dtype``.
        overwrite: replace ``path`` if it exists (else ``FileExistsError``).
    """
    stored = np.dtype(dtype)
    dtype = np.dtype(output_dtype) if output_dtype is not None else stored
    # a non-finite pixel (reported in the metrics' error column) is written black, not as whatever a cast makes
    scaled = np.nan_to_num(levels, nan=0.0, posinf=0.0, neginf=0.0)
    if dtype != stored:
        scaled = scaled / peak * np.iinfo(dtype).max
    pixels = np.clip(np.rint(scaled), 0, np.iinfo(dtype).max).astype(dtype)
    with atomic_path(path, overwrite=overwrite) as tmp:
        Image.fromarray(pixels).save(tmp, format="PNG")


def write_nifti(
    volume: np.ndarray,
    template: nib.Nifti1Image,
    path: str | os.PathLike,
    output_dtype: np.dtype | str | None = None,
    overwrite: bool = False,
) -> None:
    """Write a volume with the header and affine of ``template``, atomically.

    Args:
        volume: the volume in the template's voxel order and intensity scale (float).
        template: the input image whose header (descriptions, units, qform/sform, data type) the output keeps.
        path: the output file.
        output_dtype: the on-disk data type; None keeps the template's.
        overwrite: replace ``path`` if it exists (else ``FileExistsError``).
    """
    dtype = np.dtype(output_dtype) if output_dtype is not None else template.get_data_dtype()
    slope = float(getattr(template.dataobj, "slope", 1.0))
    inter = float(getattr(template.dataobj, "inter", 0.0))
    unscaled = output_dtype is not None or (slope == 1.0 and inter == 0.0)
    if np.issubdtype(dtype, np.integer) and unscaled:
        # unscaled integers: round to the stored type, so the file keeps its data type and scaling fields; a slab
        # along the last axis at a time, so that no float copy of the whole volume is made
        info = np.iinfo(dtype)
        data = np.empty(volume.shape, dtype=dtype)
        clipped = 0
        for index in np.ndindex(volume.shape[2:]):  # a 2D volume: one index, ()
            where = (slice(None), slice(None), *index)
            rounded = np.rint(volume[where])
            clipped += int(np.count_nonzero((rounded < info.min) | (rounded > info.max)))
            data[where] = np.clip(rounded, info.min, info.max)
        if clipped:  # a chosen output_dtype narrower than the data: say so rather than flatten the bright tissue
            logger.warning(
                f"'{path}': {clipped} voxel value(s) outside {dtype}'s range [{info.min}, {info.max}] were clipped; "
                f"choose a wider --output_dtype (or None, the input's own)"
            )
    elif np.issubdtype(dtype, np.floating):
        data = volume.astype(dtype)
    else:
        # integers stored with a slope/intercept: nibabel chooses new scaling factors for the stored type
        data = volume.astype(np.float32)
    output = type(template)(data, template.affine, template.header)
    output.set_data_dtype(dtype)
    with atomic_path(path, overwrite=overwrite) as tmp:
        nib.save(output, str(tmp))


def read_input(
    path: str | os.PathLike,
    slice_axis: int = 2,
    min_slice_size: int = DEFAULT_MIN_SLICE_SIZE,
    max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
    max_voxels: int | None = DEFAULT_MAX_VOLUME_VOXELS,
    image_size: int | None = None,
) -> tuple[np.ndarray, tuple[int, ...], dict]:
    """Read one input file, by its ending, as its slices and what :func:`restore_input_layout` needs to undo them.

    Args:
        path: the file.
        slice_axis: for NIfTI volumes, the RAS axis to slice along (0 sagittal, 1 coronal, 2 axial).
        min_slice_size: smallest accepted in-plane side, in pixels.
        max_pixels: the most pixels a PNG header may declare, and the most a slice (PNG or NIfTI) may hold once
            padded to a square; None allows any.
        max_voxels: the most voxels a NIfTI header may declare; None allows any.
        image_size: NIfTI only: bring each slice to ``image_size`` x ``image_size`` as it is read (padded to its
            square and resized as ``PadToSquared`` and ``ResizeSquared`` do), so that a volume is never in memory at
            its own resolution; None returns the slices at the file's resolution.

    Returns:
        The slices, float32 ``(N, H, W)`` in ``[0, 1]`` (a PNG is one slice; a NIfTI image gives every slice along
        ``slice_axis`` of its RAS volume); the file's own image shape (for reporting); and the restoring information
        (``format``; a PNG's ``peak`` white and pixel ``dtype``; a NIfTI image's orientation, slicing and scaling).

    Raises:
        ImageFileError: naming the file and what was expected, for any bad input.
        ValueError: when ``slice_axis`` is not 0, 1 or 2.
    """
    path = Path(path)
    if path.is_symlink() and not path.exists():
        try:
            os.stat(path)
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise ImageFileError(
                    f"input file '{path}' is a loop of symbolic links (it leads back to itself); expected a link to a "
                    "PNG or NIfTI file"
                ) from None
        raise ImageFileError(
            f"input file '{path}' is a symbolic link to '{os.readlink(path)}', which does not exist; expected a link "
            "to a PNG or NIfTI file"
        )
    if path.exists() and not path.is_file():
        raise ImageFileError(f"input file '{path}' is not a regular file (a FIFO, socket, device or folder)")
    if not path.is_file():
        raise ImageFileError(f"input file '{path}' does not exist")
    if image_format(path) == "png":
        return _read_png(path, min_slice_size, max_pixels)
    return _read_nifti(path, slice_axis, min_slice_size, max_voxels, max_pixels, image_size)
