"""Generating brains as MONAI workflow pieces: load a trained prior, a sampler (requests, inferer, writers) and the
handlers that keep, plot and report its samples.

``generate.json`` declares the workflow: a ``SupervisedEvaluator`` over :class:`SampleRequests` whose inferer
(:class:`PriorSamplingInferer`) draws code maps from the prior and decodes them, with ``SaveImaged`` postprocessing
(:class:`SaveSampled`, :class:`SamplePNGWriter`, :class:`SampleNiftiWriter`); then an evaluator of the real test
images with the quality metric (:class:`~monai_vqbrain.prior.GenerationQuality`).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.config import PathLike
from monai.data import NibabelWriter, PILWriter
from monai.data.utils import to_affine_nd
from monai.engines.utils import IterationEvents, PrepareBatch
from monai.inferers import Inferer
from monai.transforms import SaveImaged
from monai.utils import CommonKeys, convert_to_numpy
from torch.utils.data import Dataset

from ..errors import CheckpointError, DatasetError, OutputPathError, SettingError
from ..handlers.training_history import read_history
from ..networks.pixelcnn import GatedPixelCNN
from ..utils.checkpoint import (
    DEFAULT_MAX_CHECKPOINT_BYTES,
    check_checkpoint_file,
    check_finite_weights,
    check_state_dict_matches,
    checkpoint_byte_limit,
    metadata_file,
    read_model,
)
from ..utils.flags import as_bool
from ..utils.io import atomic_path, atomic_write_text, wrap_label
from .codes import SlicePositionLabels, position_channels, position_map
from .figures import plot_nearest_training_slices
from .trainer import prior_network_settings

__all__ = [
    "check_real_splits",
    "GeneratedSamples",
    "GENERATION_METRICS_KEYS",
    "GenerationReport",
    "NearestTrainingSlices",
    "PriorSamplingInferer",
    "SampleGrid",
    "SampleNiftiWriter",
    "SamplePNGWriter",
    "SampleRequestBatch",
    "SampleRequests",
    "SaveSampled",
    "decode_codes",
    "generation_log_values",
    "generation_metrics_markdown",
    "generation_summary",
    "load_prior",
    "plot_sample_grid",
    "prior_summary",
    "read_prior_settings",
    "sample_affine",
    "sample_class_labels",
]

logger = logging.getLogger(__name__)

# the overrides of the run that failed are not known here: the command says to repeat them
_TRAIN_PRIOR_COMMAND = (
    "python -m monai.bundle run training_prior --config_file "
    "\"['<bundle>/configs/train.json','<bundle>/configs/train_prior.json']\" with this run's settings "
    "(--bundle_root, --image_size, --network_def#... as here)"
)
# the sample files of a run; stale ones from a run with more samples are removed with overwrite
_SAMPLE_FILE = re.compile(r"^sample_\d+\.(png|nii\.gz)$")
# the other files a generating run writes into its folder
_RUN_FILES = ("grid.png", "generation_metrics.json", "nearest_training_slices.png")


def _earlier_outputs(output_dir: Path) -> list[Path]:
    """The files of an earlier generating run in ``output_dir``: what a new run would replace or remove."""
    if not output_dir.is_dir():
        return []
    return sorted(p for p in output_dir.iterdir() if p.is_file() and (_SAMPLE_FILE.match(p.name) or p.name in _RUN_FILES))


def _refuse_to_replace(output_dir: Path, overwrite: bool) -> None:
    earlier = _earlier_outputs(output_dir)
    if earlier and not overwrite:
        raise OutputPathError(
            f"'{output_dir}' already holds generated files ({len(earlier)}, e.g. '{earlier[0].name}') that this run "
            f"would replace; pass --overwrite true to replace them, or --generation_dir to write to another folder."
        )


@contextlib.contextmanager
def _one_cpu_thread(device: torch.device) -> Iterator[None]:
    """Run torch CPU ops on one thread inside the block.

    The fast sampler runs thousands of tiny ops per code map; splitting each across threads costs far more in
    synchronisation than it saves, and on a busy machine it was measured ~200x slower with two threads than one.
    """
    if device.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _read_prior_checkpoint(
    path: Path, max_bytes: int | None = DEFAULT_MAX_CHECKPOINT_BYTES
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The prior's weights, their metadata and the network settings it records, after checking it is a prior's.

    ``max_bytes`` bounds what the file may unpack to (:func:`~monai_vqbrain.utils.checkpoint.checkpoint_byte_limit`
    of the configured prior, when there is one).
    """
    missing = f"prior checkpoint '{path}' does not exist; train the prior first: {_TRAIN_PRIOR_COMMAND}"
    check_checkpoint_file(path, missing, "prior checkpoint")
    state, metadata = read_model(path, max_bytes=max_bytes)
    settings = metadata.get("network_settings")
    if not metadata:
        raise CheckpointError(
            f"prior checkpoint '{path}' has no metadata file that describes it ('{metadata_file(path).name}' beside "
            f"it is missing, or describes other weights): the prior's settings are not known; use the "
            f"{path.name} and {metadata_file(path).name} that training_prior wrote together."
        )
    if metadata.get("network") != GatedPixelCNN.__name__ or not isinstance(settings, dict):
        raise CheckpointError(
            f"'{path}' is not a prior checkpoint: its metadata describes network={metadata.get('network')!r}, not a "
            f"{GatedPixelCNN.__name__} (was the VQ-VAE's model.pt given?); use the prior.pt written by training_prior."
        )
    return state, metadata, settings


