"""SSIM-based measures of generated images: diversity (mean SSIM over pairs), memorisation (each image's most
similar reference, :class:`NearestImageSearch`) and the bootstrap interval of a mean.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import numpy as np
import torch
from monai.metrics import SSIMMetric


def pairwise_ssim(first: torch.Tensor, second: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """SSIM of each image of ``first`` with the same-index image of ``second``, both ``(P, 1, S, S)`` in [0, 1]."""
    if len(first) == 0:
        return torch.zeros(0)
    # the default 11-pixel Gaussian window, shrunk (odd) for images smaller than it
    size = int(first.shape[-1])
    window = max(min(11, size if size % 2 else size - 1), 1)
    metric = SSIMMetric(spatial_dims=2, data_range=1.0, win_size=window, reduction="none")
    scores = [
        metric(first[i : i + batch_size].float(), second[i : i + batch_size].float()).reshape(-1)
        for i in range(0, len(first), batch_size)
    ]
    return torch.cat(scores).cpu()


def mean_pairwise_ssim(
    images: torch.Tensor, max_pairs: int = 2000, seed: int = 0, bootstrap: int = 0
) -> float | None | tuple[float | None, list[float] | None]:
    """Mean SSIM over pairs of distinct images (every pair, or ``max_pairs`` drawn without replacement): lower means
    a more diverse set.

    Args:
        images: ``(N, 1, S, S)`` in [0, 1].
        max_pairs: the most pairs scored.
        seed: seed of the pair draw and of the bootstrap.
        bootstrap: with ``B > 0`` resamples, also return a 95% percentile-bootstrap interval of the mean. The
            images, not the pairs, are resampled (pairs sharing an image are not independent): each resample weighs
            a scored pair by the product of its two images' multiplicities, so no SSIM is recomputed.

    Returns:
        The mean SSIM, or None for fewer than two images; with ``bootstrap`` the tuple ``(mean, [low, high])``.
    """
    count = len(images)
    if count < 2:
        return (None, None) if bootstrap else None
    if count * (count - 1) // 2 <= max_pairs:
        pairs = list(itertools.combinations(range(count), 2))
    else:
        rng = np.random.default_rng(seed)
        picks = set()
        while len(picks) < max_pairs:
            picks.add(tuple(sorted(rng.choice(count, size=2, replace=False).tolist())))
        pairs = sorted(picks)
    first, second = np.asarray(pairs, dtype=np.int64).reshape(-1, 2).T
    scores = pairwise_ssim(images[torch.as_tensor(first)], images[torch.as_tensor(second)])
    mean = float(scores.mean())
    if not bootstrap:
        return mean
    rng = np.random.default_rng(seed)
    values = scores.double().numpy()
    means = []
    for _ in range(int(bootstrap)):
        multiplicity = rng.multinomial(count, np.full(count, 1.0 / count)).astype(np.float64)
        weights = multiplicity[first] * multiplicity[second]
        if weights.sum() > 0:
            means.append(float((weights * values).sum() / weights.sum()))
    if not means:
        return mean, None
    low, high = np.percentile(means, [2.5, 97.5])
    return mean, [float(low), float(high)]


def bootstrap_mean_interval(
    values: Sequence[float] | torch.Tensor, resamples: int = 1000, seed: int = 0
) -> list[float] | None:
    """A 95% percentile-bootstrap interval of the mean of the finite ``values``; None for fewer than 2 of them."""
    array = np.asarray(values, dtype=np.float64)
    array = array[np.isfinite(array)]
    if array.size < 2 or resamples < 2:
        return None
    rng = np.random.default_rng(seed)
    means = array[rng.integers(0, array.size, size=(int(resamples), array.size))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return [float(low), float(high)]


class NearestImageSearch:
    """For a few query images, find the most similar images of a large reference set streamed in batches.

    Pixel distance picks the ``candidates`` nearest reference images of each query (a matrix product per batch);
    SSIM scores only those, as scoring every training image by SSIM would cost hours on a CPU for OASIS.

    Args:
        queries: ``(Q, 1, S, S)`` images in [0, 1].
        candidates: reference images per query rescored by SSIM.
    """

    def __init__(self, queries: torch.Tensor, candidates: int = 16) -> None:
        self.queries = queries.float().cpu()
        self.flat = self.queries.flatten(1)
        self.candidates = max(1, int(candidates))
        self.distances = torch.full((len(queries), 0), float("inf"))
        self.indices = torch.zeros((len(queries), 0), dtype=torch.long)
        self.seen = 0

    def update(self, references: torch.Tensor) -> None:
        """Consider the next batch of reference images ``(B, 1, S, S)``, numbered after those seen before."""
        flat = references.float().cpu().flatten(1)
        distances = torch.cdist(self.flat, flat)
        indices = torch.arange(self.seen, self.seen + len(flat)).expand(len(self.flat), -1)
        self.seen += len(flat)
        all_distances = torch.cat([self.distances, distances], dim=1)
        all_indices = torch.cat([self.indices, indices], dim=1)
        keep = min(self.candidates, all_distances.shape[1])
        self.distances, order = all_distances.topk(keep, dim=1, largest=False)
        self.indices = all_indices.gather(1, order)

    def best(self, fetch: Callable[[list[int]], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Score the candidates by SSIM.

        Args:
            fetch: returns the reference images ``(M, 1, S, S)`` for a list of reference indices.

        Returns:
            ``(ssim, index)``: for each query the highest SSIM to a reference image and that image's index.
        """
        if self.indices.shape[1] == 0:
            return torch.full((len(self.queries),), float("nan")), torch.full((len(self.queries),), -1)
        unique, rows = torch.unique(self.indices.flatten(), return_inverse=True)
        references = fetch(unique.tolist())
        repeated = self.queries.repeat_interleave(self.indices.shape[1], dim=0)
        scores = pairwise_ssim(repeated, references[rows].float()).reshape(self.indices.shape)
        best_score, best_column = scores.max(dim=1)
        return best_score, self.indices.gather(1, best_column[:, None])[:, 0]
