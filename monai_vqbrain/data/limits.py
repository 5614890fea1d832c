"""Size limits on input files, checked from their headers before any pixel is decoded.

A few hundred kilobytes of compressed PNG or NIfTI can declare gigapixels of zeros; decoding them would take minutes
and gigabytes. The defaults are far above any brain MRI (OASIS slices are 256x256, volumes 176x208x176) and are
raised with the ``max_image_pixels`` and ``max_volume_voxels`` settings.

Every slice is padded to the square of its longer side before it is resized, so a thin slice (16 x 1,000,000
pixels: a few kilobytes of PNG) would become a square of 10^12 pixels: ``max_image_pixels`` bounds that padded
square too, and ``min_slice_size`` refuses slices too small to be resized (a 1x1 PNG).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

from monai_vqbrain.errors import ImageFileError

DEFAULT_MAX_IMAGE_PIXELS = 8192**2
"""Most pixels a 2D image file (PNG) may declare: 8192 x 8192."""

DEFAULT_MAX_VOLUME_VOXELS = 512**3
"""Most voxels a NIfTI/Analyze file may declare: 512 x 512 x 512."""

DEFAULT_MIN_SLICE_SIZE = 16
"""Smallest accepted in-plane side of a slice, in pixels: smaller ones hold too little to be resized to the model's
image size."""


def check_image_size(path: str | os.PathLike, shape: Sequence[int], limit: int | None, setting: str) -> None:
    """Refuse a file whose header declares more than ``limit`` pixels or voxels (None allows any).

    Args:
        path: the file, for the message.
        shape: the image shape its header declares.
        limit: the most pixels/voxels allowed.
        setting: the setting that raises the limit, for the message.

    Raises:
        ImageFileError: naming the file, its declared shape, the limit and the setting.
    """
    count = math.prod(int(s) for s in shape)
    if limit is not None and count > int(limit):
        raise ImageFileError(
            f"'{path}' declares {'x'.join(str(int(s)) for s in shape)} = {count:,} pixels/voxels, more than "
            f"{setting}={int(limit):,}; expected a brain image (pass --{setting} {count} to read it anyway)"
        )


def check_slice_shape(
    path: str | os.PathLike,
    plane_shape: Sequence[int],
    min_slice_size: int | None = DEFAULT_MIN_SLICE_SIZE,
    max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
    detail: str = "",
) -> None:
    """Refuse, from the shape a header declares, slices too small to resize or whose padded square is too large.

    Args:
        path: the file, for the message.
        plane_shape: ``(height, width)`` of its slices.
        min_slice_size: the smallest side allowed (``min_slice_size``); None allows any.
        max_pixels: the most pixels the padded square may hold (``max_image_pixels``); None allows any.
        detail: more about the shape, for the message (e.g. a volume's RAS shape).

    Raises:
        ImageFileError: naming the file, its slice shape, the limit and the setting that moves it.
    """
    height, width = (int(s) for s in plane_shape)
    if min_slice_size is not None and min(height, width) < int(min_slice_size):
        raise ImageFileError(
            f"'{path}' gives slices of {height}x{width} pixels{detail}; expected both in-plane sides to be at least "
            f"{int(min_slice_size)} pixels (min_slice_size) to be resized to the model's image size"
        )
    side = max(height, width)
    if max_pixels is not None and side * side > int(max_pixels):
        raise ImageFileError(
            f"'{path}' gives slices of {height}x{width} pixels{detail}, padded to a square of {side}x{side} = "
            f"{side * side:,} pixels, more than max_image_pixels={int(max_pixels):,}; expected a brain slice of a "
            f"sensible aspect ratio (pass --max_image_pixels {side * side} to read it anyway)"
        )
