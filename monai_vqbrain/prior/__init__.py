"""The PixelCNN prior over a VQ-VAE's code maps: cached codes, training, generation and generation metrics.

* :mod:`.codes`: a split's code maps, encoded once and cached (invalidated when the VQ-VAE or the data change), and
  the dataset the prior trains on; :mod:`.conditioning`: the slice-position labels and position map it is
  conditioned on.
* :mod:`.trainer`: the trainer, batch preparation, inferer and run checks of the bundle's ``training_prior``;
  :mod:`.code_metrics`: NLL (bits per code) and accuracy of a prior.
* realism measures of generated images, each usable alone: :mod:`.frechet` (Fréchet distance and its feature
  space), :mod:`.precision_recall` (k-NN precision and recall), :mod:`.ssim` (diversity and memorisation),
  :mod:`.realism` (classifier two-sample test) and :mod:`.texture` (texture two-sample test);
  :mod:`.generation_quality` composes them (and :mod:`.two_sample`'s comparisons) into ``generating``'s metric.
* :mod:`.figures`: the prior's learning curves; a grid of samples; samples beside their nearest training slices.
* the bundle's ``generating``: :mod:`.loading` (a prior from its checkpoint), :mod:`.sampling` (the sampler's
  requests, batches and inferer), :mod:`.writers` (PNG and NIfTI files), :mod:`.report`
  (``generation_metrics.json``) and :mod:`.generation_handlers` (keep, plot and report the samples).
"""

from .code_metrics import CodeAccuracyMetric, CodeNLLMetric
from .codes import (
    CodeDataset,
    codes_fingerprint,
    encode_dataset,
    file_sha256,
    load_or_encode_codes,
    load_vqvae,
    vqvae_fingerprint,
)
from .conditioning import (
    CONDITIONINGS,
    SlicePositionLabels,
    num_condition_classes,
    parse_slice_index,
    position_channels,
    position_map,
)
from .figures import plot_nearest_training_slices, plot_prior_learning_curves, plot_sample_grid
from .frechet import bootstrap_frechet_interval, encoder_features, frechet_distance
from .generation_handlers import GeneratedSamples, GenerationReport, NearestTrainingSlices, SampleGrid
from .generation_quality import GenerationQuality, real_image_batch
from .loading import load_prior, read_prior_settings
from .precision_recall import knn_precision_recall
from .realism import (
    RealismClassifier,
    assign_folds,
    classifier_two_sample_test,
    cross_validated_separation,
    held_out_separation,
    slice_groups,
)
from .report import (
    GENERATION_METRICS_KEYS,
    generation_log_values,
    generation_metrics_markdown,
    generation_summary,
    prior_summary,
)
from .sampling import (
    PriorSamplingInferer,
    SampleRequestBatch,
    SampleRequests,
    check_real_splits,
    decode_codes,
    sample_affine,
    sample_class_labels,
)
from .ssim import NearestImageSearch, bootstrap_mean_interval, mean_pairwise_ssim, pairwise_ssim
from .texture import TEXTURE_FEATURES, texture_features, texture_two_sample_test
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
from .writers import SampleNiftiWriter, SamplePNGWriter, SaveSampled

__all__ = [
    "check_real_splits",
    "GENERATION_METRICS_KEYS",
    "generation_metrics_markdown",
    "CONDITIONINGS",
    "PRIOR_CHECKPOINTS",
    "GeneratedSamples",
    "GenerationQuality",
    "GenerationReport",
    "NearestTrainingSlices",
    "PriorSamplingInferer",
    "SampleGrid",
    "SampleNiftiWriter",
    "SamplePNGWriter",
    "SampleRequestBatch",
    "SampleRequests",
    "SaveSampled",
    "generation_log_values",
    "generation_summary",
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
    "cross_validated_separation",
    "held_out_separation",
    "knn_precision_recall",
    "codes_fingerprint",
    "decode_codes",
    "encode_dataset",
    "encoder_features",
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
    "TEXTURE_FEATURES",
    "texture_features",
    "texture_two_sample_test",
    "training_loss",
    "vqvae_fingerprint",
    "read_prior_settings",
    "sample_affine",
    "real_image_batch",
]