def read_prior_settings(checkpoint: str | os.PathLike) -> dict[str, Any]:
    """The :class:`~monai_vqbrain.networks.GatedPixelCNN` arguments a prior checkpoint's metadata records.

    ``generate.json``'s ``prior_def`` takes its defaults from them, so a prior trained with other ``prior_def#...``
    settings (or ``prior_large.json``) generates without repeating them.

    Args:
        checkpoint: the prior's checkpoint, ``<ckpt_dir>/prior.pt``.

    Raises:
        CheckpointError: naming the file when it is missing or not a prior checkpoint.
    """
    return dict(_read_prior_checkpoint(Path(checkpoint))[2])


# settings of a prior that change its weights or what it computes; dropout is off when sampling, so it may differ
_CHECKED_PRIOR_SETTINGS = (
    "spatial_dims", "num_embeddings", "out_channels", "channels", "num_layers", "kernel_size", "num_classes",
    "cond_channels",
)


def _check_codebook(path: Path, vqvae: torch.nn.Module, num_embeddings: int) -> None:
    codebook = getattr(getattr(vqvae, "module", vqvae), "num_embeddings", None)
    if codebook is not None and codebook != num_embeddings:
        raise CheckpointError(
            f"prior checkpoint '{path}' models {num_embeddings} codes but the VQ-VAE configured here has "
            f"num_embeddings={codebook}: it is a prior of another VQ-VAE."
        )


