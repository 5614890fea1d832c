"""The evaluation report: per-image SSIM/PSNR, summary metrics, and figures of reconstructions and loss curves."""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from pathlib import Path

import numpy as np
from ignite.engine import Engine, Events
from monai.metrics import PSNRMetric, SSIMMetric
from monai.utils.enums import CommonKeys as Keys

from ..engines.distributed import is_main_process
from ..utils.io import atomic_write_text, epoch_axis, pyplot, save_figure, wrap_label
from .training_history import read_history

logger = logging.getLogger(__name__)


def score_cells(ssim: float, psnr: float) -> tuple[str, str, str]:
    """The ``ssim``, ``psnr`` and ``error`` cells of one image's row in ``per_image_metrics.csv``.

    A NaN or infinite score is not a number a reader can compare (an infinite PSNR reads as a perfect one): its
    cell is left empty and the ``error`` cell says why.
    """
    problems = []
    ssim_cell = psnr_cell = ""
    if math.isfinite(ssim):
        ssim_cell = f"{ssim:.4f}"
    else:
        problems.append(f"ssim is {ssim} (the reconstruction is not finite)")
    if math.isfinite(psnr):
        psnr_cell = f"{psnr:.4f}"
    else:
        problems.append("psnr is infinite (the reconstruction equals the image)" if psnr > 0 else f"psnr is {psnr}")
    return ssim_cell, psnr_cell, "; ".join(problems)


def summarize_scores(ssim: np.ndarray, psnr: np.ndarray) -> dict[str, float]:
    """Summary statistics of per-image SSIM and PSNR."""
    finite_psnr = psnr[np.isfinite(psnr)]
    return {
        "ssim_mean": float(np.mean(ssim)),
        "ssim_std": float(np.std(ssim)),
        "ssim_min": float(np.min(ssim)),
        "ssim_median": float(np.median(ssim)),
        "ssim_max": float(np.max(ssim)),
        "fraction_ssim_at_least_0.95": float(np.mean(ssim >= 0.95)),
        "psnr_mean": float(np.mean(finite_psnr)) if finite_psnr.size else float("inf"),
        "psnr_std": float(np.std(finite_psnr)) if finite_psnr.size else 0.0,
    }


Example = tuple[np.ndarray, np.ndarray, str, float]
"""One figure example: (original, reconstruction, name, SSIM)."""


def spread_examples(candidates: list[Example], count: int) -> list[Example]:
    """Pick ``count`` examples from best to worst SSIM, evenly spaced in SSIM rank, the best and the worst included.

    Args:
        candidates: the examples to choose from.
        count: how many to pick; all candidates when there are fewer.
    """
    ranked = sorted(candidates, key=lambda example: -example[3] if math.isfinite(example[3]) else math.inf)
    if count >= len(ranked):
        return ranked
    if count <= 0:
        return []
    positions = np.linspace(0, len(ranked) - 1, num=count).round().astype(int)
    return [ranked[i] for i in positions]


def report_title(mean_ssim: float, count: int, checkpoint: str | os.PathLike | None) -> str:
    """The title of ``reconstructions.png``: the checkpoint (its folder and name: ``models/model.pt``; the full path
    is in ``metrics.json``), the mean SSIM and what the columns show."""
    path = Path(checkpoint) if checkpoint else None
    source = f"{Path(path.parent.name, path.name).as_posix()}: " if path is not None else ""
    return f"{source}mean SSIM {mean_ssim:.3f} over {count} images; examples from best to worst SSIM"


