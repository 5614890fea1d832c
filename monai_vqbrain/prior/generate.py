"""Generating brains: load a trained prior, sample code maps, decode them, and write and measure the images."""

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
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from ignite.engine import Engine
from PIL import Image

from ..data.datasets import get_dataset
from ..errors import CheckpointError, OutputPathError
from ..handlers.training_history import read_history
from ..networks.pixelcnn import GatedPixelCNN
from ..utils.checkpoint import (
    METADATA_KEY,
    check_finite_weights,
    check_state_dict_matches,
    load_checkpoint,
    network_state_dict,
)
from ..utils.flags import as_bool
from ..utils.io import atomic_path, atomic_write_text
from .codes import SlicePositionLabels, position_channels, position_map, vqvae_fingerprint
from .figures import plot_nearest_training_slices
from .metrics import evaluate_generation
from .trainer import prior_network_settings

__all__ = [
    "BrainGenerator",
    "GenerationEvaluator",
    "generation_log_values",
    "decode_codes",
    "load_prior",
    "plot_sample_grid",
    "prior_summary",
    "read_prior_settings",
    "sample_affine",
    "sample_class_labels",
    "write_samples",
]

logger = logging.getLogger(__name__)

_TRAIN_PRIOR_COMMAND = (
    "python -m monai.bundle run training_prior --config_file "
    "\"['bundle/configs/train.json','bundle/configs/train_prior.json']\""
)
# the files write_samples owns in its folder; stale ones from a run with more samples are removed with overwrite
_SAMPLE_FILE = re.compile(r"^sample_\d+\.(png|nii\.gz)$")
# the other files a generating run writes into its folder
_RUN_FILES = ("grid.png", "generation_metrics.json")


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


