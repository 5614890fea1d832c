"""Inference on the user's own files: PNG and NIfTI in, reconstructions, code maps and metrics out.

The bundle's ``inferring`` workflow (``bundle/configs/inference.json``) builds an :class:`InferenceRunner` around a
:class:`ReconstructionNetwork`; the same classes work from Python.
"""

from .io import (
    DEFAULT_MIN_SLICE_SIZE,
    NIFTI_SUFFIXES,
    PNG_SUFFIXES,
    SUPPORTED_SUFFIXES,
    InputImage,
    NiftiInput,
    OutputPathError,
    PngInput,
    find_input_files,
    image_format,
    read_input,
    robust_range,
    strip_image_suffix,
)
from .network import ReconstructionNetwork
from .reconstruct import METRICS_FILE, FileResult, InferenceRunner

__all__ = [
    "DEFAULT_MIN_SLICE_SIZE",
    "METRICS_FILE",
    "NIFTI_SUFFIXES",
    "PNG_SUFFIXES",
    "SUPPORTED_SUFFIXES",
    "FileResult",
    "InferenceRunner",
    "InputImage",
    "NiftiInput",
    "OutputPathError",
    "PngInput",
    "ReconstructionNetwork",
    "find_input_files",
    "image_format",
    "read_input",
    "robust_range",
    "strip_image_suffix",
]