def plot_reconstructions(examples: list[Example], title: str, path: Path) -> None:
    """Save a figure of each original above its reconstruction and their absolute difference, under ``title``.

    Args:
        examples: (original, reconstruction, name, SSIM) per column, e.g. from :func:`spread_examples`.
        title: the figure title, e.g. from :func:`report_title`.
        path: the PNG to write, atomically.
    """
    count = len(examples)
    figure, axes = pyplot().subplots(3, count, figsize=(2.2 * count, 7.4), squeeze=False, layout="constrained")
    # one error scale for all columns, so that a darker map is a better reconstruction
    error_max = max(max(float(np.abs(o - r).max()) for o, r, _, _ in examples), 1e-6)
    error_image = None
    for column, (original, reconstruction, name, ssim) in enumerate(examples):
        # the data pipeline keeps images in viewing orientation (rows x columns)
        axes[0, column].imshow(original, cmap="gray", vmin=0.0, vmax=1.0)
        axes[1, column].imshow(reconstruction, cmap="gray", vmin=0.0, vmax=1.0)
        error_image = axes[2, column].imshow(np.abs(original - reconstruction), cmap="magma", vmin=0.0, vmax=error_max)
        for axis in axes[:, column]:
            axis.set(xticks=[], yticks=[])
        # wrapped between the parts of the name, never inside one: a long file name gets more lines
        axes[0, column].set_title(wrap_label(name, 22), fontsize=7)
        axes[1, column].set_title(f"SSIM {ssim:.3f}", fontsize=8)
    for row, label in enumerate(("original", "reconstruction", "|error|")):
        axes[row, 0].set_ylabel(label)
    figure.colorbar(error_image, ax=axes[2, :].tolist(), shrink=0.8, label="absolute error")
    figure.suptitle(wrap_label(title, max(40, int(16 * count))), fontsize=9)
    save_figure(figure, path)


def plot_loss_curves(history: list[dict], path: Path) -> bool:
    """Save the per-epoch training losses (total, reconstruction, VQ) and validation SSIM; False if no history."""
    records = [r for r in history if "train_loss" in r]
    if not records:
        return False
    epochs = [r["epoch"] for r in records]
    validated = [r for r in records if "val_ssim" in r]
    figure, axes = pyplot().subplots(1, 2 if validated else 1, figsize=(11 if validated else 6, 4), squeeze=False)
    loss_axis = axes[0, 0]
    # the total is nearly the reconstruction term: draw it dashed and on top, so neither hides the other
    styles = (
        ("train_loss", "total", {"linestyle": "--", "linewidth": 2.0, "zorder": 3}),
        ("train_reconstruction", "reconstruction", {}),
        ("train_vq", "VQ", {}),
    )
    for key, label, style in styles:
        loss_axis.plot(epochs, [r.get(key, np.nan) for r in records], marker=".", label=label, **style)
    loss_axis.set(yscale="log", ylabel="training loss")
    loss_axis.legend()
    if validated:
        axes[0, 1].plot([r["epoch"] for r in validated], [r["val_ssim"] for r in validated], marker=".", color="C3")
        axes[0, 1].set_ylabel("validation SSIM")
    for axis in axes.flat:
        axis.set_xlabel("epoch")
        axis.grid(alpha=0.3)
        epoch_axis(axis, epochs)  # epochs are whole numbers
    figure.suptitle(f"VQ-VAE training: {len(records)} epoch(s)", fontsize=10)
    figure.tight_layout()
    save_figure(figure, path)
    return True


