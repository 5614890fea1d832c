"""Ignite handlers: loss components, codebook usage, training history and the evaluation report."""

from .checkpoint import (
    BestMetricRestorer,
    BestModelSaver,
    EpochSnapshotSaver,
    TrainingCheckpointLoader,
    TrainingCheckpointSaver,
)
from .codebook_usage import CodebookUsageHandler
from .divergence import StopOnDivergence, TrainingDivergedError
from .interrupt import EpochEndInterruptHold, InterruptHandler
from .log_values import every_n_iterations, numeric_tracking_outputs, tracking_log_values, training_log_values
from .loss_components import LossComponentsHandler
from .reconstruction_report import ReconstructionReportHandler
from .training_history import HistoryFileError, TrainingHistoryHandler, read_history

__all__ = [
    "BestMetricRestorer",
    "BestModelSaver",
    "EpochSnapshotSaver",
    "TrainingCheckpointLoader",
    "TrainingCheckpointSaver",
    "CodebookUsageHandler",
    "EpochEndInterruptHold",
    "InterruptHandler",
    "StopOnDivergence",
    "TrainingDivergedError",
    "LossComponentsHandler",
    "ReconstructionReportHandler",
    "TrainingHistoryHandler",
    "every_n_iterations",
    "numeric_tracking_outputs",
    "tracking_log_values",
    "training_log_values",
    "read_history",
    "HistoryFileError",
]
