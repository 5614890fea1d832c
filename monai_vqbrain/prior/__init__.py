"""The PixelCNN prior over a VQ-VAE's code maps: cached codes, training, generation and generation metrics.

* :mod:`.codes`: encode a split to code maps once and cache them (invalidated when the VQ-VAE or the data change),
  slice-position class labels, and the dataset the prior trains on.
* :mod:`.trainer`: the trainer, batch preparation, inferer and run checks of the bundle's ``training_prior``.
* :mod:`.metrics`: NLL (bits per code) and accuracy of a prior; Fréchet distance, diversity and memorisation of
  generated images, with bootstrap intervals.
* :mod:`.realism`: the classifier two-sample test of realism (held-out ROC AUC of a small CNN, grouped folds).
* :mod:`.figures`: the prior's learning curves; samples beside their nearest training slices.
* :mod:`.generate`: the bundle's ``generating``: load a prior from its checkpoint, sample, decode, write, measure.
"""

from .codes import (
    CONDITIONINGS,
    CodeDataset,
    SlicePositionLabels,
    codes_fingerprint,
    encode_dataset,
    file_sha256,
    load_or_encode_codes,
    load_vqvae,
    num_condition_classes,
    parse_slice_index,
    position_channels,
    position_map,
    vqvae_fingerprint,
)
from .figures import plot_nearest_training_slices, plot_prior_learning_curves
from .generate import (
    BrainGenerator,
    GenerationEvaluator,
    decode_codes,
    generation_log_values,
    load_prior,
    plot_sample_grid,
    prior_summary,
    read_prior_settings,
    sample_affine,
    sample_class_labels,
    write_samples,
)
from .metrics import (
    CodeAccuracyMetric,
    CodeNLLMetric,
    NearestImageSearch,
    bootstrap_frechet_interval,
    bootstrap_mean_interval,
    encoder_features,
    evaluate_generation,
    frechet_distance,
    mean_pairwise_ssim,
    pairwise_ssim,
)
from .realism import RealismClassifier, assign_folds, classifier_two_sample_test, slice_groups
from .trainer import (
    PRIOR_CHECKPOINTS,
    PriorInferer,
    PriorPrepareBatch,
    PriorTrainer,
    check_prior_run,
    lower_is_better,
    prior_metadata,
    prior_network_settings,
    training_loss,
)

__all__ = [
    "CONDITIONINGS",
    "PRIOR_CHECKPOINTS",
    "BrainGenerator",
    "GenerationEvaluator",
    "generation_log_values",
    "CodeAccuracyMetric",
    "CodeDataset",
    "CodeNLLMetric",
    "NearestImageSearch",
    "PriorInferer",
    "PriorPrepareBatch",
    "PriorTrainer",
    "RealismClassifier",
    "SlicePositionLabels",
    "assign_folds",
    "bootstrap_frechet_interval",
    "bootstrap_mean_interval",
    "check_prior_run",
    "classifier_two_sample_test",
    "codes_fingerprint",
    "decode_codes",
    "encode_dataset",
    "encoder_features",
    "evaluate_generation",
    "file_sha256",
    "frechet_distance",
    "load_or_encode_codes",
    "load_prior",
    "load_vqvae",
    "lower_is_better",
    "mean_pairwise_ssim",
    "num_condition_classes",
    "pairwise_ssim",
    "plot_nearest_training_slices",
    "plot_prior_learning_curves",
    "parse_slice_index",
    "plot_sample_grid",
    "position_channels",
    "position_map",
    "prior_metadata",
    "prior_network_settings",
    "prior_summary",
    "sample_class_labels",
    "slice_groups",
    "training_loss",
    "vqvae_fingerprint",
    "read_prior_settings",
    "sample_affine",
    "write_samples",
]
