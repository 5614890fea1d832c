"""Figures of the prior: its learning curves, and generated samples beside their nearest training slices."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch

from monai_vqbrain.engines.distributed import is_main_process
from monai_vqbrain.handlers.training_history import read_history
from monai_vqbrain.utils.io import pyplot, save_figure

__all__ = ["plot_nearest_training_slices", "plot_prior_learning_curves"]


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
    records = [r for r in read_history(history_file) if isinstance(r, dict) and "epoch" in r]
    if not records:
        return None
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    figure, (bits_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(9, 3.4))
    epochs = [int(r["epoch"]) for r in records]
    for key, label, style in (("train_bits_per_code", "train", "-"), ("val_bits_per_code", "validation", "--")):
        points = [(e, r[key]) for e, r in zip(epochs, records, strict=True) if r.get(key) is not None]
        if points:
            bits_axis.plot(*zip(*points, strict=True), style, marker="o", markersize=3, label=label)
    bits_axis.set_xlabel("epoch")
    bits_axis.set_ylabel("bits per code")
    bits_axis.set_title("prior negative log-likelihood")
    bits_axis.legend()
    accuracy = [(e, r["val_accuracy"]) for e, r in zip(epochs, records, strict=True) if r.get("val_accuracy") is not None]
    if accuracy:
        accuracy_axis.plot(*zip(*accuracy, strict=True), marker="o", markersize=3, color="tab:green")
    accuracy_axis.set_xlabel("epoch")
    accuracy_axis.set_ylabel("top-1 accuracy")
    accuracy_axis.set_title("validation next-code accuracy")
    for axis in (bits_axis, accuracy_axis):
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
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
    figure, axes = plt.subplots(2, count, figsize=(1.9 * count, 4.3), squeeze=False)
    for column in range(count):
        for row, (image, title) in enumerate(
            (
                (samples[column], f"{sample_names[column]}"),
                (nearest[column], f"{nearest_names[column]}\nSSIM {similarity[column]:.3f}"),
            )
        ):
            axis = axes[row, column]
            axis.imshow(image[0].float().cpu().numpy(), cmap="gray", vmin=0.0, vmax=1.0)
            axis.set_xticks([])
            axis.set_yticks([])
            axis.set_title(title, fontsize=6)
    axes[0, 0].set_ylabel("generated", fontsize=8)
    axes[1, 0].set_ylabel("nearest training slice", fontsize=8)
    figure.suptitle("Generated samples and their most similar training slices (SSIM near 1 would mean a copy)", fontsize=9)
    figure.tight_layout()
    return save_figure(figure, path)
