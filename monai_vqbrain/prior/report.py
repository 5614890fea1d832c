"""The report of a generating run: every key of ``generation_metrics.json`` described once
(:data:`GENERATION_METRICS_KEYS`), the prior's own results, the one-line summary and the numbers a tracker logs.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

from ..handlers.training_history import read_history

logger = logging.getLogger(__name__)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def prior_summary(metadata: Mapping[str, Any], history_file: str | os.PathLike | None = None) -> dict[str, Any]:
    """The prior's validation results at its best epoch, from its checkpoint metadata and training history."""
    settings = metadata.get("network_settings") or {}
    num_embeddings = settings.get("num_embeddings")
    summary: dict[str, Any] = {
        "prior_best_epoch": metadata.get("epoch"),
        "prior_val_bits_per_code": metadata.get("key_metric"),
        "prior_val_accuracy": None,
        "prior_uniform_bits_per_code": math.log2(num_embeddings) if num_embeddings else None,
        "prior_conditioning": (metadata.get("conditioning") or {}).get("type", "none"),
    }
    if history_file is not None:
        try:
            records = read_history(history_file)
        except ValueError as error:
            logger.warning(f"ignoring the prior's training history: {error}")
            records = []
        for record in records:
            if record.get("epoch") == summary["prior_best_epoch"]:
                summary["prior_val_accuracy"] = record.get("val_accuracy")
                if summary["prior_val_bits_per_code"] is None:
                    summary["prior_val_bits_per_code"] = record.get("val_bits_per_code")
    return summary


def generation_summary(report: Mapping[str, Any]) -> str:
    """One line of the headline generation metrics: realism AUC and d' with their references, FD, diversity and
    memorisation.

    Args:
        report: the content of ``generation_metrics.json``.
    """

    def value(key: str, digits: int = 2) -> str:
        number = report.get(key)
        if not _is_number(number):
            return "n/a"
        interval = report.get(f"{key}_ci95")
        if isinstance(interval, Sequence) and len(interval) == 2 and all(isinstance(v, (int, float)) for v in interval):
            return f"{number:.{digits}f} [{interval[0]:.{digits}f}, {interval[1]:.{digits}f}]"
        return f"{number:.{digits}f}"

    return (
        f"generation: classifier AUC generated vs test {value('classifier_auc_generated_vs_test')} "
        f"(0.5 = indistinguishable; real train vs test {value('classifier_auc_train_vs_test')}, reconstructed vs test "
        f"{value('classifier_auc_reconstructed_vs_test')}); classifier d' generated vs test "
        f"{value('classifier_dprime_generated_vs_test')} (0 = indistinguishable; real train vs test "
        f"{value('classifier_dprime_train_vs_test')}, reconstructed vs test "
        f"{value('classifier_dprime_reconstructed_vs_test')}); FD generated vs test {value('fd_generated_vs_test')} "
        f"(train subset vs test {value('fd_train_subset_vs_test')}); diversity {value('diversity_ssim_generated', 3)} "
        f"(real test {value('diversity_ssim_test', 3)}); memorisation {value('memorisation_ssim_mean', 3)} "
        f"(real test {value('memorisation_ssim_test_mean', 3)})"
    )


