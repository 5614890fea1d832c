"""The dictionary transforms of ``inference.json``: read a user's file as model-ready slices, and save a reconstruction.

``preprocessing``'s ``LoadInputd``, ``PadToSquared`` and ``ResizeSquared`` are invertible: ``postprocessing``'s
MONAI ``Invertd`` undoes the resizing, the padding, then the slicing, reorientation and intensity scaling.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import InvertibleTransform, MapTransform
from monai.utils import TraceKeys, convert_to_numpy

from monai_vqbrain.data.limits import DEFAULT_MAX_IMAGE_PIXELS, DEFAULT_MAX_VOLUME_VOXELS, DEFAULT_MIN_SLICE_SIZE
from monai_vqbrain.errors import SettingError

from .input_files import NIFTI_SUFFIXES, PNG_SUFFIXES, image_format, strip_image_suffix
from .io import read_input, restore_input_layout, write_nifti, write_png

OUTPUT_EXTENSIONS = {"png": PNG_SUFFIXES, "nifti": NIFTI_SUFFIXES}
"""The ``output_ext`` values each input format can be written as (the first is the default)."""


def output_file(
    path: str | os.PathLike,
    output_dir: str | os.PathLike,
    output_postfix: str,
    output_ext: str | None = None,
    separate_folder: bool = False,
) -> Path:
    """The output for input ``path``: ``output_dir/[<name>/]<name>_<output_postfix><ext>``, as MONAI's ``SaveImaged``.

    Args:
        path: the input file; ``<name>`` is its name without its image ending (``x.nii.gz`` -> ``x``).
        output_dir: the output folder.
        output_postfix: appended to the name after ``_`` (nothing when empty).
        output_ext: the output's ending; None for the input's own format (``.png`` or ``.nii.gz``).
        separate_folder: put each input's outputs in a sub-folder named like the input.

    Raises:
        ImageFileError: when ``path`` is not named like a PNG or NIfTI file.
        SettingError: when ``output_ext`` cannot hold the input's format.
    """
    kind = image_format(path)
    extension = output_ext if output_ext is not None else OUTPUT_EXTENSIONS[kind][0]
    if extension.lower() not in OUTPUT_EXTENSIONS[kind]:
        # a setting that does not fit the inputs, like an output_dtype PNG cannot hold: exit status 2
        raise SettingError(
            f"output_ext '{output_ext}' cannot hold '{path}'; expected null (the input's format) or one of "
            f"{', '.join(OUTPUT_EXTENSIONS[kind])} for a {kind} input"
        )
    # not MONAI's FolderLayout: it strips one ending (and .gz) case-sensitively, so 'X.NII.GZ' would name 'X.NII_recon'
    return _named(path, output_dir, output_postfix, extension, separate_folder)


def codes_file(path: str | os.PathLike, output_dir: str | os.PathLike, separate_folder: bool = False) -> Path:
    """The code-map file for input ``path``: ``output_dir/[<name>/]<name>_codes.npz`` (see :func:`output_file`)."""
    return _named(path, output_dir, "codes", ".npz", separate_folder)


def _named(
    path: str | os.PathLike, output_dir: str | os.PathLike, postfix: str, extension: str, separate: bool
) -> Path:
    stem = strip_image_suffix(path)
    folder = Path(output_dir) / stem if separate else Path(output_dir)
    return folder / (f"{stem}_{postfix}{extension}" if postfix else f"{stem}{extension}")


def check_output_dtype(path: str | os.PathLike, output_dtype: str | None) -> None:
    """Refuse (``SettingError`` naming the file) an ``output_dtype`` other than ``uint8``/``uint16`` for a PNG input."""
    if output_dtype is not None and image_format(path) == "png" and output_dtype not in ("uint8", "uint16"):
        raise SettingError(
            f"output_dtype '{output_dtype}' cannot be written as PNG ('{path}'); expected null, uint8 or uint16"
        )


class LoadInputd(MapTransform, InvertibleTransform):
    """Read a PNG or NIfTI file named by ``d[key]`` as its slices ``(N, H, W)`` in ``[0, 1]``, the channels of a 2D image.

    The reading is :func:`.io.read_input`, as in training (not MONAI's ``LoadImaged`` with ``ScaleByDtyped``/
    ``ToGreyscaled``: those would take a volume's slices for colour channels). The result is a ``MetaTensor`` whose
    ``meta`` holds ``filename_or_obj``, ``format``, ``shape`` (the file's image shape, e.g. ``24x28x20``),
    ``slice_axis`` (-1 for a PNG) and ``input_bytes``; :meth:`inverse` maps slices back to the file's voxel order and
    intensity scale (float64).

    Args:
        keys: the key holding the path (``"image"``).
        slice_axis: the RAS axis volumes are sliced along: 0 sagittal, 1 coronal, 2 axial.
        min_slice_size: smallest accepted in-plane side of a slice, in pixels.
        max_image_pixels: the most pixels a PNG header may declare; None allows any.
        max_volume_voxels: the most voxels a NIfTI header may declare; None allows any.
        image_size: the model's image size: a volume is read and restored at it one slice at a time, never held at
            its own resolution (``PadToSquared`` and ``ResizeSquared`` then have nothing left to do); None: at its own.
        allow_missing_keys: do not fail when a key is missing.
    """

    def __init__(
        self,
        keys: KeysCollection,
        slice_axis: int = 2,
        min_slice_size: int = DEFAULT_MIN_SLICE_SIZE,
        max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
        max_volume_voxels: int | None = DEFAULT_MAX_VOLUME_VOXELS,
        image_size: int | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if slice_axis not in (0, 1, 2):
            raise ValueError(f"slice_axis must be 0, 1 or 2 (an axis of the RAS volume), got {slice_axis!r}")
        if int(min_slice_size) < 1:
            raise ValueError(f"min_slice_size must be a positive integer, got {min_slice_size!r}")
        self.slice_axis = slice_axis
        self.min_slice_size = int(min_slice_size)
        self.max_image_pixels = max_image_pixels
        self.max_volume_voxels = max_volume_voxels
        self.image_size = None if image_size is None else int(image_size)

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            path = Path(d[key])
            slices, shape, info = read_input(
                path,
                self.slice_axis,
                self.min_slice_size,
                self.max_image_pixels,
                self.max_volume_voxels,
                self.image_size,
            )
            meta = {
                "filename_or_obj": str(path),
                "format": info["format"],
                "shape": "x".join(str(s) for s in shape),
                "slice_axis": int(info.get("axis", -1)),
                "input_bytes": path.stat().st_size,
            }
            if info["format"] == "png":
                meta.update(dtype=info["dtype"], peak=float(info["peak"]))
            slices = MetaTensor(torch.from_numpy(slices), meta=meta)
            self.push_transform(slices, extra_info=info)
            d[key] = slices
        return d

    def inverse(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            info = self.pop_transform(d[key], check=False)[TraceKeys.EXTRA_INFO]
            slices = convert_to_numpy(d[key], wrap_sequence=True).astype(np.float32, copy=False)
            if info.get("image_size") is None:
                slices = np.clip(slices, 0.0, 1.0)
            # else: still at the model's size; each slice is clipped once resized back, as the line above does
            restored = restore_input_layout(info, slices)
            meta = dict(d[key].meta) if isinstance(d[key], MetaTensor) else {}
            d[key] = MetaTensor(torch.from_numpy(np.ascontiguousarray(restored)), meta=meta)
        return d


class SaveReconstructiond(MapTransform):
    """Write ``d[key]``, restored to its input's layout by ``Invertd``, in the input's format.

    The keys are those of MONAI's ``SaveImaged``. Not ``SaveImaged`` itself: its writers write in place (a killed run
    leaves a half-written file), replace existing files without asking, keep only a NIfTI's affine (not its header
    and data type) and write PNGs at one bit depth. The written path is recorded in ``meta["saved_to"]``, as
    ``SaveImaged(savepath_in_metadict=True)`` does.

    Args:
        keys: the key of the restored reconstruction (``"pred"``).
        output_dir: the output folder.
        output_postfix: appended to each input's name after ``_`` (``recon``: ``<name>_recon.png``).
        output_ext: the output's ending; None (default) for the input's own format (``.png`` or ``.nii.gz``).
        output_dtype: the written data type; None (default) for the input's own (a PNG: ``uint8`` or ``uint16``).
        separate_folder: put each input's outputs in a sub-folder named like the input.
        overwrite: replace existing outputs (else ``FileExistsError``).
        allow_missing_keys: pass over data without ``key`` (inputs that could not be read).
    """

    def __init__(
        self,
        keys: KeysCollection,
        output_dir: str | os.PathLike,
        output_postfix: str = "recon",
        output_ext: str | None = None,
        output_dtype: str | None = None,
        separate_folder: bool = False,
        overwrite: bool = False,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.output_dir = Path(output_dir).expanduser().absolute()  # a failed write names the absolute path
        self.output_postfix = output_postfix
        self.output_ext = output_ext
        self.output_dtype = output_dtype
        self.separate_folder = bool(separate_folder)
        self.overwrite = bool(overwrite)

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            meta = image.meta
            source = Path(meta["filename_or_obj"])
            check_output_dtype(source, self.output_dtype)
            path = output_file(source, self.output_dir, self.output_postfix, self.output_ext, self.separate_folder)
            array = convert_to_numpy(image, wrap_sequence=True)
            if meta["format"] == "png":
                write_png(array, path, meta["dtype"], float(meta["peak"]), self.output_dtype, overwrite=self.overwrite)
            else:
                # the input's own header (read again: a header does not travel through a DataLoader's collation)
                template = nib.load(str(source))
                write_nifti(array, template, path, self.output_dtype, overwrite=self.overwrite)
            meta["saved_to"] = str(path)
        return d
