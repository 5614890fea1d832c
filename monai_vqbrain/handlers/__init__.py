"""Ignite handlers: loss components, codebook usage, training history and the evaluation report."""

from .checkpoint import (
    BestMetricRestorer,
    BestModelSaver,
    EpochSnapshotSaver,
    TrainingCheckpointLoader,
    TrainingCheckpointSaver,
)
from .codebook_usage import CodebookUsageHandler
from .divergence import StopOnDivergence, TrainingDivergedError, non_finite_weights
from .interrupt import EpochEndInterruptHold, InterruptHandler
from .log_values import (
    ITERATION_LOG_KEYS,
    every_n_iterations,
    numeric_tracking_outputs,
    tracking_log_values,
    training_log_values,
)
from .loss_components import LossComponentsHandler
from .reconstruction_report import (
    ReconstructionReportHandler,
    plot_loss_curves,
    plot_reconstructions,
    report_title,
    spread_examples,
    summarize_scores,
)
from .training_history import HistoryFileError, TrainingHistoryHandler, read_history

__all__ = [
    "ITERATION_LOG_KEYS",
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
    "non_finite_weights",
    "numeric_tracking_outputs",
    "tracking_log_values",
    "training_log_values",
    "plot_loss_curves",
    "plot_reconstructions",
    "read_history",
    "HistoryFileError",
    "report_title",
    "spread_examples",
    "summarize_scores",
]
