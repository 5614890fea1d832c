"""Inference on the user's own files: PNG and NIfTI in, reconstructions, code maps and metrics out.

The bundle's ``inferring`` workflow (``bundle/configs/inference.json``) is a MONAI ``SupervisedEvaluator``
(:class:`ReconstructionEvaluator`) over an :class:`InferenceDataset` of the input files: ``LoadInputd``,
``PadToSquared`` and ``ResizeSquared`` prepare each file's slices, the ``SliceCodesInferer`` encodes and decodes them,
MONAI's ``Invertd`` and :class:`SaveReconstructiond` restore and write each reconstruction, and the handlers
:class:`CodesSaver` and :class:`InferenceMetricsWriter` write the code maps and ``reconstruction_metrics.csv``.
"""

from ..data.limits import DEFAULT_MIN_SLICE_SIZE
from ..errors import OutputPathError
from .handlers import METRICS_FILE, CodesSaver, FileResult, InferenceMetricsWriter, code_information_bits
from .input_files import (
    NIFTI_SUFFIXES,
    PNG_SUFFIXES,
    SUPPORTED_SUFFIXES,
    find_input_files,
    image_format,
    strip_image_suffix,
)
from .io import read_input, restore_input_layout, write_nifti, write_png
from .transforms import OUTPUT_EXTENSIONS, LoadInputd, SaveReconstructiond, codes_file, output_file
from .workflow import InferenceDataset, ReconstructionEvaluator, check_outputs

__all__ = [
    "DEFAULT_MIN_SLICE_SIZE",
    "METRICS_FILE",
    "NIFTI_SUFFIXES",
    "OUTPUT_EXTENSIONS",
    "PNG_SUFFIXES",
    "SUPPORTED_SUFFIXES",
    "CodesSaver",
    "FileResult",
    "InferenceDataset",
    "InferenceMetricsWriter",
    "LoadInputd",
    "OutputPathError",
    "ReconstructionEvaluator",
    "SaveReconstructiond",
    "check_outputs",
    "code_information_bits",
    "codes_file",
    "find_input_files",
    "image_format",
    "output_file",
    "read_input",
    "restore_input_layout",
    "strip_image_suffix",
    "write_nifti",
    "write_png",
]