class ReconstructionReportHandler:
    """Score every reconstruction of an evaluator and write the report into ``output_dir`` after its epoch.

    Outputs: ``metrics.json`` (``ssim_mean``, ``ssim_std``, ``ssim_min``, ``psnr_mean``, ``n``, ``image_size`` and
    more), ``per_image_metrics.csv`` (name, SSIM, PSNR and error of every image; a non-finite score is an empty cell
    with the reason in ``error``), ``reconstructions.png`` (originals above their reconstructions and absolute error
    maps, titled with the checkpoint and the mean SSIM) and ``loss_curves.png`` (per-epoch training losses from
    ``history_file``). SSIM is MONAI's ``SSIMMetric`` (Gaussian window 11, sigma 1.5) and PSNR MONAI's
    ``PSNRMetric``, both with ``data_range`` 1 on images scaled to ``[0, 1]``.

    Args:
        output_dir: folder for the report; created if needed.
        image_size: the evaluated image size, recorded in ``metrics.json``.
        history_file: the training history written by ``TrainingHistoryHandler``; None skips the loss curves.
        num_examples: how many images the reconstruction figure shows (0: no figure), spread from the best to the
            worst SSIM (chosen among the images of ``num_examples`` evenly spaced batches and the best and worst image).
        name_key: key of the image names in the batch.
        extra_metadata: more entries for ``metrics.json`` (e.g. the checkpoint and dataset used).
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        image_size: int,
        history_file: str | os.PathLike | None = None,
        num_examples: int = 8,
        name_key: str = "name",
        extra_metadata: dict | None = None,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.image_size = image_size
        self.history_file = history_file
        self.num_examples = num_examples
        self.name_key = name_key
        self.extra_metadata = dict(extra_metadata or {})
        self.ssim_metric = SSIMMetric(spatial_dims=2, data_range=1.0, reduction="none")
        self.psnr_metric = PSNRMetric(max_val=1.0, reduction="none")
        self._reset()

    def _reset(self, engine: Engine | None = None) -> None:
        self.names: list[str] = []
        self.ssim: list[float] = []
        self.psnr: list[float] = []
        # figure candidates: every image of a few evenly spaced batches, plus the best and the worst seen so far
        self.examples: list[Example] = []
        self.extremes: dict[str, Example] = {}

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._score)
        # at the end of the (single) evaluation epoch, so that handlers logging epoch metrics (MLflow) see them
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._write)

    def _score(self, engine: Engine) -> None:
        predictions = engine.state.output[Keys.PRED].float()
        targets = engine.state.output[Keys.LABEL].float()
        batch_ssim = self.ssim_metric(predictions, targets).reshape(-1).cpu().numpy()
        batch_psnr = self.psnr_metric(predictions, targets).reshape(-1).cpu().numpy()
        # the metrics buffer every batch; the scores are kept here, so drop their copies
        self.ssim_metric.reset()
        self.psnr_metric.reset()
        batch = engine.state.batch
        names = batch.get(self.name_key) if isinstance(batch, dict) else None
        if names is None:
            names = [f"image_{len(self.names) + i}" for i in range(len(batch_ssim))]
        self.names.extend(str(n) for n in names)
        self.ssim.extend(batch_ssim.tolist())
        self.psnr.extend(batch_psnr.tolist())
        local_iteration = (engine.state.iteration - 1) % engine.state.epoch_length
        shown_iterations = np.linspace(0, engine.state.epoch_length - 1, num=self.num_examples).round().astype(int)
        batch_names = self.names[-len(batch_ssim) :]

        def example(i: int) -> Example:
            return targets[i, 0].cpu().numpy(), predictions[i, 0].cpu().numpy(), batch_names[i], float(batch_ssim[i])

        if self.num_examples > 0 and local_iteration in shown_iterations:
            self.examples.extend(example(i) for i in range(len(batch_ssim)))
        finite = np.flatnonzero(np.isfinite(batch_ssim))
        if self.num_examples > 0 and finite.size:
            best, worst = finite[np.argmax(batch_ssim[finite])], finite[np.argmin(batch_ssim[finite])]
            if "best" not in self.extremes or batch_ssim[best] > self.extremes["best"][3]:
                self.extremes["best"] = example(best)
            if "worst" not in self.extremes or batch_ssim[worst] < self.extremes["worst"][3]:
                self.extremes["worst"] = example(worst)

    def _write(self, engine: Engine) -> None:
        if not is_main_process() or not self.ssim:
            return
        summary = summarize_scores(np.asarray(self.ssim), np.asarray(self.psnr))
        metrics = {"n": len(self.ssim), "image_size": self.image_size, **summary, **self.extra_metadata}
        self.output_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.output_dir / "metrics.json", json.dumps(metrics, indent=2))

        table = io.StringIO()
        writer = csv.writer(table)
        writer.writerow(["name", "ssim", "psnr", "error"])
        for name, image_ssim, image_psnr in zip(self.names, self.ssim, self.psnr, strict=True):
            writer.writerow([name, *score_cells(image_ssim, image_psnr)])
        atomic_write_text(self.output_dir / "per_image_metrics.csv", table.getvalue())
        logger.info(
            f"evaluated {metrics['n']} images at {self.image_size}x{self.image_size}: SSIM {metrics['ssim_mean']:.4f} "
            f"+- {metrics['ssim_std']:.4f} (min {metrics['ssim_min']:.4f}, median {metrics['ssim_median']:.4f}, "
            f"{100 * metrics['fraction_ssim_at_least_0.95']:.0f}% >= 0.95), PSNR {metrics['psnr_mean']:.2f} dB; "
            f"report in {self.output_dir}"
        )

        candidates = {example[2]: example for example in [*self.examples, *self.extremes.values()]}
        shown = spread_examples(list(candidates.values()), self.num_examples)
        if shown:
            title = report_title(metrics["ssim_mean"], metrics["n"], self.extra_metadata.get("checkpoint"))
            plot_reconstructions(shown, title, self.output_dir / "reconstructions.png")
        if self.history_file is not None:
            plot_loss_curves(read_history(self.history_file), self.output_dir / "loss_curves.png")
        engine.state.metrics.update({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