def load_prior(
    checkpoint: str | os.PathLike,
    device: str | torch.device = "cpu",
    vqvae: torch.nn.Module | None = None,
    vqvae_sha256: str | None = None,
    image_size: int | None = None,
    network: GatedPixelCNN | None = None,
) -> tuple[GatedPixelCNN, dict[str, Any]]:
    """Load a prior's weights into the configured network (or one built from the checkpoint's metadata), checking
    the network against that metadata and the prior against the VQ-VAE.

    Args:
        checkpoint: the prior's best checkpoint, ``<ckpt_dir>/prior.pt``.
        device: where to put the network.
        vqvae: the VQ-VAE whose codes will be decoded; its codebook size must be the prior's.
        vqvae_sha256: the fingerprint of that VQ-VAE's checkpoint; it must be the one the prior was trained over.
        image_size: the configured image size; it must be the one the prior's code maps came from.
        network: the configured prior (``generate.json``'s ``prior_def``); its settings must be those the
            checkpoint's metadata records. None builds the network from that metadata.

    Returns:
        The prior in eval mode and its checkpoint metadata.

    Raises:
        CheckpointError: naming the file when it is missing, not a prior checkpoint, records other settings than the
            configured network's, holds weights of another architecture than its metadata says, or does not fit
            the VQ-VAE or the image size.
    """
    path = Path(checkpoint)
    limit = checkpoint_byte_limit(network) if network is not None else DEFAULT_MAX_CHECKPOINT_BYTES
    saved, metadata, settings = _read_prior_checkpoint(path, limit)
    if vqvae is not None:  # before the settings check: a prior over another codebook is the VQ-VAE's mismatch
        _check_codebook(path, vqvae, int(settings.get("num_embeddings") or 0))
    if network is None:
        try:
            network = GatedPixelCNN(**settings)
        except (TypeError, ValueError) as error:
            raise CheckpointError(f"prior checkpoint '{path}' records settings that build no network: {error}") from error
    else:
        configured = prior_network_settings(network)
        differing = [k for k in _CHECKED_PRIOR_SETTINGS if k in settings and settings[k] != configured.get(k)]
        if differing:
            found = ", ".join(f"{k}={settings[k]!r} (configured: {configured.get(k)!r})" for k in differing)
            raise CheckpointError(
                f"prior checkpoint '{path}' records {found}: set prior_def#{differing[0]} to the checkpoint's value, "
                f"or leave prior_def to the checkpoint's metadata."
            )
    frequencies = int(metadata.get("position_frequencies") or 0)
    if settings.get("cond_channels") != position_channels(frequencies):
        raise CheckpointError(
            f"prior checkpoint '{path}' is inconsistent: its network takes cond_channels="
            f"{settings.get('cond_channels')} but its metadata records position_frequencies={frequencies} "
            f"(expected cond_channels={position_channels(frequencies)})."
        )
    check_state_dict_matches(network, saved, str(path))
    check_finite_weights(saved, str(path))
    network.load_state_dict(saved)

    if image_size is not None and "image_size" in metadata and int(metadata["image_size"]) != int(image_size):
        raise CheckpointError(
            f"prior checkpoint '{path}' was trained on the codes of {metadata['image_size']}-pixel images, but "
            f"image_size={image_size} is configured; set image_size to {metadata['image_size']}."
        )
    if vqvae_sha256 is not None and metadata.get("vqvae_sha256") not in (None, vqvae_sha256):
        raise CheckpointError(
            f"prior checkpoint '{path}' was trained over the codes of another VQ-VAE checkpoint than the one "
            f"configured ('{metadata.get('vqvae_checkpoint')}' at the time; the VQ-VAE was retrained or replaced "
            f"since), so its codes would decode to noise: train the prior again ({_TRAIN_PRIOR_COMMAND} and "
            f"--overwrite true)."
        )
    return network.to(device).eval(), metadata


def check_real_splits(test_datalist: Sequence[Any], train_datalist: Sequence[Any]) -> None:
    """Refuse, before anything is sampled, to measure samples against a real split that holds no slices.

    Listing the splits (``test#datalist``, ``generation_train#datalist``) already names a missing ``dataset_dir``;
    this names an empty split.

    Raises:
        DatasetError: naming the empty split.
    """
    for split, datalist in (("test", test_datalist), ("train", train_datalist)):
        if len(datalist) == 0:
            raise DatasetError(
                f"the {split} split of the dataset holds no slices to measure the samples against; check "
                f"--dataset_dir, or pass --generation_metrics false to only sample."
            )


def sample_class_labels(
    metadata: Mapping[str, Any], num_samples: int, requested: int | Sequence[int] | None = None
) -> torch.Tensor | None:
    """The class label of each sample: as requested, or spread like the training data (see
    :meth:`~monai_vqbrain.prior.SlicePositionLabels.sample_labels`); None for an unconditioned prior.

    Args:
        metadata: the prior checkpoint's metadata.
        num_samples: number of samples.
        requested: one label for every sample, or one per sample; None for the training distribution.

    Raises:
        SettingError: for labels given to an unconditioned prior, or of the wrong type, count or range.
    """
    labels = SlicePositionLabels.from_metadata(metadata.get("conditioning") or {})
    if labels.num_classes is None:
        if requested is not None:
            raise SettingError("sample_class_labels were given but the prior is not conditioned (prior_conditioning none).")
        return None
    if requested is None:
        return labels.sample_labels(num_samples)
    flat = [requested] if not isinstance(requested, (list, tuple)) else list(requested)
    if not flat or not all(isinstance(v, int) and not isinstance(v, bool) for v in flat):
        raise SettingError(
            f"sample_class_labels must be null, one integer label or a list of {num_samples} integer labels in "
            f"[0, {labels.num_classes}), got {requested!r}."
        )
    values = torch.as_tensor(flat, dtype=torch.long).reshape(-1)
    if values.numel() == 1:
        values = values.expand(num_samples).clone()
    if values.numel() != num_samples:
        raise SettingError(f"sample_class_labels must be one label or {num_samples} labels, got {values.numel()}.")
    if int(values.min()) < 0 or int(values.max()) >= labels.num_classes:
        raise SettingError(f"sample_class_labels must lie in [0, {labels.num_classes}), got {values.tolist()}.")
    return values


