"""k-NN precision and recall of generated images' features against real ones, with bootstrap intervals."""

from __future__ import annotations

from typing import Any

import torch

from .ssim import bootstrap_mean_interval


def _kth_neighbour_radii(features: torch.Tensor, k: int) -> torch.Tensor:
    """The distance of each feature vector to its ``k``-th nearest other vector of the same set."""
    distances = torch.cdist(features.double(), features.double())
    distances.fill_diagonal_(float("inf"))
    k = min(int(k), len(features) - 1)
    return distances.kthvalue(k, dim=1).values


def knn_precision_recall(
    real: torch.Tensor, generated: torch.Tensor, k: int = 3, bootstrap: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) of generated against real feature vectors.

    Each set's manifold is the union of balls around its vectors reaching their ``k``-th nearest neighbour in the set.
    Precision is the share of generated vectors inside the real manifold (do samples look real), recall the share of
    real vectors inside the generated one (do they cover the real variety): shares that keep moving while a
    classifier separates the sets perfectly. The intervals resample the measured set, the manifolds held fixed.

    Args:
        real: ``(N, F)`` features of real images.
        generated: ``(M, F)`` features of generated images.
        k: the neighbour defining each ball's radius.
        bootstrap: resamples of the percentile-bootstrap 95% intervals (0: none).
        seed: seed of the bootstrap.

    Returns:
        ``precision``, ``recall``, ``precision_ci95``, ``recall_ci95`` (None without bootstrap) and ``k``.

    Raises:
        ValueError: for fewer than two vectors in a set, or sets of different feature sizes.
    """
    if real.ndim != 2 or generated.ndim != 2 or real.shape[1] != generated.shape[1]:
        raise ValueError(
            f"expected two (N, F) feature sets of one F, got {tuple(real.shape)} and {tuple(generated.shape)}."
        )
    if len(real) < 2 or len(generated) < 2:
        raise ValueError(f"precision and recall need at least 2 vectors a set, got {len(real)} and {len(generated)}.")
    real, generated = real.double(), generated.double()
    cross = torch.cdist(generated, real)  # (M, N)
    in_real = (cross <= _kth_neighbour_radii(real, k)[None, :]).any(dim=1).double().numpy()
    in_generated = (cross <= _kth_neighbour_radii(generated, k)[:, None]).any(dim=0).double().numpy()
    return {
        "precision": float(in_real.mean()),
        "recall": float(in_generated.mean()),
        "precision_ci95": bootstrap_mean_interval(in_real, bootstrap, seed) if bootstrap else None,
        "recall_ci95": bootstrap_mean_interval(in_generated, bootstrap, seed) if bootstrap else None,
        "k": int(min(k, len(real) - 1, len(generated) - 1)),
    }
