"""A realism test that a smooth decoder cannot pass: texture statistics inside the brain, told apart linearly.

The CNN two-sample test (:mod:`.realism`) is measured against a reference of the VQ-VAE's own reconstructions, so
a decoder smoother than real tissue moves that reference with it and its smoothness hides. This test sees nothing
but texture (:func:`texture_features`, whose rotation-invariant local binary patterns, Ojala et al. 2002, hold the
local texture a smooth decoder loses), under the same grouped cross-validation and references.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from skimage.feature import local_binary_pattern
from skimage.filters import sobel

from .realism import cross_validated_separation

INTENSITY_BINS = 32
GRADIENT_BINS = 32
GRADIENT_RANGE = 0.5
"""Sobel magnitudes of ``[0, 1]`` images above this fall into the last bin."""
LBP_SCALES = ((8, 1.0), (16, 2.0))
"""``(points, radius)`` of each local binary pattern; a uniform pattern of P points takes P + 2 values."""
TEXTURE_FEATURES = INTENSITY_BINS + GRADIENT_BINS + sum(points + 2 for points, _ in LBP_SCALES)
"""Features per image."""


def _histogram(values: np.ndarray, bins: int, upper: float) -> np.ndarray:
    counts, _ = np.histogram(np.clip(values, 0.0, upper), bins=bins, range=(0.0, upper))
    return counts / max(counts.sum(), 1)


def texture_features(images: torch.Tensor, foreground_threshold: float = 0.05) -> torch.Tensor:
    """Texture statistics of each image, inside its brain (pixels above ``foreground_threshold``).

    Args:
        images: ``(N, 1, H, W)`` in ``[0, 1]``.
        foreground_threshold: intensity above which a pixel is brain; an image with fewer than 16 such pixels
            (a blank sample) is described over all its pixels.

    Returns:
        ``(N, TEXTURE_FEATURES)`` float32: the normalised histograms of intensity (32 bins), Sobel gradient magnitude
        (32 bins over ``[0, 0.5]``) and uniform LBP codes (P = 8, R = 1 and P = 16, R = 2), each summing to 1.
    """
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 1:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be a tensor of one-channel images (N, 1, H, W), got {shape}.")
    rows = []
    for image in images.detach().float().clamp(0, 1).cpu().numpy()[:, 0]:
        # the 8-bit intensities a PNG slice holds: LBP compares neighbours, and below one grey level a float image's
        # rounding noise, not its texture, would decide the comparisons
        grey = np.round(image * 255.0).astype(np.uint8)
        brain = image > foreground_threshold
        if brain.sum() < 16:
            brain = np.ones_like(brain)
        parts = [
            _histogram(grey[brain] / 255.0, INTENSITY_BINS, 1.0),
            _histogram(sobel(grey / 255.0)[brain], GRADIENT_BINS, GRADIENT_RANGE),
        ]
        for points, radius in LBP_SCALES:
            codes = local_binary_pattern(grey, points, radius, method="uniform")[brain]
            parts.append(_histogram(codes, points + 2, points + 2.0))
        rows.append(np.concatenate(parts))
    return torch.as_tensor(np.stack(rows) if rows else np.zeros((0, TEXTURE_FEATURES)), dtype=torch.float32)


def _logistic_regression_scores(
    train_features: torch.Tensor, train_labels: torch.Tensor, held_out: torch.Tensor, seed: int
) -> torch.Tensor:
    """The held-out fold's decision scores of a standardised L2 logistic regression fit on the training folds."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=5000, random_state=seed))
    model.fit(train_features.numpy(), train_labels.numpy().astype(np.int64))
    return torch.as_tensor(model.decision_function(held_out.numpy()), dtype=torch.float32)


def texture_two_sample_test(
    first: torch.Tensor,
    second: torch.Tensor,
    first_groups: Sequence[Any] | None = None,
    second_groups: Sequence[Any] | None = None,
    folds: int = 5,
    seed: int = 0,
    max_per_side: int | None = None,
    foreground_threshold: float = 0.05,
) -> dict[str, Any]:
    """How well texture statistics alone tell two sets of images apart: the held-out AUC and d' (0.5 and 0:
    indistinguishable) of a logistic regression on :func:`texture_features`, cross-validated as
    :func:`~.realism.classifier_two_sample_test` is.

    Args:
        first: the first set, ``(N, 1, H, W)`` in ``[0, 1]`` (e.g. generated images).
        second: the second set (e.g. real test slices), images of the same size.
        first_groups: the subject of each image of ``first``; None: one per image.
        second_groups: the same for ``second``.
        folds: cross-validation folds (at least 2).
        seed: seed of the subsampling, the folds and the solver.
        max_per_side: the most images used per side (None: as many as the smaller set).
        foreground_threshold: intensity above which a pixel is brain.

    Returns:
        The entries of :func:`~.realism.cross_validated_separation` (``auc``, ``auc_ci95``, ``dprime``, ...),
        ``features`` (their count) and ``seconds``.
    """
    start = time.perf_counter()
    if first.shape[1:] != second.shape[1:]:
        raise ValueError(
            f"first and second must hold images of one size, got {tuple(first.shape)} and {tuple(second.shape)}."
        )
    result = cross_validated_separation(
        texture_features(first, foreground_threshold),
        texture_features(second, foreground_threshold),
        first_groups,
        second_groups,
        _logistic_regression_scores,
        folds,
        seed,
        max_per_side,
    )
    return {**result, "features": TEXTURE_FEATURES, "seconds": time.perf_counter() - start}