def _read_prior_checkpoint(path: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The checkpoint, its metadata and the network settings its metadata records, after checking it is a prior's."""
    if not path.is_file():
        raise CheckpointError(f"prior checkpoint '{path}' does not exist; train the prior first: {_TRAIN_PRIOR_COMMAND}")
    saved = load_checkpoint(path)
    metadata = dict(saved.get(METADATA_KEY, {}) or {})
    settings = metadata.get("network_settings")
    if metadata.get("network") != GatedPixelCNN.__name__ or not isinstance(settings, dict):
        raise CheckpointError(
            f"'{path}' is not a prior checkpoint: its metadata describes network={metadata.get('network')!r}, not a "
            f"{GatedPixelCNN.__name__} (was the VQ-VAE's model.pt given?); use the prior.pt written by training_prior."
        )
    return saved, metadata, settings


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
    saved, metadata, settings = _read_prior_checkpoint(path)
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
    check_state_dict_matches(network, network_state_dict(saved), str(path))
    check_finite_weights(network_state_dict(saved), str(path))
    network.load_state_dict(network_state_dict(saved))

    if image_size is not None and "image_size" in metadata and int(metadata["image_size"]) != int(image_size):
        raise CheckpointError(
            f"prior checkpoint '{path}' was trained on the codes of {metadata['image_size']}-pixel images, but "
            f"image_size={image_size} is configured; set image_size to {metadata['image_size']}."
        )
    if vqvae_sha256 is not None and metadata.get("vqvae_sha256") not in (None, vqvae_sha256):
        raise CheckpointError(
            f"prior checkpoint '{path}' was trained over the codes of another VQ-VAE checkpoint than the one "
            f"configured ('{metadata.get('vqvae_checkpoint')}' at the time; the VQ-VAE was retrained or replaced "
            f"since), so its codes would decode to noise: train the prior again ({_TRAIN_PRIOR_COMMAND} "
            f"--overwrite true)."
        )
    return network.to(device).eval(), metadata


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
        ValueError: for labels given to an unconditioned prior, or of the wrong count or range.
    """
    labels = SlicePositionLabels.from_metadata(metadata.get("conditioning") or {})
    if labels.num_classes is None:
        if requested is not None:
            raise ValueError("sample_class_labels were given but the prior is not conditioned (prior_conditioning none).")
        return None
    if requested is None:
        return labels.sample_labels(num_samples)
    values = torch.as_tensor(requested, dtype=torch.long).reshape(-1)
    if values.numel() == 1:
        values = values.expand(num_samples).clone()
    if values.numel() != num_samples:
        raise ValueError(f"sample_class_labels must be one label or {num_samples} labels, got {values.numel()}.")
    if int(values.min()) < 0 or int(values.max()) >= labels.num_classes:
        raise ValueError(f"sample_class_labels must lie in [0, {labels.num_classes}), got {values.tolist()}.")
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


def _to_uint8(image: torch.Tensor) -> np.ndarray:
    return np.rint(image.detach().cpu().numpy().clip(0.0, 1.0) * 255.0).astype(np.uint8)


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


def write_samples(
    output_dir: str | os.PathLike, images: torch.Tensor, overwrite: bool = False, pixel_spacing: float = 1.0
) -> list[str]:
    """Write each image ``(1, S, S)`` as ``sample_<i>.png`` (8-bit grey) and ``sample_<i>.nii.gz`` (float32).

    The arrays are in display orientation, rows as the PNG shows them (as the package's readers return slices).
    The NIfTI volume is an axial slice ``(S, S, 1)`` in RAS voxel order, rotated as
    :func:`~monai_vqbrain.data.load_nifti_slices` expects, so reading it back gives the same image; its affine (qform
    and sform) has ``pixel_spacing`` mm pixels and slice thickness and puts the image centre at the world origin (see
    :func:`sample_affine`). Every file is written atomically.

    Args:
        output_dir: the folder to write to.
        images: the samples, ``(N, 1, S, S)`` in [0, 1].
        overwrite: replace the files of an earlier run, removing its sample files first so the folder holds exactly
            this run's samples; without it a folder holding generated files is refused.
        pixel_spacing: the pixel size in mm (the training images' pixel size, when known).

    Raises:
        OutputPathError: when ``output_dir`` holds an earlier run's files and not ``overwrite``.

    Returns:
        The PNG file names, in sample order.
    """
    output_dir = Path(output_dir)
    _refuse_to_replace(output_dir, overwrite)
    output_dir.mkdir(parents=True, exist_ok=True)
    for stale in _earlier_outputs(output_dir):
        if _SAMPLE_FILE.match(stale.name):
            stale.unlink()
    # not MONAI's SaveImage: its writers save straight to the final path, so a killed run would leave a truncated
    # sample beside complete ones; atomic_path keeps every file whole (written aside, then renamed)
    affine = sample_affine(images.shape[-1], pixel_spacing)
    digits = max(3, len(str(len(images) - 1)))
    names = []
    for index, image in enumerate(images):
        stem = f"sample_{index:0{digits}d}"
        plane = image[0].float().cpu().numpy()
        with atomic_path(output_dir / f"{stem}.png") as tmp:
            Image.fromarray(_to_uint8(image[0]), mode="L").save(tmp, format="PNG")
        # load_nifti_slices shows a volume's plane as np.rot90(plane); undo it so a round trip is the identity
        volume = np.ascontiguousarray(np.rot90(plane, k=-1)[:, :, None], dtype=np.float32)
        nifti = nib.Nifti1Image(volume, affine=affine)
        # both transforms, so readers that prefer the qform (ITK, FSL) place the slice like those reading the sform
        nifti.set_qform(affine, code=2)
        nifti.set_sform(affine, code=2)
        nifti.header.set_xyzt_units("mm")
        with atomic_path(output_dir / f"{stem}.nii.gz") as tmp:
            nib.save(nifti, str(tmp))
        names.append(f"{stem}.png")
    return names


def plot_sample_grid(
    images: torch.Tensor, path: str | os.PathLike, titles: Sequence[str] | None = None, columns: int | None = None
) -> None:
    """Save a grid figure of images ``(N, 1, S, S)`` in [0, 1], each with an optional title."""
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


class BrainGenerator:
    """Sample brains from a trained prior and VQ-VAE, write them and measure them.

    :meth:`run` writes into ``output_dir``: ``sample_<i>.png`` and ``sample_<i>.nii.gz`` per sample (see
    :func:`write_samples`), ``grid.png`` (up to ``grid_samples`` samples, titled with their slice-position bin when the
    prior is conditioned) and ``generation_metrics.json`` (see :func:`prior_summary` and
    :func:`~monai_vqbrain.prior.evaluate_generation` for its entries).

    The same ``seed`` (and settings) gives identical files: the code maps are drawn with the prior's exact fast
    sampler from a generator seeded with ``seed``, and decoding is deterministic.

    Args:
        prior_checkpoint: the prior's best checkpoint (``<ckpt_dir>/prior.pt``).
        vqvae: the trained VQ-VAE (see :func:`~monai_vqbrain.prior.load_vqvae`).
        vqvae_checkpoint: the checkpoint it was loaded from; the prior must have been trained over it.
        output_dir: where the files go.
        image_size: the image size (checked against the prior's).
        num_samples: number of brains to draw.
        temperature: sampling temperature: 1 samples the model's distribution, lower values are more conservative,
            0 always picks the most likely code (greedy; the same for every seed).
        seed: the seed of the draw.
        class_labels: slice-position bin of every sample (one int, or one per sample); None spreads the samples
            over the bins like the training data.
        batch_size: samples drawn at once (None: all).
        history_file: the prior's training history (for the validation accuracy at its best epoch).
        dataset_kwargs: :func:`~monai_vqbrain.data.get_dataset` arguments to read the real train and test splits
            for the quality metrics (those not given as ``train_dataset`` / ``test_dataset``); None skips the metrics
            unless both datasets are given.
        compute_metrics: False writes only the prior's results into ``generation_metrics.json``.
        metrics_batch_size: images per batch when reading the real splits.
        grid_samples: the most samples shown in ``grid.png`` (evenly spaced over the samples).
        fd_grid: the encoder latents are average-pooled to ``fd_grid x fd_grid`` for the Fréchet distances.
        classifier: run the classifier two-sample tests of realism (see
            :func:`~monai_vqbrain.prior.realism.classifier_two_sample_test`); False leaves their entries None.
        real_images: the real test images (and as many training images) the classifier tests draw from.
        device: where to run the prior (default: where the VQ-VAE is).
        progress: show a progress bar while sampling.
        overwrite: replace an earlier run's files in ``output_dir`` (see :func:`write_samples`); without it such a
            folder is refused before anything is sampled.
        pixel_spacing: the pixel size in mm recorded in the NIfTI files' affine (see :func:`sample_affine`).
        train_dataset: the real training slices the samples are compared with (memorisation, references), items
            ``{"image": (1, S, S), "name": str}`` (``generate.json``: ``generation_train#dataset``); None reads the
            split with ``dataset_kwargs``.
        test_dataset: the real test slices the samples are measured against (``generate.json``: ``test#dataset``,
            as in ``evaluate.json``); None reads the split with ``dataset_kwargs``.
        prior: the configured prior network, checked against the checkpoint's metadata before its weights are
            loaded (see :func:`load_prior`); None builds it from that metadata.
    """

    def __init__(
        self,
        prior_checkpoint: str | os.PathLike,
        vqvae: torch.nn.Module,
        vqvae_checkpoint: str | os.PathLike,
        output_dir: str | os.PathLike,
        image_size: int,
        num_samples: int = 16,
        temperature: float = 1.0,
        seed: int = 0,
        class_labels: int | Sequence[int] | None = None,
        batch_size: int | None = None,
        history_file: str | os.PathLike | None = None,
        dataset_kwargs: Mapping[str, Any] | None = None,
        compute_metrics: bool = True,
        metrics_batch_size: int = 64,
        grid_samples: int = 64,
        fd_grid: int = 4,
        classifier: bool = True,
        real_images: int = 512,
        device: str | torch.device | None = None,
        progress: bool = False,
        overwrite: bool = False,
        pixel_spacing: float = 1.0,
        prior: GatedPixelCNN | None = None,
        train_dataset: Any | None = None,
        test_dataset: Any | None = None,
    ) -> None:
        if isinstance(num_samples, bool) or int(num_samples) != num_samples or num_samples < 1:
            raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}.")
        if not float(temperature) >= 0.0 or not math.isfinite(float(temperature)):
            raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}.")
        self.prior_checkpoint = Path(prior_checkpoint)
        self.vqvae = vqvae
        self.vqvae_checkpoint = Path(vqvae_checkpoint)
        self.output_dir = Path(output_dir)
        self.image_size = int(image_size)
        self.num_samples = int(num_samples)
        self.temperature = float(temperature)
        self.seed = int(seed)
        self.class_labels = class_labels
        self.batch_size = batch_size
        self.history_file = history_file
        self.dataset_kwargs = None if dataset_kwargs is None else dict(dataset_kwargs)
        self.compute_metrics = as_bool(compute_metrics, "generation_metrics")
        self.metrics_batch_size = metrics_batch_size
        self.grid_samples = max(1, int(grid_samples))
        self.fd_grid = int(fd_grid)
        self.classifier = as_bool(classifier, "generation_classifier")
        if isinstance(real_images, bool) or int(real_images) != real_images or real_images < 1:
            raise ValueError(f"real_images must be a positive integer, got {real_images!r}.")
        self.real_images = int(real_images)
        self.device = device
        self.progress = as_bool(progress, "progress")
        self.overwrite = as_bool(overwrite, "overwrite")
        sample_affine(self.image_size, pixel_spacing)  # a bad spacing fails here, before anything is sampled
        self.pixel_spacing = float(pixel_spacing)
        self.prior = prior
        self.train_dataset = train_dataset
        self.test_dataset = test_dataset

    def check(self) -> None:
        """Refuse, before any work, to replace an earlier run's files unless ``overwrite``.

        Raises:
            OutputPathError: naming ``output_dir`` when it holds generated files and not ``overwrite``.
        """
        _refuse_to_replace(self.output_dir, self.overwrite)

    def _plot_nearest(self, images: torch.Tensor, names: list[str], train: Any, nearest: list[dict]) -> None:
        """``nearest_training_slices.png``: 8 samples (evenly spaced) beside their most similar training slices."""
        index_of = {str(item.get("name")): i for i, item in enumerate(getattr(train, "data", []) or [])}
        shown = [int(i) for i in np.unique(np.linspace(0, len(images) - 1, num=min(8, len(images))).round())]
        shown = [i for i in shown if nearest[i].get("nearest_train") in index_of]
        if not shown:
            return
        references = torch.stack([
            torch.as_tensor(train[index_of[nearest[i]["nearest_train"]]]["image"]).float() for i in shown
        ])
        plot_nearest_training_slices(
            images[shown],
            references,
            self.output_dir / "nearest_training_slices.png",
            [names[i][: -len(".png")] for i in shown],
            [str(nearest[i]["nearest_train"]) for i in shown],
            [float(nearest[i]["ssim"]) for i in shown],
        )

    def run(self) -> dict[str, Any]:
        """Sample, decode, write the files and the metrics; return the metrics."""
        self.check()
        model = getattr(self.vqvae, "module", self.vqvae).eval()
        device = torch.device(self.device) if self.device is not None else next(model.parameters()).device
        prior, metadata = load_prior(
            self.prior_checkpoint,
            device,
            vqvae=model,
            vqvae_sha256=vqvae_fingerprint(self.vqvae_checkpoint),
            image_size=self.image_size,
            network=self.prior,
        )
        code_size = tuple(int(s) for s in metadata.get("code_size") or [self.image_size // model.downsample_factor] * 2)
        labels = sample_class_labels(metadata, self.num_samples, self.class_labels)
        # metrics of an earlier run must not sit beside this run's samples if this run fails before its own
        (self.output_dir / "generation_metrics.json").unlink(missing_ok=True)

        frequencies = int(metadata.get("position_frequencies") or 0)
        cond_map = None
        if frequencies > 0:
            cond_map = position_map(code_size, frequencies).expand(self.num_samples, -1, -1, -1)

        start = time.perf_counter()
        # a CPU generator whatever the device: the prior draws per-sample seeds from it and its noise on the CPU
        generator = torch.Generator().manual_seed(self.seed)
        with _one_cpu_thread(device):
            codes = prior.sample(
                self.num_samples,
                code_size,
                temperature=self.temperature,
                generator=generator,
                class_labels=labels,
                cond_map=cond_map,
                batch_size=self.batch_size,
                fast=True,
                progress=self.progress,
            )
        images = decode_codes(model, codes)
        seconds = time.perf_counter() - start
        logger.info(f"sampled {self.num_samples} brains in {seconds:.1f} s")

        names = write_samples(self.output_dir, images, overwrite=self.overwrite, pixel_spacing=self.pixel_spacing)
        # the grid shows at most grid_samples samples, evenly spaced so every slice-position bin stays in view
        shown = np.unique(np.linspace(0, self.num_samples - 1, num=min(self.num_samples, self.grid_samples)).round())
        shown = shown.astype(int).tolist()
        positions = SlicePositionLabels.from_metadata(metadata.get("conditioning") or {})
        titles = [
            names[i][: -len(".png")] + ("" if labels is None else f"\n{positions.bin_description(int(labels[i]))}")
            for i in shown
        ]
        plot_sample_grid(images[shown], self.output_dir / "grid.png", titles)

        metrics: dict[str, Any] = {
            "num_samples": self.num_samples,
            "seed": self.seed,
            "temperature": self.temperature,
            "image_size": self.image_size,
            "code_size": list(code_size),
            "sample_files": names,
            "sample_class_labels": None if labels is None else labels.tolist(),
            "sampling_seconds": seconds,
            "prior_checkpoint": str(self.prior_checkpoint),
            "vqvae_checkpoint": str(self.vqvae_checkpoint),
            **prior_summary(metadata, self.history_file),
        }
        datasets_given = self.train_dataset is not None and self.test_dataset is not None
        if self.compute_metrics and (datasets_given or self.dataset_kwargs is not None):
            kwargs = {**(self.dataset_kwargs or {}), "image_size": self.image_size, "cache_rate": 0.0}
            train = self.train_dataset if self.train_dataset is not None else get_dataset(split="train", **kwargs)
            test = self.test_dataset if self.test_dataset is not None else get_dataset(split="test", **kwargs)
            quality = evaluate_generation(
                images,
                model,
                train,
                test,
                sample_names=names,
                batch_size=self.metrics_batch_size,
                num_workers=int((self.dataset_kwargs or {}).get("num_workers", 0) or 0),
                fd_grid=self.fd_grid,
                real_images=self.real_images,
                classifier=self.classifier,
                seed=self.seed,
            )
            # num_samples is already recorded; keep the rest
            metrics.update({k: v for k, v in quality.items() if k != "num_samples"})
            self._plot_nearest(images, names, train, quality["memorisation_per_sample"])
        atomic_write_text(self.output_dir / "generation_metrics.json", json.dumps(metrics, indent=2))
        return metrics


def generation_log_values(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The numbers of a ``generation_metrics.json`` that a tracker logs as metrics.

    Every finite number at the top level (FDs, diversity, memorisation, classifier AUCs and their spreads, sampling
    seconds, the prior's bits per code, ...), and each ``*_ci95`` interval as ``<key>_low`` and ``<key>_high``;
    entries that are None (a metric not computed), flags, texts and per-sample lists are left out, as a tracker only
    takes numbers.

    Args:
        metrics: the generation metrics, as :meth:`BrainGenerator.run` returns them.
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


def _not_ignite_termination(record: logging.LogRecord) -> bool:
    return "is terminating due to exception" not in record.getMessage()


class GenerationEvaluator(Engine):
    """Generating as an Ignite engine, so MONAI's event handlers (``MLFlowHandler`` of ``--tracking mlflow``,
    ``StatsHandler``, ...) attach to it as they do to the evaluators of the other workflows.

    One epoch of one iteration runs the generator (:meth:`BrainGenerator.run`); the iteration's output is the
    generation metrics, and their numbers (:func:`generation_log_values`) become ``state.metrics``, which handlers
    read at the end of the epoch. Its files are written by then, so handlers can log them when the run completes.

    Args:
        generator: the configured generator.
        val_handlers: handlers to attach (each has an ``attach(engine)`` method), like a MONAI evaluator's.
    """

    def __init__(self, generator: BrainGenerator, val_handlers: Sequence[Any] | None = None) -> None:
        super().__init__(self._generate)
        # Ignite logs every error twice as it ends the run, before re-raising it; the error still reaches the caller
        # (and the bundle's one-line error report), so those lines only repeat it
        self.logger.addFilter(_not_ignite_termination)  # one function: added once to Ignite's shared logger
        self.generator = generator
        for handler in val_handlers or []:
            handler.attach(self)

    def _generate(self, engine: Engine, batch: Any) -> dict[str, Any]:
        metrics = self.generator.run()
        engine.state.metrics.update(generation_log_values(metrics))
        return metrics

    def run(self) -> dict[str, Any]:  # type: ignore[override]
        """Generate once (one epoch of one iteration); return the generation metrics."""
        state = super().run([None], max_epochs=1)
        return state.output
