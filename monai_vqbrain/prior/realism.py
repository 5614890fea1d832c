"""A realism measure that can fail: a classifier two-sample test between two sets of images
(:func:`classifier_two_sample_test`). Unlike a distance between feature statistics, its held-out ROC AUC has a fixed
scale and a fixed "same" value (0.5), and it catches what a modest detector of anatomy, shape and texture can see
(blur, noise, wrong shapes, misplaced structures).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import numpy as np
import torch
from monai.metrics import compute_roc_auc
from monai.networks.blocks import Convolution
from scipy import stats

from ..data.volume_files import subject_id

_CASE = re.compile(r"(case_\d+)_slice_\d+", re.IGNORECASE)
_VOLUME = re.compile(r"^(.*)#slice\d+$")

CI95_METHOD = "Student t over the fold AUCs: mean +- t(0.975, folds - 1) * std / sqrt(folds), clipped to [0, 1]"
"""How :func:`classifier_two_sample_test` computes ``auc_ci95``."""


def slice_groups(names: Sequence[str]) -> list[str]:
    """The subject of each slice, parsed from its name, for grouped cross-validation.

    ``case_012`` for OASIS ``case_012_slice_3.nii.png`` (any folder before it is ignored); for the NIfTI readers'
    ``<volume>#slice<k>`` the volume's subject (:func:`~monai_vqbrain.data.volume_files.subject_id`: two sessions of
    one OASIS subject are one group); a name carrying neither is its own group (``image_<i>``), so an unknown layout
    never puts two images in one group by mistake.
    """
    groups = []
    for index, name in enumerate(names):
        text = str(name)
        case, volume = _CASE.search(text), _VOLUME.match(text)
        if case:
            groups.append(case.group(1).lower())
        elif volume:
            groups.append(subject_id(volume.group(1)))
        else:
            groups.append(f"image_{index}")
    return groups


def assign_folds(
    sides: Sequence[int] | np.ndarray, groups: Sequence[Any] | None = None, folds: int = 5, seed: int = 0
) -> np.ndarray:
    """Assign images to cross-validation folds, stratified by side and grouped by subject.

    Every group (one subject's images, on either side) lands in one fold: a classifier tested on a subject it trained
    on would make the sets look more different (or, for an image and its own reconstruction on opposite sides, less)
    than they are. Groups are taken largest first (ties in a seeded random order), each to the fold holding the least
    of its side(s) so far, which balances the sides over the folds like scikit-learn's ``StratifiedGroupKFold``.

    Args:
        sides: the side (0 or 1) of each image.
        groups: the group of each image; equal values are one subject, on either side. None: one group per image.
        folds: the number of folds (at least 2).
        seed: seed of the tie-breaking order.

    Returns:
        The fold (``0 .. folds - 1``) of each image.

    Raises:
        ValueError: for fewer than 2 folds, a side other than 0 and 1, groups of another length than the images, or
            a side with fewer groups than folds (a fold would hold none of its images).
    """
    side = np.asarray(sides, dtype=np.int64).reshape(-1)
    if isinstance(folds, bool) or int(folds) != folds or folds < 2:
        raise ValueError(f"folds must be an integer >= 2, got {folds!r}.")
    if side.size and not np.isin(side, (0, 1)).all():
        raise ValueError(f"sides must be 0 or 1, got {sorted(set(side.tolist()))}.")
    labels = [("image", i) for i in range(len(side))] if groups is None else [("group", g) for g in groups]
    if len(labels) != len(side):
        raise ValueError(f"expected one group per image ({len(side)}), got {len(labels)}.")
    keys = sorted(set(labels), key=repr)
    key_index = {key: i for i, key in enumerate(keys)}
    members = np.asarray([key_index[label] for label in labels], dtype=np.int64)
    # images of each group on each side
    counts = np.zeros((len(keys), 2), dtype=np.int64)
    np.add.at(counts, (members, side), 1)
    for s in (0, 1):
        present = int((counts[:, s] > 0).sum())
        if present < folds:
            raise ValueError(
                f"side {s} has images of {present} subject(s), fewer than the {folds} folds: every fold needs "
                f"held-out images of both sides; measure on images of at least {folds} subjects a side (or use "
                "fewer folds)."
            )
    totals = counts.sum(axis=0).astype(np.float64)
    order = np.random.default_rng(seed).permutation(len(keys))
    order = order[np.argsort(-counts[order].sum(axis=1), kind="stable")]
    load = np.zeros((folds, 2), dtype=np.float64)
    group_fold = np.zeros(len(keys), dtype=np.int64)
    for key in order:
        share = counts[key] / totals
        # the fold holding the least of this group's sides so far (first such fold on ties)
        fold = int(np.argmin((load * (share > 0)).sum(axis=1)))
        group_fold[key] = fold
        load[fold] += share
    return group_fold[members]


class RealismClassifier(torch.nn.Module):
    """The detector: the image at half resolution, four 3x3 convolution blocks each followed by 2x2 max pooling,
    global average pooling and a logit.

    Small (about 60 k weights) and briefly trained, so that it notices what a person would (wrong shapes and
    layouts, missing folds and ventricles, blur and texture) rather than memorising subjects. Stride-1
    convolutions with max pooling see the arrangement of structures that decide realism: on the demo data, a
    first design of strided convolutions over a 4x4 space-to-depth view scored 0.70 for prior samples that a person
    rejects at a glance (no folds, no ventricles), against 0.97 for this one, while two real sets of other subjects
    stay at 0.5 for both. The 2x average pooling first halves the cost; both sides go through it alike.

    Args:
        channels: output channels of each convolution block.
        dropout: dropout before the final linear layer.
    """

    def __init__(self, channels: Sequence[int] = (16, 32, 64, 64), dropout: float = 0.25) -> None:
        super().__init__()
        # ceil_mode: images down to a few pixels (the tests' 32x32) keep at least one pixel through every pooling
        layers: list[torch.nn.Module] = [torch.nn.AvgPool2d(2, ceil_mode=True)]
        previous = 1
        act = ("leakyrelu", {"negative_slope": 0.2})
        for out in channels:
            # batch norm brings faint features (noise, fine texture) to unit scale, so a few epochs learn them; it
            # keeps intensity differences between images (instance norm would remove them, and they are a tell)
            layers.append(Convolution(2, previous, int(out), kernel_size=3, act=act, norm="batch"))
            layers.append(torch.nn.MaxPool2d(2, ceil_mode=True))
            previous = int(out)
        self.features = torch.nn.Sequential(*layers)
        self.head = torch.nn.Sequential(torch.nn.Dropout(dropout), torch.nn.Linear(previous, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits ``(B,)`` that an image belongs to the second set, for images ``(B, 1, S, S)``."""
        return self.head(self.features(images).mean(dim=(2, 3))).reshape(-1)


def _check_images(images: torch.Tensor, name: str) -> torch.Tensor:
    one_channel = isinstance(images, torch.Tensor) and images.ndim == 4 and images.shape[1] == 1
    if not one_channel or images.shape[2] != images.shape[3]:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"{name} must be a tensor of square one-channel images (N, 1, S, S), got {shape}.")
    images = images.detach().float().cpu()
    if not torch.isfinite(images).all():
        raise ValueError(f"{name} holds non-finite values.")
    return images


