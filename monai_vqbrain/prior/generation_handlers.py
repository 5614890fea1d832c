"""The handlers of the bundle's ``generating``: keep the samples (guarding their folder), plot their grid and their
nearest training slices, and write ``generation_metrics.json``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys

from ..errors import OutputPathError
from ..utils.flags import as_bool
from ..utils.io import atomic_write_text
from .conditioning import SlicePositionLabels
from .figures import plot_nearest_training_slices, plot_sample_grid
from .generation_quality import evenly_spaced
from .report import generation_log_values, generation_summary, prior_summary

logger = logging.getLogger(__name__)

# the sample files of a run; stale ones from a run with more samples are removed with overwrite
_SAMPLE_FILE = re.compile(r"^sample_\d+\.(png|nii\.gz)$")

# the other files a generating run writes into its folder
_RUN_FILES = ("grid.png", "generation_metrics.json", "nearest_training_slices.png")


def _earlier_outputs(output_dir: Path) -> list[Path]:
    """The files of an earlier generating run in ``output_dir``: what a new run would replace or remove."""
    if not output_dir.is_dir():
        return []
    return sorted(
        p for p in output_dir.iterdir() if p.is_file() and (_SAMPLE_FILE.match(p.name) or p.name in _RUN_FILES)
    )


class GeneratedSamples:
    """The sampler's samples: guards their folder and keeps the images for the grid, the report and the metrics.

    An earlier run's files in ``output_dir`` are refused before anything is sampled (:meth:`check`, in
    ``initialize`` and when the sampler starts) unless ``overwrite``, and then removed, so the folder holds exactly
    this run's samples. Each iteration's decoded images are kept on the CPU with their names and labels.

    Args:
        output_dir: the folder the samples are saved to.
        overwrite: replace an earlier run's files.

    Attributes:
        images: ``(N, 1, S, S)`` in [0, 1] once the sampler's epoch completed.
        names: the samples' PNG file names, ``sample_<i>.png`` (how the report and its metrics name them).
        labels: their class labels (None for an unconditioned prior).
        seconds: time spent sampling and decoding.
    """

    def __init__(self, output_dir: str | os.PathLike, overwrite: bool = False) -> None:
        self.output_dir = Path(output_dir)
        self.overwrite = as_bool(overwrite, "overwrite")
        self.images: torch.Tensor | None = None
        self.names: list[str] = []
        self.labels: torch.Tensor | None = None
        self.seconds = 0.0
        self._batches: list[torch.Tensor] = []
        self._labels: list[torch.Tensor] = []
        self._started = 0.0

    def check(self) -> None:
        """Refuse, before any work, to replace an earlier run's files unless ``overwrite``.

        Raises:
            OutputPathError: naming ``output_dir`` when it holds generated files and not ``overwrite``.
        """
        earlier = _earlier_outputs(self.output_dir)
        if earlier and not self.overwrite:
            raise OutputPathError(
                f"'{self.output_dir}' already holds generated files ({len(earlier)}, e.g. '{earlier[0].name}') that "
                f"this run would replace; pass --overwrite true to replace them, or --generation_dir to write to "
                f"another folder."
            )

    def attach(self, engine: Engine) -> None:
        """Attach to the sampler (a MONAI ``SupervisedEvaluator``)."""
        engine.add_event_handler(Events.STARTED, self._start)
        engine.add_event_handler(Events.ITERATION_STARTED, self._iteration_started)
        engine.add_event_handler(IterationEvents.FORWARD_COMPLETED, self._collect)
        # the end of the epoch, not of the run: the grid and the report are made at the end of the epoch too
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._complete)

    def _start(self, engine: Engine) -> None:
        self.check()
        for earlier in _earlier_outputs(self.output_dir):  # a figure left from it would show other samples
            earlier.unlink()
        self.images, self.names, self.labels, self.seconds = None, [], None, 0.0
        self._batches, self._labels = [], []
        loader = getattr(engine, "data_loader", None)
        count, batch = len(getattr(loader, "dataset", []) or []), getattr(loader, "batch_size", None)
        if count:
            logger.info(f"sampling {count} brains" + (f" in batches of {batch}" if batch else ""))

    def _iteration_started(self, engine: Engine) -> None:
        self._started = time.perf_counter()

    def _collect(self, engine: Engine) -> None:
        # FORWARD_COMPLETED comes before MONAI's decollation and postprocessing: the batch as decoded
        self._batches.append(engine.state.output[CommonKeys.PRED].detach().float().cpu())
        self.names += [f"{name}.png" for name in engine.state.batch["name"]]
        if "class_label" in engine.state.batch:
            self._labels.append(torch.as_tensor(engine.state.batch["class_label"]).cpu())
        self.seconds += time.perf_counter() - self._started

    def _complete(self, engine: Engine) -> None:
        self.images = torch.cat(self._batches)
        self.labels = torch.cat(self._labels) if self._labels else None
        self._batches, self._labels = [], []
        logger.info(f"sampled {len(self.images)} brains in {self.seconds:.1f} s")


class SampleGrid:
    """Plot ``grid.png`` when the sampler's epoch completes: at most ``grid_samples`` samples, evenly spaced so every
    slice-position bin stays in view, titled with their name and (for a conditioned prior) their bin.

    Args:
        samples: the sampler's :class:`GeneratedSamples`.
        metadata: the prior checkpoint's metadata (the bins' descriptions).
        output_dir: the folder of ``grid.png``.
        grid_samples: the most samples shown.
    """

    def __init__(
        self,
        samples: GeneratedSamples,
        metadata: Mapping[str, Any],
        output_dir: str | os.PathLike,
        grid_samples: int = 64,
    ) -> None:
        self.samples = samples
        self.positions = SlicePositionLabels.from_metadata(metadata.get("conditioning") or {})
        self.output_dir = Path(output_dir)
        self.grid_samples = max(1, int(grid_samples))

    def attach(self, engine: Engine) -> None:
        """Attach to the sampler, after :class:`GeneratedSamples`."""
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        """Plot the grid."""
        images, names, labels = self.samples.images, self.samples.names, self.samples.labels
        shown = evenly_spaced(len(images), self.grid_samples)
        titles = [
            names[i][: -len(".png")] + ("" if labels is None else f"\n{self.positions.bin_description(int(labels[i]))}")
            for i in shown
        ]
        heading = None
        if labels is not None and self.positions.index_range is not None:
            low, high = self.positions.index_range
            heading = f"by slice position: brain base (slice {low}, top left) to vertex (slice {high}, bottom right)"
        plot_sample_grid(images[shown], self.output_dir / "grid.png", titles, heading=heading)


class GenerationReport:
    """Write ``generation_metrics.json`` when an engine's epoch completes, and make its numbers the engine's metrics.

    Attached to the sampler it records the samples and the prior's results (:func:`prior_summary`); attached to the
    metrics evaluator it adds :class:`~monai_vqbrain.prior.GenerationQuality`'s ``state.metrics[metric_name]``.
    ``state.metrics`` then holds the report's numbers (:func:`generation_log_values`) for the tracking handlers.

    Args:
        samples: the sampler's :class:`GeneratedSamples`.
        metadata: the prior checkpoint's metadata.
        output_dir: the folder of ``generation_metrics.json``.
        run: the settings the report records: ``seed``, ``temperature``, ``image_size``, ``prior_checkpoint``,
            ``vqvae_checkpoint``.
        code_size: the code maps' size.
        history_file: the prior's training history (for the validation accuracy at its best epoch).
        metric_name: the name of the quality metric in ``state.metrics``.
        metrics: whether the quality metrics follow the sampler (``generation_metrics``): the sampler's report then
            says ``"metrics_status": "pending ..."``, so a run stopped while measuring leaves a file that says so.
    """

    def __init__(
        self,
        samples: GeneratedSamples,
        metadata: Mapping[str, Any],
        output_dir: str | os.PathLike,
        run: Mapping[str, Any],
        code_size: Sequence[int],
        history_file: str | os.PathLike | None = None,
        metric_name: str = "generation",
        metrics: bool = False,
    ) -> None:
        self.samples = samples
        self.metadata = metadata
        self.output_dir = Path(output_dir)
        self.run = dict(run)
        self.code_size = [int(s) for s in code_size]
        self.history_file = history_file
        self.metric_name = metric_name
        self.metrics = as_bool(metrics, "metrics")

    def attach(self, engine: Engine) -> None:
        """Attach to the sampler or the metrics evaluator (after its quality metric, before tracking handlers)."""
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        """Write the report; replace ``state.metrics`` with its numbers."""
        labels = self.samples.labels
        report: dict[str, Any] = {
            "num_samples": len(self.samples.names),
            "seed": int(self.run["seed"]),
            "temperature": float(self.run["temperature"]),
            "image_size": int(self.run["image_size"]),
            "code_size": self.code_size,
            "sample_files": list(self.samples.names),
            "sample_class_labels": None if labels is None else labels.tolist(),
            "sampling_seconds": self.samples.seconds,
            "prior_checkpoint": str(self.run["prior_checkpoint"]),
            "vqvae_checkpoint": str(self.run["vqvae_checkpoint"]),
            "metrics_status": "not measured (--generation_metrics false)",
            **prior_summary(self.metadata, self.history_file),
        }
        quality = engine.state.metrics.get(self.metric_name)
        if isinstance(quality, Mapping):  # num_samples is already recorded; keep the rest
            report["metrics_status"] = "measured"
            report.update({k: v for k, v in quality.items() if k != "num_samples"})
        elif self.metrics:
            report["metrics_status"] = "pending: the run stopped before the metrics were written; run it again"
        path = self.output_dir / "generation_metrics.json"
        atomic_write_text(path, json.dumps(report, indent=2))
        if isinstance(quality, Mapping):
            logger.info(f"{generation_summary(report)}; all metrics in '{path}'")
        engine.state.metrics = generation_log_values(report)
        engine.state.output = report


class NearestTrainingSlices:
    """Plot ``nearest_training_slices.png`` when the metrics evaluator's epoch completes: 8 evenly spaced samples
    beside their most similar training slices (the quality metric's ``memorisation_per_sample``).

    Args:
        samples: the sampler's :class:`GeneratedSamples`.
        train_dataset: the training slices the memorisation search ran over (items ``{"image", "name"}``).
        output_dir: the folder of the figure.
        metric_name: the name of the quality metric in ``state.metrics``.
    """

    def __init__(
        self,
        samples: GeneratedSamples,
        train_dataset: Any,
        output_dir: str | os.PathLike,
        metric_name: str = "generation",
    ) -> None:
        self.samples = samples
        self.train_dataset = train_dataset
        self.output_dir = Path(output_dir)
        self.metric_name = metric_name

    def attach(self, engine: Engine) -> None:
        """Attach to the metrics evaluator, after its quality metric and before :class:`GenerationReport`."""
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        """Plot the figure (nothing when no nearest slice is known)."""
        nearest = engine.state.metrics[self.metric_name]["memorisation_per_sample"]
        images, names = self.samples.images, self.samples.names
        index_of = {str(item.get("name")): i for i, item in enumerate(getattr(self.train_dataset, "data", []) or [])}
        shown = [i for i in evenly_spaced(len(images), 8) if nearest[i].get("nearest_train") in index_of]
        if not shown:
            return
        references = torch.stack(
            [torch.as_tensor(self.train_dataset[index_of[nearest[i]["nearest_train"]]]["image"]).float() for i in shown]
        )
        plot_nearest_training_slices(
            images[shown],
            references,
            self.output_dir / "nearest_training_slices.png",
            [names[i][: -len(".png")] for i in shown],
            [str(nearest[i]["nearest_train"]) for i in shown],
            [float(nearest[i]["ssim"]) for i in shown],
        )
