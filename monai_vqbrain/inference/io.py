"""Reading the user's PNG and NIfTI files into model-ready slices, and writing reconstructions in their own format.

Each input file becomes a stack of 2D slices ``(N, H, W)`` in ``[0, 1]``, prepared exactly as in training (a PNG is
one slice; a NIfTI image gives every slice along ``slice_axis`` of its RAS volume); :func:`restore_input_layout`
undoes the slicing, the reorientation and the intensity scaling, and :func:`write_png` and :func:`write_nifti` write
a reconstruction in the input's size, bit depth, header and data type. The model card (``bundle/docs/README.md``,
"Preprocessing" and "Inference on your files") describes each step, the outputs and the size rule: every slice
must be at least ``min_slice_size`` pixels along both in-plane sides, as smaller ones hold too little to be resized
to ``image_size``.
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.transforms import EnsureChannelFirst, LoadImage
from nibabel.orientations import apply_orientation, axcodes2ornt, ornt_transform
from PIL import Image

from monai_vqbrain.data.limits import DEFAULT_MAX_IMAGE_PIXELS, DEFAULT_MAX_VOLUME_VOXELS
from monai_vqbrain.data.nifti import kept_slices, read_volume_ras, robust_range, scale_to_unit, volume_plane
from monai_vqbrain.data.oasis import check_png_file
from monai_vqbrain.data.transforms import ScaleByDtyped, SliceReader, ToGreyscaled
from monai_vqbrain.errors import DatasetError, ImageFileError, OutputPathError, SettingError
from monai_vqbrain.utils.io import atomic_path

logger = logging.getLogger(__name__)

__all__ = [
    "PNG_SUFFIXES",
    "NIFTI_SUFFIXES",
    "SUPPORTED_SUFFIXES",
    "DEFAULT_MIN_SLICE_SIZE",
    "OutputPathError",
    "image_format",
    "strip_image_suffix",
    "find_input_files",
    "read_input",
    "restore_input_layout",
    "write_png",
    "write_nifti",
]

PNG_SUFFIXES = (".png",)
NIFTI_SUFFIXES = (".nii.gz", ".nii")
SUPPORTED_SUFFIXES = PNG_SUFFIXES + NIFTI_SUFFIXES
"""File name endings accepted as inputs (case-insensitive)."""

DEFAULT_MIN_SLICE_SIZE = 16
"""Smallest accepted in-plane side of a slice, in pixels (see the module docstring)."""

_GLOB_CHARACTERS = frozenset("*?[")
_RAS = axcodes2ornt("RAS")


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


def _is_supported(path: Path) -> bool:
    return not path.name.startswith(".") and path.name.lower().endswith(SUPPORTED_SUFFIXES)


def _is_listed(path: Path) -> bool:
    """Whether a folder's or glob's entry is an input: a file, or a dangling symbolic link (reported as bad).

    A dangling link is the user's file gone missing, so it is named in the run's report rather than dropped;
    FIFOs, sockets and devices are never taken, as reading one would block or never end.
    """
    return path.is_file() or (path.is_symlink() and not path.exists())


def _files_of(spec: str) -> list[Path]:
    """The files one input specification names: a file, the image files in a folder, or the files a glob matches."""
    # absolute (not resolved) at once, so that every message and row names the file wherever the run started
    path = Path(spec).expanduser().absolute()
    if path.is_file():
        # a file named explicitly is taken whatever its ending, so a non-image file is reported, not ignored
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if _is_listed(p) and _is_supported(p))
        if not files:
            raise DatasetError(
                f"input folder '{path}' holds no PNG or NIfTI files; expected files ending in "
                f"{', '.join(SUPPORTED_SUFFIXES)} directly in it (use a glob such as 'folder/**/*.png' for sub-folders)"
            )
        return files
    if path.exists() and not _GLOB_CHARACTERS & set(spec):
        # a FIFO, socket or device: reading it would block or never end
        raise DatasetError(
            f"input '{path}' is not a regular file (a FIFO, socket or device); expected a PNG or NIfTI file, a "
            f"folder of them, or a quoted glob"
        )
    if _GLOB_CHARACTERS & set(spec):
        # the glob made absolute (``path``) matches absolute paths
        matches = sorted(Path(p) for p in glob.glob(str(path), recursive=True))
        files = [p for p in matches if _is_listed(p) and not p.name.startswith(".")]
        if not files:
            raise DatasetError(f"input glob '{path}' matched no files; expected it to match PNG or NIfTI files")
        return files
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
    files: dict[Path, None] = {}
    for spec in specs:
        for path in _files_of(str(spec)):
            # not resolve(): a link's outputs and row are named after the link, and a link beside its target is
            # a second input, not a duplicate (check_outputs compares resolved paths to protect the inputs)
            files.setdefault(path.absolute(), None)
    return list(files)


def _check_slice_size(path: Path, plane_shape: tuple[int, int], min_slice_size: int, detail: str = "") -> None:
    if min(plane_shape) < min_slice_size:
        raise ImageFileError(
            f"'{path}' gives slices of {plane_shape[0]}x{plane_shape[1]} pixels{detail}; expected both in-plane sides "
            f"to be at least {min_slice_size} pixels (min_slice_size) to be resized to the model's image size"
        )


def _read_png(path: Path, min_slice_size: int, max_pixels: int | None) -> tuple[np.ndarray, tuple[int, ...], dict]:
    """Read and check a PNG file as one grey slice, made as in training (bit-depth scaling, grey)."""
    check_png_file(path, max_pixels)
    try:
        # dtype=None keeps the stored integer type: its bit depth decides the scaling, as in training
        image = LoadImage(reader=SliceReader(), image_only=True, dtype=None)(str(path))
    except Exception as err:  # PIL raises several types for pixel data that fails to decode
        raise ImageFileError(f"cannot decode the pixels of '{path}' ({err}); the file may be truncated") from err
    image = EnsureChannelFirst()(image)
    if image.ndim != 3:
        raise ImageFileError(f"'{path}' has shape {tuple(image.shape)}; expected a 2D image")
    height, width = (int(s) for s in image.shape[-2:])
    _check_slice_size(path, (height, width), min_slice_size)
    image = image.as_tensor() if hasattr(image, "as_tensor") else image
    # the peak ScaleByDtyped divides by, so that writing multiplies by the same value
    peak = ScaleByDtyped.peak(image)
    dtype = "uint8" if image.dtype in (torch.uint8, torch.bool) else "uint16"
    grey = ToGreyscaled.to_grey(ScaleByDtyped.scale(image))
    return grey.numpy().astype(np.float32), (height, width), {"format": "png", "peak": peak, "dtype": dtype}


def _read_nifti(
    path: Path, slice_axis: int, min_slice_size: int, max_voxels: int | None
) -> tuple[np.ndarray, tuple[int, ...], dict]:
    """Read, check, reorient, scale and slice a NIfTI file with the reader training uses."""
    if slice_axis not in (0, 1, 2):
        raise ValueError(f"slice_axis must be 0, 1 or 2 (an axis of the RAS volume), got {slice_axis!r}")
    # the reader training uses: header checks, NaN check, reorientation to RAS
    volume = read_volume_ras(path, max_voxels)
    if not isinstance(volume.image, (nib.Nifti1Image, nib.Nifti2Image)):
        raise ImageFileError(f"'{path}' is a {type(volume.image).__name__}; expected a NIfTI-1 or NIfTI-2 image")
    ras = volume.ras
    low, high = robust_range(ras)
    scaled = scale_to_unit(ras, low, high)
    # every slice, along the axis training would cut (a 2D image is one slice whatever the slice axis)
    axis, indices = kept_slices(scaled, slice_axis, (0.0, 1.0), min_foreground=0.0)
    plane_shape = tuple(ras.shape[a] for a in range(3) if a != axis)[::-1]  # rot90 swaps the in-plane axes
    _check_slice_size(
        path,
        plane_shape,
        min_slice_size,
        f" (its RAS shape is {'x'.join(map(str, ras.shape))}, sliced along RAS axis {axis})",
    )
    slices = np.concatenate([volume_plane(scaled, axis, i) for i in indices])
    info = {
        "format": "nifti",
        "orientation": volume.orientation.tolist(),
        "axis": axis,
        "low": low,
        "high": high,
        "shape": list(volume.image.shape),
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
    planes = [np.rot90(plane, k=-1) for plane in reconstruction.astype(np.float64)]
    ras = np.stack(planes, axis=int(info["axis"]))
    low, high = float(info["low"]), float(info["high"])
    ras = ras * (high - low) + low if high > low else np.full_like(ras, low)
    volume = apply_orientation(ras, ornt_transform(_RAS, np.asarray(info["orientation"], dtype=float)))
    return volume.reshape(tuple(int(s) for s in info["shape"]))


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
        output_dtype: ``uint8`` or ``uint16`` to write another bit depth (rescaled to its range); None keeps
            ``dtype``.
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
        # unscaled integers: round to the stored type, so the file keeps its data type and scaling fields
        info = np.iinfo(dtype)
        rounded = np.rint(volume)
        clipped = int(np.count_nonzero((rounded < info.min) | (rounded > info.max)))
        if clipped:  # a chosen output_dtype narrower than the data: say so rather than flatten the bright tissue
            logger.warning(
                f"'{path}': {clipped} voxel value(s) outside {dtype}'s range [{info.min}, {info.max}] were clipped; "
                f"choose a wider --output_dtype (or None, the input's own)"
            )
        data = np.clip(rounded, info.min, info.max).astype(dtype)
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
) -> tuple[np.ndarray, tuple[int, ...], dict]:
    """Read one input file, by its ending, as its slices and what :func:`restore_input_layout` needs to undo them.

    Args:
        path: the file.
        slice_axis: for NIfTI volumes, the RAS axis to slice along (0 sagittal, 1 coronal, 2 axial).
        min_slice_size: smallest accepted in-plane side, in pixels.
        max_pixels: the most pixels a PNG header may declare; None allows any.
        max_voxels: the most voxels a NIfTI header may declare; None allows any.

    Returns:
        The slices, float32 ``(N, H, W)`` in ``[0, 1]`` before padding and resizing to the model's image size; the
        file's own image shape (for reporting); and the restoring information: ``format`` and, for a PNG, the
        ``peak`` white had and the pixel ``dtype``; for a NIfTI image, the ``orientation`` of its voxel axes, the RAS
        ``axis`` it was sliced along, the intensities ``low`` and ``high`` the scaling mapped to 0 and 1, and its
        ``shape``.

    Raises:
        ImageFileError: naming the file and what was expected, for any bad input.
        ValueError: when ``slice_axis`` is not 0, 1 or 2.
    """
    path = Path(path)
    if path.is_symlink() and not path.exists():
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
    return _read_nifti(path, slice_axis, min_slice_size, max_voxels)