def held_out_separation(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """How far apart a classifier's held-out scores of the two sets lie: the detectability index d' of signal
    detection theory, ``(mean of side 1 - mean of side 0) / sqrt((var of side 0 + var of side 1) / 2)``.

    The graded companion of the AUC, which sits at 1.0 once every held-out pair is ordered however easy the task:
    d' keeps growing with the gap between the score distributions relative to their spread, is 0 when the sets
    cannot be told apart, and does not depend on the scale of the scores (the classifier's calibration after a few
    epochs dominates the held-out log-loss instead). For normal scores of equal spread AUC = Phi(d' / sqrt(2)): d'
    1.0 is an AUC of 0.76, 2.0 of 0.92, 3.0 of 0.98.

    Args:
        logits: the held-out scores ``(N,)``.
        labels: their sides ``(N,)``, 0 or 1; both sides need at least two images.
    """
    scores, sides = logits.double().reshape(-1), labels.reshape(-1).bool()
    first, second = scores[~sides], scores[sides]
    if len(first) < 2 or len(second) < 2:
        raise ValueError(f"d' needs at least 2 held-out images a side, got {len(first)} and {len(second)}.")
    spread = math.sqrt((float(first.var()) + float(second.var())) / 2.0)
    gap = float(second.mean() - first.mean())
    return gap / spread if spread > 0 else math.copysign(math.inf, gap) if gap else 0.0


def _fold_interval(values: Sequence[float]) -> tuple[float, float, list[float]]:
    """Mean, sample standard deviation and Student t 95% interval (:data:`CI95_METHOD`, unclipped) of fold values."""
    array = np.asarray(values, dtype=np.float64)
    mean, std = float(array.mean()), float(array.std(ddof=1))
    half = float(stats.t.ppf(0.975, len(array) - 1)) * std / math.sqrt(len(array))
    return mean, std, [mean - half, mean + half]


def _balanced(count: int, keep: int, rng: np.random.Generator) -> np.ndarray:
    """``keep`` of ``range(count)`` drawn without replacement, in ascending order (all when ``keep >= count``)."""
    if keep >= count:
        return np.arange(count)
    return np.sort(rng.choice(count, size=keep, replace=False))


def _train_fold(
    images: torch.Tensor,
    labels: torch.Tensor,
    held_out: torch.Tensor,
    seed: int,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    device: str | torch.device,
) -> torch.Tensor:
    """Train a fresh classifier on ``images``/``labels``; return its scores (logits) of ``held_out``."""
    epochs, batch_size, learning_rate, device = int(epochs), int(batch_size), float(learning_rate), torch.device(device)
    generator = torch.Generator().manual_seed(seed)
    # callers measure under no_grad (GenerationQuality) or inference mode; training needs autograd, and tensors
    # made in inference mode cannot be saved for backward, so the inputs are cloned outside it
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.inference_mode(False), torch.enable_grad(), torch.random.fork_rng(devices=cuda):
        images, labels, held_out = images.clone(), labels.clone(), held_out.clone()
        # seeded initialisation and dropout, without touching the caller's RNG
        torch.manual_seed(seed)
        network = RealismClassifier().to(device)
        optimiser = torch.optim.Adam(network.parameters(), lr=learning_rate, weight_decay=1e-4)
        loss_function = torch.nn.BCEWithLogitsLoss()
        network.train()
        for _ in range(epochs):
            order = torch.randperm(len(images), generator=generator)
            for start in range(0, len(order), batch_size):
                batch = order[start : start + batch_size]
                if len(batch) < 2:  # batch norm needs two values per channel; the image is seen in other epochs
                    continue
                inputs = images[batch]
                # left-right flips of half the images: both sides are flipped alike, so this adds no tell, and a
                # brain mirrored is still a plausible brain
                flip = torch.rand(len(batch), generator=generator) < 0.5
                inputs = torch.where(flip[:, None, None, None], inputs.flip(-1), inputs).to(device)
                optimiser.zero_grad(set_to_none=True)
                loss = loss_function(network(inputs), labels[batch].to(device))
                loss.backward()
                optimiser.step()
        network.eval()
        with torch.no_grad():
            return torch.cat([network(held_out[i : i + 256].to(device)).cpu() for i in range(0, len(held_out), 256)])


def classifier_two_sample_test(
    first: torch.Tensor,
    second: torch.Tensor,
    first_groups: Sequence[Any] | None = None,
    second_groups: Sequence[Any] | None = None,
    folds: int = 5,
    epochs: int = 10,
    seed: int = 0,
    device: str | torch.device = "cpu",
    batch_size: int = 32,
    learning_rate: float = 2e-3,
    max_per_side: int | None = None,
) -> dict[str, Any]:
    """How well a small CNN tells two sets of images apart: its mean held-out ROC AUC over cross-validation folds.

    In each fold of :func:`cross_validated_separation` a fresh :class:`RealismClassifier` is trained for ``epochs``
    epochs (Adam, fp32, random left-right flips); the held-out ROC AUC (:func:`~monai.metrics.compute_roc_auc`) is
    the probability that an image of ``second`` outscores one of ``first`` (a little below 0.5 is chance, well below
    a leak, e.g. an image and its own reconstruction on opposite sides of a fold). It only means something beside
    references measured the same way (image count, resolution, settings): e.g. real training vs real test slices of
    disjoint subjects, and a decoder's reconstructions vs real slices (the ceiling through that decoder).

    Args:
        first: the first set, ``(N, 1, S, S)`` (e.g. generated images), in the intensity range of ``second``.
        second: the second set, ``(M, 1, S, S)`` (e.g. real test slices).
        first_groups: the subject of each image of ``first`` (see :func:`slice_groups`); None: one per image.
        second_groups: the same for ``second``. Equal values on both sides are the same subject.
        folds: cross-validation folds (at least 2); each side needs at least as many subjects as folds.
        epochs: training epochs per fold.
        seed: seed of the subsampling, the folds, the initialisation and the batches: the same seed gives the
            same result on the same device.
        device: where to train the classifiers.
        batch_size: images per training step.
        learning_rate: Adam's learning rate.
        max_per_side: the most images used per side (None: as many as the smaller set).

    Returns:
        The entries of :func:`cross_validated_separation`, ``epochs`` and ``seconds``.

    Raises:
        ValueError: for images that are not ``(N, 1, S, S)`` of one size, non-finite values, bad ``folds`` or
            ``epochs``, groups of the wrong length, or a side with fewer images (subjects) than folds.
    """
    start = time.perf_counter()
    first, second = _check_images(first, "first"), _check_images(second, "second")
    if first.shape[2:] != second.shape[2:]:
        raise ValueError(
            f"first and second must hold images of one size, got {tuple(first.shape)} and {tuple(second.shape)}."
        )
    if isinstance(epochs, bool) or int(epochs) != epochs or epochs < 1:
        raise ValueError(f"epochs must be an integer >= 1, got {epochs!r}.")
    score_fold = partial(_train_fold, epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, device=device)
    result = cross_validated_separation(
        first, second, first_groups, second_groups, score_fold, folds, seed, max_per_side
    )
    return {**result, "epochs": int(epochs), "seconds": time.perf_counter() - start}


def cross_validated_separation(
    first: torch.Tensor,
    second: torch.Tensor,
    first_groups: Sequence[Any] | None,
    second_groups: Sequence[Any] | None,
    score_fold: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor],
    folds: int = 5,
    seed: int = 0,
    max_per_side: int | None = None,
) -> dict[str, Any]:
    """The cross-validation of a two-sample test, whatever the classifier: balanced sides, grouped folds, AUC and d'.

    The larger set is subsampled (seeded) to the smaller's size (at most ``max_per_side``), so chance is exactly 0.5;
    the items are split into folds stratified per side and grouped by subject (:func:`assign_folds`), and for each
    fold ``score_fold`` trains a fresh classifier on the other folds and scores the held-out one.

    Args:
        first: the first set, one item per row (images, or feature vectors).
        second: the second set, items of the same kind.
        first_groups: the subject of each item of ``first``; None: one per item.
        second_groups: the same for ``second``.
        score_fold: ``(train items, train labels (float, 1 = second), held-out items, seed) -> held-out scores``.
        folds: cross-validation folds (at least 2).
        seed: seed of the subsampling and the folds (``seed * 1000 + fold`` is passed to ``score_fold``).
        max_per_side: the most items used per side (None: as many as the smaller set).

    Returns:
        ``auc`` (the mean over folds) with ``auc_std`` (sample standard deviation), ``auc_folds`` and ``auc_ci95``
        (:data:`CI95_METHOD`); the same for the held-out separation d' (:func:`held_out_separation`) as ``dprime``,
        ``dprime_std``, ``dprime_folds`` and ``dprime_ci95`` (unclipped); ``ci95_method``, ``num_first`` and
        ``num_second`` (items used per side, equal), ``folds`` and ``grouped`` (whether any groups were given).

    Raises:
        ValueError: for bad ``folds``, groups of the wrong length, or a side with fewer items (subjects) than folds.
    """
    if isinstance(folds, bool) or int(folds) != folds or folds < 2:
        raise ValueError(f"folds must be an integer >= 2, got {folds!r}.")
    for groups, images, name in ((first_groups, first, "first_groups"), (second_groups, second, "second_groups")):
        if groups is not None and len(groups) != len(images):
            raise ValueError(f"{name} must have one entry per image ({len(images)}), got {len(groups)}.")
    keep = min(len(first), len(second), *(() if max_per_side is None else (int(max_per_side),)))
    if keep < folds:
        raise ValueError(
            f"too few images for {folds}-fold cross-validation: {len(first)} and {len(second)} images (using "
            f"{keep} per side); each side needs at least {folds}."
        )
    rng = np.random.default_rng(seed)
    pick_first, pick_second = _balanced(len(first), keep, rng), _balanced(len(second), keep, rng)
    images = torch.cat([first[pick_first], second[pick_second]])
    sides = np.concatenate([np.zeros(keep, dtype=np.int64), np.ones(keep, dtype=np.int64)])
    grouped = first_groups is not None or second_groups is not None
    groups = None
    if grouped:
        # images without groups are their own subjects; the tag keeps them apart from any given group
        first_labels = [("given", first_groups[i]) if first_groups is not None else ("first", i) for i in pick_first]
        second_labels = [
            ("given", second_groups[i]) if second_groups is not None else ("second", i) for i in pick_second
        ]
        groups = first_labels + second_labels
    fold_of = assign_folds(sides, groups, folds=int(folds), seed=seed)

    labels = torch.as_tensor(sides, dtype=torch.float32)
    aucs, separations = [], []
    for fold in range(int(folds)):
        held = torch.as_tensor(fold_of == fold)
        scores = score_fold(images[~held], labels[~held], images[held], seed * 1000 + fold)
        aucs.append(float(compute_roc_auc(scores, labels[held])))
        separations.append(held_out_separation(scores, labels[held]))
    mean, std, interval = _fold_interval(aucs)
    separation, separation_std, separation_interval = _fold_interval(separations)
    return {
        "auc": mean,
        "auc_std": std,
        "auc_folds": aucs,
        "auc_ci95": [max(0.0, interval[0]), min(1.0, interval[1])],
        "dprime": separation,
        "dprime_std": separation_std,
        "dprime_folds": separations,
        "dprime_ci95": separation_interval,
        "ci95_method": CI95_METHOD,
        "num_first": int(keep),
        "num_second": int(keep),
        "folds": int(folds),
        "grouped": grouped,
    }