@torch.no_grad()
def decode_codes(vqvae: torch.nn.Module, codes: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Decode code maps ``(N, h, w)`` to images ``(N, 1, S, S)`` in [0, 1] (float32, on the CPU)."""
    model = getattr(vqvae, "module", vqvae).eval()
    device = next(model.parameters()).device
    images = [
        model.decode_samples(codes[i : i + batch_size].to(device)).float().clamp(0.0, 1.0).cpu()
        for i in range(0, len(codes), batch_size)
    ]
    return torch.cat(images)


def sample_affine(size: int, pixel_spacing: float = 1.0) -> np.ndarray:
    """The voxel-to-world (RAS, mm) affine of a generated ``(size, size, 1)`` axial slice.

    Diagonal, so viewers show the slice in RAS orientation with square ``pixel_spacing`` mm pixels (and as thick);
    the image centre sits at the world origin, as the samples stand for no particular scanner position.

    Args:
        size: the image size ``S`` in pixels.
        pixel_spacing: the pixel size in mm.

    Raises:
        ValueError: for a spacing that is not a finite positive number.
    """
    spacing = float(pixel_spacing)
    if not (math.isfinite(spacing) and spacing > 0.0):
        raise ValueError(f"pixel_spacing must be a finite number of mm > 0, got {pixel_spacing!r}.")
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:2, 3] = -spacing * (size - 1) / 2.0
    return affine


def plot_sample_grid(
    images: torch.Tensor,
    path: str | os.PathLike,
    titles: Sequence[str] | None = None,
    columns: int | None = None,
    heading: str | None = None,
) -> None:
    """Save a grid figure of images ``(N, 1, S, S)`` in [0, 1], each with an optional title, under ``heading``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    count = len(images)
    columns = columns or max(1, math.ceil(math.sqrt(count)))
    rows = max(1, math.ceil(count / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(1.8 * columns, 1.9 * rows), squeeze=False)
    for index, axis in enumerate(axes.flat):
        axis.set_xticks([])
        axis.set_yticks([])
        if index >= count:
            axis.axis("off")
            continue
        axis.imshow(images[index, 0].cpu().numpy(), cmap="gray", vmin=0.0, vmax=1.0)
        if titles is not None:
            axis.set_title(titles[index], fontsize=7)
    if heading:
        figure.suptitle(wrap_label(heading, max(40, 12 * columns)), fontsize=9)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())


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
    """One line of the headline generation metrics: the realism AUC and d' with their references, FD, diversity and
    memorisation.

    Args:
        report: the content of ``generation_metrics.json``.
    """

    def value(key: str, digits: int = 2) -> str:
        number = report.get(key)
        if not isinstance(number, (int, float)) or isinstance(number, bool) or not math.isfinite(number):
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
    """The numbers of a ``generation_metrics.json`` that a tracker logs as metrics.

    Every finite number at the top level (FDs, diversity, memorisation, classifier AUCs and their spreads, sampling
    seconds, the prior's bits per code, ...), and each ``*_ci95`` interval as ``<key>_low`` and ``<key>_high``;
    entries that are None (a metric not computed), flags, texts and per-sample lists are left out, as a tracker only
    takes numbers.

    Args:
        metrics: the generation metrics, as ``generation_metrics.json`` holds them.
    """

    def number(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

    values: dict[str, float] = {}
    for key, value in metrics.items():
        if number(value):
            values[key] = float(value)
        elif key.endswith("_ci95") and isinstance(value, (list, tuple)) and len(value) == 2:
            for side, bound in zip(("low", "high"), value, strict=True):
                if number(bound):
                    values[f"{key}_{side}"] = float(bound)
    return values


# ------------------------------------------------------------------------------------------------------- sampler
class SampleRequests(Dataset):
    """The samples to draw, one item each: the dataset of ``generate.json``'s sampler.

    Item ``i`` is ``{"seed": int64, "name": "sample_<i>", "pred_meta_dict": {"filename_or_obj", "affine"}}``, with
    ``"class_label"`` (int64) for a conditioned prior. The seeds are drawn once from a generator seeded with
    ``seed``, one per sample, and each code map depends only on its own seed: the same ``seed`` gives the same
    samples whatever the batch size. ``pred_meta_dict`` names the files ``SaveImaged`` writes and gives them the
    affine of :func:`sample_affine`.

    Args:
        num_samples: number of brains to draw.
        seed: the seed of the draw.
        metadata: the prior checkpoint's metadata (see :func:`load_prior`): the slice-position bins.
        class_labels: slice-position bin of every sample (one int, or one per sample); None spreads the samples
            over the bins like the training data (see :func:`sample_class_labels`).
        image_size: the size ``S`` of the decoded images.
        pixel_spacing: the pixel size in mm recorded in the NIfTI files' affine.

    Raises:
        ValueError: for a count that is not a positive integer, labels that do not fit the prior, or a spacing
            that is not a positive number.
    """

    def __init__(
        self,
        num_samples: int,
        seed: int,
        metadata: Mapping[str, Any],
        class_labels: int | Sequence[int] | None = None,
        image_size: int = 64,
        pixel_spacing: float = 1.0,
    ) -> None:
        if isinstance(num_samples, bool) or int(num_samples) != num_samples or num_samples < 1:
            raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}.")
        self.num_samples = int(num_samples)
        self.labels = sample_class_labels(metadata, self.num_samples, class_labels)
        # the draw GatedPixelCNN.sample makes from a generator: the seeds of earlier runs' samples stay theirs
        generator = torch.Generator().manual_seed(int(seed))
        self.seeds = torch.randint(0, 2**62, (self.num_samples,), generator=generator)
        digits = max(3, len(str(self.num_samples - 1)))
        self.names = [f"sample_{index:0{digits}d}" for index in range(self.num_samples)]
        self.affine = sample_affine(int(image_size), pixel_spacing)

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = {
            "seed": self.seeds[index],
            "name": self.names[index],
            "pred_meta_dict": {"filename_or_obj": self.names[index], "affine": self.affine.copy()},
        }
        if self.labels is not None:
            item["class_label"] = self.labels[index]
        return item


class SampleRequestBatch(PrepareBatch):
    """The sampler's ``prepare_batch``: a batch of :class:`SampleRequests` as the seeds (the inputs) and the class
    labels (a keyword argument of :class:`PriorSamplingInferer`). Nothing is moved: the noise is drawn from the seeds
    on the CPU, and the prior puts the labels where its weights are.
    """

    def __call__(
        self,
        batchdata: dict[str, Any],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, None, tuple, dict[str, Any]]:
        """Split a request batch into ``(seeds, None, (), {"class_labels": labels or None})``."""
        return batchdata["seed"], None, (), {"class_labels": batchdata.get("class_label")}


class PriorSamplingInferer(Inferer):
    """The sampler's inferer: draw a code map per seed from the prior (the network) and decode it with the VQ-VAE.

    Each code map is drawn with the prior's exact fast sampler from its own seed (see
    :meth:`~monai_vqbrain.networks.GatedPixelCNN.sample`), with the prior's slice-position conditioning map when it
    was trained with one; decoding is deterministic.

    Args:
        vqvae: the trained VQ-VAE (see :func:`~monai_vqbrain.prior.load_vqvae`).
        metadata: the prior checkpoint's metadata: the code map size and the conditioning map's frequencies.
        temperature: sampling temperature: 1 samples the model's distribution, lower values are more conservative,
            0 always picks the most likely code (greedy; the same for every seed).
        image_size: the image size, for the code map size of a checkpoint that does not record it.
        progress: show a progress bar while sampling.

    Raises:
        ValueError: for a temperature that is not a finite number >= 0.
    """

    def __init__(
        self,
        vqvae: torch.nn.Module,
        metadata: Mapping[str, Any],
        temperature: float = 1.0,
        image_size: int | None = None,
        progress: bool = False,
    ) -> None:
        super().__init__()
        if not float(temperature) >= 0.0 or not math.isfinite(float(temperature)):
            raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}.")
        self.vqvae = getattr(vqvae, "module", vqvae).eval()
        size = metadata.get("code_size") or [int(image_size or 0) // self.vqvae.downsample_factor] * 2
        self.code_size = tuple(int(s) for s in size)
        self.frequencies = int(metadata.get("position_frequencies") or 0)
        self.temperature = float(temperature)
        self.progress = as_bool(progress, "progress")

    def __call__(  # type: ignore[override]
        self, inputs: torch.Tensor, network: GatedPixelCNN, class_labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Sample and decode one batch.

        Args:
            inputs: the samples' seeds ``(B,)``.
            network: the prior.
            class_labels: the samples' slice-position bins ``(B,)``, for a conditioned prior.

        Returns:
            The images ``(B, 1, S, S)`` in [0, 1] (float32, on the CPU), rows as a PNG shows them.
        """
        prior = getattr(network, "module", network)
        device = next(prior.parameters()).device
        cond_map = None
        if self.frequencies > 0:
            cond_map = position_map(self.code_size, self.frequencies).expand(len(inputs), -1, -1, -1)
        with _one_cpu_thread(device):
            codes = prior.sample(
                len(inputs),
                self.code_size,
                temperature=self.temperature,
                class_labels=class_labels,
                cond_map=cond_map,
                fast=True,
                progress=self.progress,
                seeds=inputs,
            )
        return decode_codes(self.vqvae, codes)


# SaveImage reports any error of its writers as missing writer libraries (a RuntimeError holding the error as text);
# the writers keep a failed write's own error here, for SaveSampled to re-raise as the one-line error it is
_WRITE_ERROR: ContextVar[OSError | None] = ContextVar("sample_write_error", default=None)


@contextlib.contextmanager
def _sample_path(filename: PathLike) -> Iterator[Path]:
    """:func:`~monai_vqbrain.utils.atomic_path` for a writer: MONAI's writers save straight to the final path, so a
    killed run would leave a truncated sample beside whole ones; a failure is also kept for :class:`SaveSampled`."""
    try:
        with atomic_path(filename) as tmp:
            yield tmp
    except OSError as error:
        _WRITE_ERROR.set(error)
        raise


class SaveSampled(SaveImaged):
    """MONAI's ``SaveImaged`` whose writers' failures (a full disk, a read-only folder) surface as themselves,
    one line naming the file, rather than as ``SaveImage``'s "cannot find a suitable writer"."""

    def __call__(self, data: Mapping[Any, Any]) -> dict[Any, Any]:
        """Save the items as ``SaveImaged`` does."""
        _WRITE_ERROR.set(None)
        try:
            return super().__call__(data)
        except RuntimeError as error:
            failure = _WRITE_ERROR.get()
            if failure is None:
                raise
            raise failure from error


class SamplePNGWriter(PILWriter):
    """MONAI's ``PILWriter`` writing atomically, and rounding to the nearest 8-bit level (``PILWriter`` truncates)."""

    def write(self, filename: PathLike, verbose: bool = False, **kwargs: Any) -> None:
        """Write the image to ``filename`` (a temporary file beside it, then renamed)."""
        if self.scale == np.iinfo(np.uint8).max:
            data = convert_to_numpy(self.data_obj, wrap_sequence=True).astype(np.float64)
            self.data_obj, self.scale = np.rint(np.clip(data, 0.0, 1.0) * 255.0).astype(np.uint8), None
        with _sample_path(filename) as tmp:
            super().write(str(tmp), verbose=verbose, format="PNG", **kwargs)


class SampleNiftiWriter(NibabelWriter):
    """MONAI's ``NibabelWriter`` writing a ``(S, S, 1)`` axial slice atomically, both transforms coded "aligned".

    The qform too, so readers that prefer it (ITK, FSL) place the slice like those reading the sform; code 2, not
    ``NibabelWriter``'s 1 (scanner), as a sample stands for no scanner position; units mm.
    """

    def set_metadata(self, meta_dict: Mapping[str, Any] | None = None, resample: bool = True, **options: Any) -> None:
        """Take the affine of ``meta_dict``; a sample is on its own grid, with nothing to resample it to.

        Args:
            meta_dict: the sample's metadata (``affine``, see :class:`SampleRequests`).
            resample: ignored.
            options: ignored.
        """
        self.affine = None if meta_dict is None else meta_dict.get("affine")

    def write(self, filename: PathLike, verbose: bool = False, **obj_kwargs: Any) -> None:
        """Write the image to ``filename`` (a temporary file beside it, then renamed)."""
        plane = np.asarray(convert_to_numpy(self.data_obj, wrap_sequence=True), dtype=self.output_dtype or np.float32)
        volume = np.ascontiguousarray(plane.reshape(plane.shape[0], plane.shape[1], 1))
        affine = to_affine_nd(3, convert_to_numpy(self.affine if self.affine is not None else np.eye(4)))
        nifti = nib.Nifti1Image(volume, affine=affine)
        nifti.set_qform(affine, code=2)
        nifti.set_sform(affine, code=2)
        nifti.header.set_xyzt_units("mm")
        with _sample_path(filename) as tmp:
            nib.save(nifti, str(tmp))


# ------------------------------------------------------------------------------------------------------ handlers
class GeneratedSamples:
    """The sampler's samples: guards their folder and keeps the images for the grid, the report and the metrics.

    Before anything is sampled (:meth:`check`, in ``initialize``, and when the sampler starts) an earlier run's files
    in ``output_dir`` are refused unless ``overwrite``; with it, its sample files and metrics are removed when the
    sampler starts, so the folder holds exactly this run's samples. Each iteration's decoded images are kept (on
    the CPU) with their names and labels, and the time spent sampling and decoding is summed.

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
        _refuse_to_replace(self.output_dir, self.overwrite)

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
        # FORWARD_COMPLETED comes before MONAI's decollation and postprocessing (at MODEL_COMPLETED): the batch as decoded
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
        count = len(images)
        shown = np.unique(np.linspace(0, count - 1, num=min(count, self.grid_samples)).round()).astype(int).tolist()
        titles = [
            names[i][: -len(".png")] + ("" if labels is None else f"\n{self.positions.bin_description(int(labels[i]))}")
            for i in shown
        ]
        heading = None
        if labels is not None and self.positions.index_range is not None:
            low, high = self.positions.index_range
            heading = (
                f"samples by slice position, from the base of the brain (slice {low}, top left) to the vertex "
                f"(slice {high}, bottom right)"
            )
        plot_sample_grid(images[shown], self.output_dir / "grid.png", titles, heading=heading)


_COMPARISONS = {
    "generated_vs_test": "generated vs real test slices: the realism measure",
    "train_vs_test": "real training vs real test slices (different subjects): what two real sets score",
    "reconstructed_vs_test": (
        "VQ-VAE reconstructions of half of the test subjects vs real slices of the other half: the best a perfect "
        "prior could reach through this decoder"
    ),
}
"""The three comparisons of the two-sample tests of :class:`~monai_vqbrain.prior.GenerationQuality`."""


def _classifier_keys() -> dict[str, str]:
    """The ``classifier_*`` keys of the three comparisons."""
    keys: dict[str, str] = {}
    for name, meaning in _COMPARISONS.items():
        keys.update({
            f"classifier_auc_{name}": f"classifier two-sample test, {meaning}: mean held-out ROC AUC over the folds "
            "(0.5: indistinguishable, 1: always told apart); null when not measured (see classifier_notes)",
            f"classifier_auc_{name}_std": "standard deviation of that AUC over the folds",
            f"classifier_auc_{name}_ci95": "95% interval of that AUC (Student t over the folds, clipped to [0, 1])",
            f"classifier_auc_{name}_folds": "that AUC in each fold",
            f"classifier_dprime_{name}": f"d′ of the same test, {meaning}: the gap between the classifier's mean "
            "held-out scores of the two sets over their pooled standard deviation, averaged over the folds (0: "
            "indistinguishable); on a few dozen images a side its interval is wide and it means little",
            f"classifier_dprime_{name}_ci95": "95% interval of that d′",
            f"classifier_images_per_side_{name}": "images on each side of that test (at most num_samples); null "
            "when it was not measured",
        })
    return keys


def _texture_keys() -> dict[str, str]:
    """The ``texture_*`` keys of the three comparisons (:func:`~monai_vqbrain.prior.texture_two_sample_test`)."""
    keys: dict[str, str] = {}
    for name, meaning in _COMPARISONS.items():
        keys.update({
            f"texture_auc_{name}": f"texture two-sample test, {meaning}: mean held-out ROC AUC of a logistic regression "
            "on intensity, gradient and local-binary-pattern histograms inside the brain, same folds as the "
            "classifier's; null when not measured",
            f"texture_auc_{name}_ci95": "95% interval of that AUC (Student t over the folds, clipped to [0, 1])",
            f"texture_dprime_{name}": "d′ of the same texture test (0: indistinguishable)",
            f"texture_dprime_{name}_ci95": "95% interval of that d′",
        })
    return keys


#: every key of ``generation_metrics.json`` with what it holds: the one description of the file, from which the
#: documentation's table is generated (``docs/hooks/generation_metrics.py``); a test fails for a key a run writes
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
    **_classifier_keys(),
    **_texture_keys(),
    "classifier_notes": "why a classifier comparison was not measured (too few images or subjects for the folds)",
}


def generation_metrics_markdown() -> str:
    """The documentation's table of every key of ``generation_metrics.json`` (:data:`GENERATION_METRICS_KEYS`)."""
    lines = ["| key | what it holds |", "| --- | --- |"]
    lines += [f"| `{key}` | {text.replace('|', chr(92) + '|')} |" for key, text in GENERATION_METRICS_KEYS.items()]
    return "\n".join(lines) + "\n"


class GenerationReport:
    """Write ``generation_metrics.json`` when an engine's epoch completes, and make its numbers the engine's metrics.

    Attached to the sampler it records the samples and the prior's results (see :func:`prior_summary`); attached to
    the metrics evaluator it adds the quality metrics that :class:`~monai_vqbrain.prior.GenerationQuality` put in
    ``state.metrics[metric_name]``. ``state.metrics`` then holds the report's numbers
    (:func:`generation_log_values`), which the tracking handlers attached after it log.

    Args:
        samples: the sampler's :class:`GeneratedSamples`.
        metadata: the prior checkpoint's metadata.
        output_dir: the folder of ``generation_metrics.json``.
        run: the settings the report records: ``seed``, ``temperature``, ``image_size``, ``prior_checkpoint``,
            ``vqvae_checkpoint``.
        code_size: the code maps' size.
        history_file: the prior's training history (for the validation accuracy at its best epoch).
        metric_name: the name of the quality metric in ``state.metrics``.
        metrics: whether the quality metrics follow the sampler (``generation_metrics``): the sampler's report
            then says ``"metrics_status": "pending ..."`` until the metrics evaluator's replaces it, so a run
            stopped while measuring leaves a file that says so.
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
        if isinstance(quality, Mapping):
            report["metrics_status"] = "measured"
        elif self.metrics:
            report["metrics_status"] = "pending: the run stopped before the metrics were written; run it again"
        if isinstance(quality, Mapping):  # num_samples is already recorded; keep the rest
            report.update({k: v for k, v in quality.items() if k != "num_samples"})
        path = self.output_dir / "generation_metrics.json"
        atomic_write_text(path, json.dumps(report, indent=2))
        if isinstance(quality, Mapping):
            logger.info(f"{generation_summary(report)}; all metrics in '{path}'")
        engine.state.metrics = generation_log_values(report)
        engine.state.output = report


class NearestTrainingSlices:
    """Plot ``nearest_training_slices.png`` when the metrics evaluator's epoch completes: 8 samples (evenly spaced)
    beside their most similar training slices, from the quality metric's ``memorisation_per_sample``.

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
        shown = [int(i) for i in np.unique(np.linspace(0, len(images) - 1, num=min(8, len(images))).round())]
        shown = [i for i in shown if nearest[i].get("nearest_train") in index_of]
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
