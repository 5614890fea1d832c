"""Size limits on input files, checked from their headers before any pixel is decoded.

A few hundred kilobytes of compressed PNG or NIfTI can declare gigapixels of zeros; decoding them would take minutes
and gigabytes. The defaults are far above any brain MRI (OASIS slices are 256x256, volumes 176x208x176) and are
raised with the ``max_image_pixels`` and ``max_volume_voxels`` settings.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

from monai_vqbrain.errors import ImageFileError

__all__ = ["DEFAULT_MAX_IMAGE_PIXELS", "DEFAULT_MAX_VOLUME_VOXELS", "check_image_size"]

DEFAULT_MAX_IMAGE_PIXELS = 8192**2
"""Most pixels a 2D image file (PNG) may declare: 8192 x 8192."""

DEFAULT_MAX_VOLUME_VOXELS = 512**3
"""Most voxels a NIfTI/Analyze file may declare: 512 x 512 x 512."""


def check_image_size(path: str | os.PathLike, shape: Sequence[int], limit: int | None, setting: str) -> None:
    """Refuse a file whose header declares more than ``limit`` pixels or voxels.

    Args:
        path: the file, for the message.
        shape: the image shape its header declares.
        limit: the most pixels/voxels allowed; None allows any.
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
