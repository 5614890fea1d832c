"""Data for monai_vqbrain: OASIS PNG slices, NIfTI/Analyze volumes cut into slices, and built-in demo data.

Every dataset yields items ``{"image": float32 tensor (1, S, S) in [0, 1], "name": str}``; see :func:`get_dataset`.
"""

from .datasets import (
    DATASET_FORMATS,
    dataset_record,
    detect_dataset_format,
    get_datalist,
    get_dataset,
    resolve_dataset_dir,
)
from .demo import DEMO_DIR_ENV, DEMO_MARKER, default_demo_dir, ensure_demo_dataset, generate_demo_dataset
from .limits import DEFAULT_MAX_IMAGE_PIXELS, DEFAULT_MAX_VOLUME_VOXELS
from .oasis import SPLITS, list_oasis_png_split
from .slices import list_volume_slices
from .transforms import LoadSliced, PadToSquared, ResizeSquared, ScaleByDtyped, ToGreyscaled, get_slice_transforms
from .volume_files import list_nifti_volumes

__all__ = [
    "SPLITS",
    "DATASET_FORMATS",
    "DEFAULT_MAX_IMAGE_PIXELS",
    "DEFAULT_MAX_VOLUME_VOXELS",
    "DEMO_DIR_ENV",
    "DEMO_MARKER",
    "default_demo_dir",
    "generate_demo_dataset",
    "ensure_demo_dataset",
    "dataset_record",
    "resolve_dataset_dir",
    "detect_dataset_format",
    "list_oasis_png_split",
    "list_nifti_volumes",
    "list_volume_slices",
    "get_slice_transforms",
    "get_datalist",
    "get_dataset",
    "LoadSliced",
    "ScaleByDtyped",
    "ToGreyscaled",
    "PadToSquared",
    "ResizeSquared",
]
