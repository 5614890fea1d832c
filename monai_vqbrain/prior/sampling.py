"""The sampler of the bundle's ``generating`` as MONAI pieces: ``generate.json``'s ``SupervisedEvaluator`` runs over
:class:`SampleRequests`, and its inferer (:class:`PriorSamplingInferer`) draws code maps from the prior and decodes
them with the VQ-VAE; :mod:`.writers` saves them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.engines.utils import PrepareBatch
from monai.inferers import Inferer
from torch.utils.data import Dataset

from ..errors import DatasetError, SettingError
from ..networks.pixelcnn import GatedPixelCNN
from ..utils.flags import as_bool
from .conditioning import SlicePositionLabels, position_map


def check_real_splits(test_datalist: Sequence[Any], train_datalist: Sequence[Any]) -> None:
    """Refuse, before anything is sampled, to measure samples against an empty real split (listing the splits
    already names a missing ``dataset_dir``).

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
    """The class label of each sample: as requested, or spread like the training data
    (:meth:`~monai_vqbrain.prior.SlicePositionLabels.sample_labels`); None for an unconditioned prior.

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
            raise SettingError(
                "sample_class_labels were given but the prior is not conditioned (prior_conditioning none)."
            )
        return None
    if requested is None:
        return labels.sample_labels(num_samples)
    flat = list(requested) if isinstance(requested, (list, tuple)) else [requested]
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
    """The voxel-to-world (RAS, mm) affine of a generated ``(size, size, 1)`` axial slice: diagonal (square pixels,
    as thick), the image centre at the world origin, as a sample stands for no scanner position.

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


class SampleRequests(Dataset):
    """The samples to draw, one item each: the dataset of ``generate.json``'s sampler.

    Item ``i`` is ``{"seed": int64, "name": "sample_<i>", "pred_meta_dict": {"filename_or_obj", "affine"}}``, with
    ``"class_label"`` (int64) for a conditioned prior; ``pred_meta_dict`` names the files ``SaveImaged`` writes. A
    code map depends only on its own seed, drawn from ``seed``: the same ``seed`` gives the same samples whatever the
    batch size.

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
    """The sampler's ``prepare_batch``: ``(seeds, None, (), {"class_labels": labels or None})`` of a batch of
    :class:`SampleRequests`. Nothing is moved: the noise is drawn from the seeds on the CPU, and the prior puts the
    labels where its weights are.
    """

    def __call__(
        self,
        batchdata: dict[str, Any],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, None, tuple, dict[str, Any]]:
        return batchdata["seed"], None, (), {"class_labels": batchdata.get("class_label")}


class PriorSamplingInferer(Inferer):
    """The sampler's inferer: draw a code map per seed from the prior (the network) with its exact fast sampler
    (:meth:`~monai_vqbrain.networks.GatedPixelCNN.sample`) and its position map if it has one, and decode it.

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
        # on a CPU, one thread: the fast sampler runs thousands of tiny ops per code map, and splitting each across
        # threads was measured ~200x slower with two threads than one on a busy machine
        threads = torch.get_num_threads()
        if device.type == "cpu":
            torch.set_num_threads(1)
        try:
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
        finally:
            torch.set_num_threads(threads)
        return decode_codes(self.vqvae, codes)