def generation_log_values(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The numbers of a ``generation_metrics.json`` that a tracker logs as metrics: every finite number at the top
    level, and each ``*_ci95`` interval as ``<key>_low`` and ``<key>_high``; a tracker only takes numbers, so None
    entries (a metric not computed), flags, texts and per-sample lists are left out.

    Args:
        metrics: the generation metrics, as ``generation_metrics.json`` holds them.
    """
    values: dict[str, float] = {}
    for key, value in metrics.items():
        if _is_number(value):
            values[key] = float(value)
        elif key.endswith("_ci95") and isinstance(value, (list, tuple)) and len(value) == 2:
            for side, bound in zip(("low", "high"), value, strict=True):
                if _is_number(bound):
                    values[f"{key}_{side}"] = float(bound)
    return values


COMPARISONS = {
    "generated_vs_test": "generated vs real test slices: the realism measure",
    "train_vs_test": "real training vs real test slices (different subjects): what two real sets score",
    "reconstructed_vs_test": (
        "VQ-VAE reconstructions of half of the test subjects vs real slices of the other half: the best a perfect "
        "prior could reach through this decoder"
    ),
}
"""The three comparisons of the two-sample tests of :class:`~monai_vqbrain.prior.GenerationQuality`."""


_AUC_CI95 = "95% interval of that AUC (Student t over the folds, clipped to [0, 1])"

#: the report's entries of each two-sample comparison, by test: the field of the test's result each holds, and what
#: it holds (``{name}``: the comparison; ``{meaning}``: its description in ``COMPARISONS``)
TWO_SAMPLE_ENTRIES: dict[str, dict[str, tuple[str, str]]] = {
    "classifier": {
        "classifier_auc_{name}": (
            "auc",
            "classifier two-sample test, {meaning}: mean held-out ROC AUC over the folds (0.5: indistinguishable, 1: "
            "always told apart); null when not measured (see classifier_notes)",
        ),
        "classifier_auc_{name}_std": ("auc_std", "standard deviation of that AUC over the folds"),
        "classifier_auc_{name}_ci95": ("auc_ci95", _AUC_CI95),
        "classifier_auc_{name}_folds": ("auc_folds", "that AUC in each fold"),
        "classifier_dprime_{name}": (
            "dprime",
            "d′ of the same test, {meaning}: the gap between the classifier's mean held-out scores of the two sets "
            "over their pooled standard deviation, averaged over the folds (0: indistinguishable); on a few dozen "
            "images a side its interval is wide and it means little",
        ),
        "classifier_dprime_{name}_ci95": ("dprime_ci95", "95% interval of that d′"),
        "classifier_images_per_side_{name}": (
            "num_first",
            "images on each side of that test (at most num_samples); null when it was not measured",
        ),
    },
    "texture": {
        "texture_auc_{name}": (
            "auc",
            "texture two-sample test, {meaning}: mean held-out ROC AUC of a logistic regression on intensity, gradient "
            "and local-binary-pattern histograms inside the brain, same folds as the classifier's; null when not "
            "measured",
        ),
        "texture_auc_{name}_ci95": ("auc_ci95", _AUC_CI95),
        "texture_dprime_{name}": ("dprime", "d′ of the same texture test (0: indistinguishable)"),
        "texture_dprime_{name}_ci95": ("dprime_ci95", "95% interval of that d′"),
    },
}


#: every key of ``generation_metrics.json`` with what it holds: the one description of the file, from which the
#: documentation's table is generated (``docs/hooks/generated_tables.py``); a test fails for a key a run writes
#: that is not here. Keys after ``metrics_status`` are written only when the metrics were measured.
GENERATION_METRICS_KEYS: dict[str, str] = {
    # the samples and the run (GenerationReport)
    "num_samples": "images generated",
    "seed": "the sampler's seed (sample_seed)",
    "temperature": "sampling temperature (0: greedy)",
    "image_size": "side of the generated images in pixels",
    "code_size": "size of the code maps sampled, [height, width]",
    "sample_files": "the samples' PNG files in generation_dir (each has a .nii.gz beside it)",
    "sample_class_labels": "each sample's slice-position bin (null for an unconditioned prior)",
    "sampling_seconds": "time spent sampling and decoding, in seconds",
    "prior_checkpoint": "the prior's checkpoint sampled from",
    "vqvae_checkpoint": "the VQ-VAE checkpoint that decoded the codes",
    "metrics_status": "measured; not measured (--generation_metrics false); or pending, in a file whose run stopped "
    "before its metrics were written",
    # the prior's own results (prior_summary)
    "prior_best_epoch": "the epoch of the prior's best checkpoint",
    "prior_val_bits_per_code": "the prior's validation loss at that epoch, in bits per code (lower is better)",
    "prior_val_accuracy": "the prior's validation accuracy at that epoch: the share of codes it ranks first",
    "prior_uniform_bits_per_code": "bits per code of a uniform guess over the codebook (log2 of its size): the "
    "baseline prior_val_bits_per_code is to beat",
    "prior_conditioning": "the prior's conditioning (none, slice_position)",
    # the quality metrics (GenerationQuality)
    "num_train_images": "training slices the memorisation search and the FD reference used",
    "num_test_images": "real test slices the metrics used",
    "num_test_subset_images": "real test slices (evenly spaced, at most num_samples) of the diversity and "
    "memorisation references",
    "fd_feature_space": "the feature space of the Fréchet distances and of precision and recall",
    "fd_generated_vs_test": "Fréchet distance between generated and real test slices (lower is better)",
    "fd_generated_vs_test_ci95": "its 95% percentile-bootstrap interval",
    "fd_train_vs_test": "reference: Fréchet distance between all training and test slices",
    "fd_train_subset_vs_test": "reference: the same for as many training slices as samples (the fair comparison: "
    "the estimate grows as the count shrinks)",
    "fd_reconstructed_test_vs_test": "floor: Fréchet distance between the VQ-VAE's reconstructions of the test "
    "slices and the slices",
    "diversity_ssim_generated": "mean SSIM over pairs of samples (much higher than the test's: the samples vary less)",
    "diversity_ssim_generated_ci95": "its 95% bootstrap interval",
    "diversity_ssim_test": "reference: mean pairwise SSIM among the test subset",
    "diversity_ssim_reconstructed_test": "reference: mean pairwise SSIM among the test subset's reconstructions",
    "memorisation_ssim_mean": "mean over non-blank samples of each one's SSIM to its most similar training slice",
    "memorisation_ssim_mean_ci95": "its 95% bootstrap interval",
    "memorisation_ssim_max": "the highest of those SSIMs: the closest sample to a training slice",
    "memorisation_ssim_test_mean": "reference: the same mean for the test subset (unseen real slices)",
    "memorisation_ssim_reconstructed_test_mean": "reference: the same mean for the test subset's reconstructions, "
    "as blurred as samples can be (samples far above it are suspect copies)",
    "memorisation_candidates": "training slices nearest by pixel distance that SSIM rescored for each sample",
    "blank_samples": "samples with less than 1% of their pixels in the foreground, left out of the memorisation "
    "entries",
    "memorisation_per_sample": "each sample's nearest training slice, its SSIM and whether the sample is blank",
    "precision_recall_k": "the neighbour k defining the k-NN manifolds of precision and recall",
    "precision_generated": "share of samples inside the real test slices' k-NN manifold (do samples look real)",
    "recall_generated": "share of real test slices inside the samples' manifold (do the samples cover the variety)",
    "precision_generated_ci95": "95% bootstrap interval of precision_generated",
    "recall_generated_ci95": "95% bootstrap interval of recall_generated",
    "precision_train_subset": "reference: precision of as many training slices as samples",
    "recall_train_subset": "reference: recall of as many training slices as samples",
    "foreground_fraction_generated": "share of the samples' pixels above 0.05 (brain)",
    "foreground_fraction_test": "the same share for the real test slices",
    "classifier": "the classifier tests' settings: enabled, folds, epochs, seed, the real pools' sizes, the interval "
    "method and the seconds they took",
    **{
        key.format(name=name): text.format(meaning=meaning)
        for entries in TWO_SAMPLE_ENTRIES.values()
        for name, meaning in COMPARISONS.items()
        for key, (_, text) in entries.items()
    },
    "classifier_notes": "why a classifier comparison was not measured (too few images or subjects for the folds)",
}


def generation_metrics_markdown() -> str:
    """The documentation's table of every key of ``generation_metrics.json`` (:data:`GENERATION_METRICS_KEYS`)."""
    lines = ["| key | what it holds |", "| --- | --- |"]
    lines += [f"| `{key}` | {text.replace('|', chr(92) + '|')} |" for key, text in GENERATION_METRICS_KEYS.items()]
    return "\n".join(lines) + "\n"
