"""Figures of the prior: its learning curves, a grid of generated samples, and samples beside their nearest training
slices."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from monai_vqbrain.engines.distributed import is_main_process
from monai_vqbrain.handlers.training_history import read_history
from monai_vqbrain.utils.io import epoch_axis, pyplot, save_figure, wrap_label


def plot_prior_learning_curves(history_file: str | os.PathLike, path: str | os.PathLike) -> Path | None:
    """Plot the prior's bits per code (train and validation) and validation accuracy per epoch.

    Args:
        history_file: the prior's ``prior_training_history.json`` (one record per epoch).
        path: the PNG to write (replaced atomically).

    Returns:
        The PNG's path, or None when the history holds no epoch yet or this is not rank 0 (nothing is written).
    """
    if not is_main_process():
        return None  # one figure per run: rank 0 draws it
    records = read_history(history_file)  # per-epoch records, each with an integer "epoch"
    if not records:
        return None
    plt = pyplot()
    figure, (bits_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(9, 3.4))
    epochs = [r["epoch"] for r in records]
    for key, label, style in (("train_bits_per_code", "train", "-"), ("val_bits_per_code", "validation", "--")):
        points = [(r["epoch"], r[key]) for r in records if r.get(key) is not None]
        if points:
            bits_axis.plot(*zip(*points, strict=True), style, marker="o", markersize=3, label=label)
    bits_axis.set(xlabel="epoch", ylabel="bits per code", title="prior negative log-likelihood")
    bits_axis.legend()
    accuracy = [(r["epoch"], r["val_accuracy"]) for r in records if r.get("val_accuracy") is not None]
    if accuracy:
        accuracy_axis.plot(*zip(*accuracy, strict=True), marker="o", markersize=3, color="tab:green")
    accuracy_axis.set(xlabel="epoch", ylabel="top-1 accuracy", title="validation next-code accuracy")
    for axis in (bits_axis, accuracy_axis):
        epoch_axis(axis, epochs)
        axis.grid(alpha=0.3)
    figure.tight_layout()
    return save_figure(figure, path)


def plot_nearest_training_slices(
    samples: torch.Tensor,
    nearest: torch.Tensor,
    path: str | os.PathLike,
    sample_names: Sequence[str],
    nearest_names: Sequence[str],
    similarity: Sequence[float],
) -> Path:
    """Each generated sample beside its most similar training slice: memorisation at a glance.

    Args:
        samples: ``(N, 1, S, S)`` generated images in [0, 1].
        nearest: ``(N, 1, S, S)`` the most similar training image of each.
        path: the PNG to write (replaced atomically).
        sample_names: the samples' names.
        nearest_names: the training slices' names.
        similarity: the SSIM of each pair.
    """
    plt = pyplot()
    count = len(samples)
    figure, axes = plt.subplots(2, count, figsize=(1.9 * count, 5.0), squeeze=False, layout="constrained")
    for column in range(count):
        for row, image in enumerate((samples[column], nearest[column])):
            axes[row, column].imshow(image[0].float().cpu().numpy(), cmap="gray", vmin=0.0, vmax=1.0)
            axes[row, column].set(xticks=[], yticks=[])
        # each name beside its own image: the sample's above it, the training slice's below it (a title of the lower
        # row would sit under the sample above, as if it named that one)
        axes[0, column].set_title(wrap_label(sample_names[column], 18), fontsize=7)
        axes[1, column].set_xlabel(
            f"{wrap_label(nearest_names[column], 18)}\nSSIM {similarity[column]:.3f}", fontsize=7
        )
    axes[0, 0].set_ylabel("generated", fontsize=8)
    axes[1, 0].set_ylabel("nearest training slice", fontsize=8)
    figure.suptitle(
        "Generated samples and their most similar training slices (SSIM near 1 would mean a copy)", fontsize=9
    )
    return save_figure(figure, path)


def plot_sample_grid(
    images: torch.Tensor,
    path: str | os.PathLike,
    titles: Sequence[str] | None = None,
    columns: int | None = None,
    heading: str | None = None,
) -> None:
    """Save a grid figure of images ``(N, 1, S, S)`` in [0, 1], each with an optional title, under ``heading``."""
    plt = pyplot()
    count = len(images)
    columns = columns or max(1, math.ceil(math.sqrt(count)))
    rows = max(1, math.ceil(count / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(1.8 * columns, 1.9 * rows), squeeze=False)
    for index, axis in enumerate(axes.flat):
        axis.set(xticks=[], yticks=[])
        if index >= count:
            axis.axis("off")
            continue
        axis.imshow(images[index, 0].cpu().numpy(), cmap="gray", vmin=0.0, vmax=1.0)
        if titles is not None:
            axis.set_title(titles[index], fontsize=7)
    if heading:
        # a 1.8-inch column holds about 26 characters at 9 points: wrap only where the figure is really narrower
        figure.suptitle(wrap_label(heading, max(40, 26 * columns)), fontsize=9)
    figure.tight_layout()
    save_figure(figure, path)
