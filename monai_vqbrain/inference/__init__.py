"""Inference on the user's own files: PNG and NIfTI in, reconstructions, code maps and metrics out.

The bundle's ``inferring`` workflow (``bundle/configs/inference.json``) is a MONAI ``SupervisedEvaluator``
(:class:`ReconstructionEvaluator`) over an :class:`InferenceDataset` of the input files: ``LoadInputd``,
``PadToSquared`` and ``ResizeSquared`` prepare each file's slices, the ``SliceCodesInferer`` encodes and decodes them,
MONAI's ``Invertd`` and :class:`SaveReconstructiond` restore and write each reconstruction, and the handlers
:class:`CodesSaver` and :class:`InferenceMetricsWriter` write the code maps and ``reconstruction_metrics.csv``.
"""

from ..errors import OutputPathError
from .handlers import METRICS_FILE, CodesSaver, FileResult, InferenceMetricsWriter
from .input_files import find_input_files
from .io import read_input
from .transforms import LoadInputd, SaveReconstructiond
from .workflow import InferenceDataset, ReconstructionEvaluator, check_outputs

__all__ = [
    "METRICS_FILE",
    "CodesSaver",
    "FileResult",
    "InferenceDataset",
    "InferenceMetricsWriter",
    "LoadInputd",
    "OutputPathError",
    "ReconstructionEvaluator",
    "SaveReconstructiond",
    "check_outputs",
    "find_input_files",
    "read_input",
]
