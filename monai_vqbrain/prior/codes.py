"""Code maps of a trained VQ-VAE for the prior: encode a split once, cache it, and serve it as a dataset.

A split's code maps are cached in one file (``{"codes", "names", "slice_indices", "fingerprint", ...}``) written
atomically. The fingerprint covers the VQ-VAE checkpoint's bytes, the split's source files (path, size and
modification time, listed without loading any image) and every setting that changes the images; a cache whose
fingerprint differs is recomputed, so retraining the VQ-VAE or changing the data never trains the prior on stale
codes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from ..data.datasets import detect_dataset_format, get_dataset, resolve_dataset_dir
from ..data.nifti import list_nifti_volumes
from ..data.oasis import canonical_split, find_png_files, png_split_folder
from ..engines.precision import autocast
from ..errors import CheckpointError, DatasetError
from ..utils.checkpoint import (
    check_checkpoint_file,
    file_sha256,
    load_checkpoint,
    load_network_weights,
    save_checkpoint,
)
from ..utils.flags import as_bool
from ..utils.modules import unwrap_network

__all__ = [
    "CONDITIONINGS",
    "CodeDataset",
    "SlicePositionLabels",
    "codes_fingerprint",
    "encode_dataset",
    "file_sha256",
    "load_or_encode_codes",
    "load_vqvae",
    "num_condition_classes",
    "parse_slice_index",
    "position_channels",
    "position_map",
    "vqvae_fingerprint",
]

logger = logging.getLogger(__name__)

#: ways the prior can be conditioned: on nothing, or on the slice position (a class per bin of slice index)
CONDITIONINGS = ("none", "slice_position")

#: version of the cache file layout; bumping it invalidates every existing cache
_CACHE_VERSION = 1

# OASIS PNG slices are named case_XXX_slice_Y.nii.png; NIfTI slices "<volume file>#slice<k>" (see data.nifti)
_SLICE_INDEX_PATTERNS = (
    re.compile(r"^case_\d+_slice_(\d+)(?:\.nii)?\.png$", re.IGNORECASE),
    re.compile(r"#slice(\d+)$"),
)

# dataset settings that change which images a split holds or what they look like (not cache_rate, num_workers)
_IMAGE_SETTINGS = (
    "dataset_format",
    "slice_axis",
    "slice_range",
    "min_foreground",
    "val_fraction",
    "test_fraction",
    "seed",
    "max_items",
)


# --------------------------------------------------------------------------------------------- VQ-VAE checkpoint
def _missing_vqvae_error(path: Path) -> CheckpointError:
    return CheckpointError(
        f"VQ-VAE checkpoint '{path}' does not exist: the prior works on the codes of a trained VQ-VAE: train it "
        f"first (python -m monai.bundle run training --config_file bundle/configs/train.json) or point --ckpt_dir "
        f"at the folder holding its model.pt."
    )


def vqvae_fingerprint(path: str | os.PathLike) -> str:
    """The SHA-256 of a VQ-VAE checkpoint: what the prior's codes (and its checkpoint) are tied to.

    Raises:
        CheckpointError: when the checkpoint does not exist, saying how to train it.
    """
    path = check_checkpoint_file(path, str(_missing_vqvae_error(Path(path))), "VQ-VAE checkpoint")
    return file_sha256(path)


def load_vqvae(
    network: torch.nn.Module,
    checkpoint: str | os.PathLike,
    image_size: int | None = None,
    device: str | torch.device | None = None,
) -> torch.nn.Module:
    """Load a trained VQ-VAE checkpoint into ``network`` and return it in eval mode.

    Eval mode matters: in training mode the quantizer updates its EMA codebook (and may restart codes) on every
    batch it sees, which would change the codes while they are being computed.

    Args:
        network: the configured VQ-VAE (``network_def``); a DDP wrapper's ``module`` is used.
        checkpoint: its checkpoint, ``<ckpt_dir>/model.pt``.
        image_size: the configured image size, checked against the checkpoint's metadata.
        device: where to load the weights (default: where the network is).

    Raises:
        CheckpointError: when the checkpoint is missing, unreadable, of another network or another image size.
    """
    path = check_checkpoint_file(checkpoint, str(_missing_vqvae_error(Path(checkpoint))), "VQ-VAE checkpoint")
    network = unwrap_network(network)
    if device is None:
        device = next(network.parameters()).device
    expected = None if image_size is None else {"image_size": image_size}
    load_network_weights(network, path, expected, device)
    return network.eval()


# ------------------------------------------------------------------------------------------------- fingerprints
def _split_source_files(dataset_kwargs: Mapping[str, Any], split: str) -> tuple[str, list[Path]]:
    """The dataset format and the files a split is read from, listed without opening them."""
    root = resolve_dataset_dir(dataset_kwargs.get("dataset_dir"))
    dataset_format = dataset_kwargs.get("dataset_format", "auto")
    if dataset_format == "auto":
        dataset_format = detect_dataset_format(root)
    if dataset_format == "png":
        files = find_png_files(png_split_folder(root, split))[: dataset_kwargs.get("max_items")]
    else:
        volumes = list_nifti_volumes(
            root,
            split,
            val_fraction=dataset_kwargs.get("val_fraction", 0.1),
            test_fraction=dataset_kwargs.get("test_fraction", 0.1),
            seed=dataset_kwargs.get("seed", 0),
        )
        files = []
        for volume in volumes:
            files.append(volume)
            header = volume.with_suffix(".hdr")  # an Analyze image's header changes what it holds too
            if volume.suffix.lower() == ".img" and header.is_file():
                files.append(header)
    return dataset_format, files


def codes_fingerprint(vqvae_sha256: str, dataset_kwargs: Mapping[str, Any], split: str, image_size: int) -> str:
    """A digest of everything a split's code maps depend on.

    Args:
        vqvae_sha256: the VQ-VAE checkpoint's :func:`vqvae_fingerprint`.
        dataset_kwargs: the arguments of :func:`~monai_vqbrain.data.get_dataset` (``train.json``'s
            ``dataset_kwargs``).
        split: the split.
        image_size: the image size the VQ-VAE encodes.

    Returns:
        A SHA-256 hex digest over the VQ-VAE checkpoint, the image settings, and the path, size and modification
        time of every source file of the split.
    """
    split = canonical_split(split)
    dataset_format, files = _split_source_files(dataset_kwargs, split)
    description = {
        "version": _CACHE_VERSION,
        "vqvae_sha256": vqvae_sha256,
        "split": split,
        "image_size": int(image_size),
        "format": dataset_format,
        "settings": {key: dataset_kwargs.get(key) for key in _IMAGE_SETTINGS},
        "files": [],
    }
    for path in files:
        stat = path.stat()
        description["files"].append([str(path), stat.st_size, stat.st_mtime_ns])
    return hashlib.sha256(json.dumps(description, sort_keys=True, default=str).encode("utf-8")).hexdigest()


# ----------------------------------------------------------------------------------------------------- encoding
@torch.no_grad()
def encode_dataset(
    vqvae: torch.nn.Module,
    dataset: Dataset,
    device: str | torch.device | None = None,
    batch_size: int = 64,
    num_workers: int = 0,
    amp: bool = False,
) -> tuple[torch.Tensor, list[str]]:
    """Encode every image of a dataset of ``{"image", "name"}`` items to its code map.

    Args:
        vqvae: a VQ-VAE with ``index_quantize`` (put in eval mode here).
        dataset: the images, e.g. from :func:`~monai_vqbrain.data.get_dataset`.
        device: where to run the encoder (default: where the network is).
        batch_size: images per forward pass.
        num_workers: data loader workers.
        amp: encode under autocast; off by default, as lower precision can flip near-tie code assignments.

    Returns:
        The code maps ``(N, h, w)`` as int64 on the CPU, and the item names.
    """
    model = getattr(vqvae, "module", vqvae).eval()
    device = torch.device(device) if device is not None else next(model.parameters()).device
    amp = as_bool(amp, "amp")
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    codes: list[torch.Tensor] = []
    names: list[str] = []
    for batch in loader:
        images = batch["image"]
        images = images.as_tensor() if hasattr(images, "as_tensor") else images
        with autocast(device, amp):
            codes.append(model.index_quantize(images.to(device)).cpu())
        names += [str(name) for name in batch.get("name", [f"image_{len(names) + i}" for i in range(len(images))])]
    if not codes:
        raise DatasetError("there are no images to encode: the split is empty.")
    return torch.cat(codes).long(), names


def parse_slice_index(name: str) -> int | None:
    """The slice index in a slice's name: ``Y`` of OASIS ``case_XXX_slice_Y.nii.png``, ``k`` of NIfTI
    ``<volume>#slice<k>``; None when the name carries none."""
    for pattern in _SLICE_INDEX_PATTERNS:
        match = pattern.search(str(name))
        if match:
            return int(match.group(1))
    return None


def _read_cache(path: Path) -> dict | None:
    """A cache file's contents, or None when it is missing or unreadable (it is then recomputed)."""
    if not path.is_file():
        return None
    try:
        cache = load_checkpoint(path)
    except CheckpointError as error:
        logger.warning(f"ignoring unreadable code cache {path}: {error}")
        return None
    return cache if {"fingerprint", "codes", "names", "slice_indices"} <= set(cache) else None


def _cache_problem(cache: Mapping[str, Any], num_embeddings: int | None, image_size: int) -> str | None:
    """What is wrong with a code cache whose fingerprint matches (a damaged or edited file), or None."""
    codes, names, indices = cache.get("codes"), cache.get("names"), cache.get("slice_indices")
    if not isinstance(codes, torch.Tensor) or codes.ndim != 3 or codes.dtype not in (torch.int16, torch.int32):
        described = tuple(codes.shape) if isinstance(codes, torch.Tensor) else type(codes).__name__
        return f"its codes are {described}, not an int16/int32 tensor of code maps (N, h, w)"
    count = int(codes.shape[0])
    if not isinstance(names, list) or len(names) != count or not all(isinstance(n, str) for n in names):
        return f"its names are not a list of {count} slice names"
    if not isinstance(indices, torch.Tensor) or tuple(indices.shape) != (count,) or indices.is_floating_point():
        return f"its slice indices are not {count} integers"
    if list(cache.get("code_size", list(codes.shape[1:]))) != list(codes.shape[1:]):
        return f"its code maps are {tuple(codes.shape[1:])} but it records code_size {cache.get('code_size')}"
    if int(cache.get("image_size", image_size)) != int(image_size):
        return f"it was encoded at image_size {cache.get('image_size')}, not {image_size}"
    if codes.numel():
        low, high = int(codes.min()), int(codes.max())
        if low < 0 or (num_embeddings is not None and high >= num_embeddings):
            return f"it holds codes from {low} to {high}, outside the VQ-VAE's codebook [0, {num_embeddings})"
    return None


def load_or_encode_codes(
    cache_file: str | os.PathLike,
    vqvae: torch.nn.Module,
    vqvae_sha256: str,
    dataset_kwargs: Mapping[str, Any],
    split: str,
    image_size: int,
    device: str | torch.device | None = None,
    batch_size: int = 64,
    amp: bool = False,
    overwrite: bool = False,
) -> dict[str, Any]:
    """A split's code maps: read from ``cache_file`` when its fingerprint matches, else encoded and cached.

    Args:
        cache_file: the cache, e.g. ``<ckpt_dir>/codes_train.pt``; replaced atomically when recomputed.
        vqvae: the trained VQ-VAE (see :func:`load_vqvae`).
        vqvae_sha256: the fingerprint of the checkpoint ``vqvae`` was loaded from (:func:`vqvae_fingerprint`).
        dataset_kwargs: the arguments of :func:`~monai_vqbrain.data.get_dataset` (without ``split``).
        split: ``"train"``, ``"validate"`` or ``"test"``.
        image_size: the image size, part of the fingerprint.
        device: where to encode.
        batch_size: images per encoder pass.
        amp: encode under autocast (see :func:`encode_dataset`).
        overwrite: encode again over a damaged cache (one whose fingerprint matches but whose contents are not code
            maps of this VQ-VAE) instead of refusing it.

    Returns:
        ``{"codes": int16 (N, h, w), "names": [str], "slice_indices": int64 (N,) (-1: none in the name),
        "fingerprint": str, "split": str, "num_embeddings": int, "code_size": [h, w], "image_size": int}``.

    Raises:
        CheckpointError: one line naming the cache and how to recover, when it is damaged and ``overwrite`` is off.
    """
    cache_file = Path(cache_file)
    split = canonical_split(split)
    fingerprint = codes_fingerprint(vqvae_sha256, dataset_kwargs, split, image_size)
    cached = _read_cache(cache_file)
    reason = "no cache yet" if cached is None else "the VQ-VAE checkpoint or the data changed"
    if cached is not None and cached["fingerprint"] == fingerprint:
        codebook = getattr(getattr(vqvae, "module", vqvae), "num_embeddings", None)
        problem = _cache_problem(cached, None if codebook is None else int(codebook), image_size)
        if problem is None:
            logger.info(f"using the cached code maps of the {split} split from {cache_file}")
            return cached
        if not as_bool(overwrite, "overwrite"):
            raise CheckpointError(
                f"code cache '{cache_file}' is damaged ({problem}); delete it, or pass --overwrite true, and the "
                f"{split} split is encoded again."
            )
        reason = f"the cache is damaged: {problem}"
    logger.info(f"encoding the {split} split to code maps ({reason}); caching them in {cache_file}")
    # cache_rate=0: the images are read once here, caching them in memory would only cost memory
    dataset = get_dataset(split=split, **{**dict(dataset_kwargs), "image_size": image_size, "cache_rate": 0.0})
    num_workers = int(dataset_kwargs.get("num_workers", 0) or 0)
    codes, names = encode_dataset(vqvae, dataset, device, batch_size=batch_size, num_workers=num_workers, amp=amp)
    num_embeddings = int(getattr(getattr(vqvae, "module", vqvae), "num_embeddings", int(codes.max()) + 1))
    slice_indices = [parse_slice_index(name) for name in names]
    entry = {
        "fingerprint": fingerprint,
        "split": split,
        # int16 holds any codebook of up to 32768 codes in a quarter of the memory of int64
        "codes": codes.to(torch.int16 if num_embeddings <= 2**15 else torch.int32),
        "names": names,
        "slice_indices": torch.tensor([-1 if i is None else i for i in slice_indices], dtype=torch.long),
        "num_embeddings": num_embeddings,
        "code_size": list(codes.shape[1:]),
        "image_size": int(image_size),
    }
    save_checkpoint(cache_file, entry)
    return entry


# --------------------------------------------------------------------------------------------------- conditioning
def num_condition_classes(conditioning: str | None, slice_bins: int) -> int | None:
    """The prior's ``num_classes``: None without conditioning, ``slice_bins`` with slice-position conditioning.

    Raises:
        ValueError: for an unknown conditioning or a non-positive number of bins.
    """
    conditioning = "none" if conditioning is None else str(conditioning)
    if conditioning not in CONDITIONINGS:
        raise ValueError(f"prior_conditioning must be one of {', '.join(CONDITIONINGS)}, got {conditioning!r}.")
    if conditioning == "none":
        return None
    if isinstance(slice_bins, bool) or int(slice_bins) != slice_bins or slice_bins < 1:
        raise ValueError(f"prior_slice_bins must be a positive integer, got {slice_bins!r}.")
    return int(slice_bins)


def position_channels(num_frequencies: int) -> int | None:
    """The prior's ``cond_channels`` for :func:`position_map` features: ``4 * num_frequencies``, None for 0."""
    if isinstance(num_frequencies, bool) or int(num_frequencies) != num_frequencies or num_frequencies < 0:
        raise ValueError(f"prior_position_frequencies must be a non-negative integer, got {num_frequencies!r}.")
    return 4 * int(num_frequencies) if num_frequencies else None


def position_map(code_size: Sequence[int], num_frequencies: int) -> torch.Tensor:
    """Fixed Fourier features of the position in a code map, the prior's spatial conditioning map.

    For row ``r`` of ``h`` (``u = (r + 0.5) / h``) the features are ``sin(pi k u)`` and ``cos(pi k u)`` for
    ``k = 1 .. num_frequencies``, and the same for the column. A PixelCNN only sees absolute position through its
    zero padding, and never the bottom or right edge (they lie in its future), so without them it does not know
    that the map ends a row or two below: it then sometimes starts new structures in the last rows, seen as
    blobs in the bottom corners of generated brains. With the position as an input every layer can learn where
    the background is.

    Args:
        code_size: ``(h, w)`` of the code maps.
        num_frequencies: frequencies per axis; the map has ``4 * num_frequencies`` channels.

    Returns:
        A float32 tensor ``(4 * num_frequencies, h, w)``.
    """
    height, width = (int(s) for s in code_size)
    k = torch.arange(1, int(num_frequencies) + 1, dtype=torch.float64)[:, None] * math.pi
    rows = k * ((torch.arange(height, dtype=torch.float64) + 0.5) / height)
    columns = k * ((torch.arange(width, dtype=torch.float64) + 0.5) / width)
    row_features = torch.cat([rows.sin(), rows.cos()])[:, :, None].expand(-1, height, width)
    column_features = torch.cat([columns.sin(), columns.cos()])[:, None, :].expand(-1, height, width)
    return torch.cat([row_features, column_features]).float().contiguous()


class SlicePositionLabels:
    """Class labels for the prior: the bin of each slice's position along the stack, or nothing.

    With ``"slice_position"`` the slice index parsed from each name (:func:`parse_slice_index`) is binned over the
    range of indices seen in the training split: ``bin = floor((index - low) / (high - low + 1) * num_bins)``. A
    model conditioned on the bin knows whether to draw a slice near the base of the brain (small, with temporal
    lobes and cerebellum) or near the vertex, which a raster-order prior otherwise has to guess from the first
    rows. When the training names carry no slice index (e.g. images from another source) every label is 0, so
    the run still works, as an unconditioned model with a constant bias; a name without an index among names that
    have one gets the middle bin.

    Args:
        conditioning: ``"none"`` or ``"slice_position"``.
        num_bins: number of position bins (the prior's ``num_classes``).
        index_range: ``(low, high)`` slice indices of the training split, or None when no name carries one.
        class_counts: number of training slices in each bin, used to draw sample labels like the data.
    """

    def __init__(
        self,
        conditioning: str = "slice_position",
        num_bins: int = 8,
        index_range: Sequence[int] | None = None,
        class_counts: Sequence[int] | None = None,
    ) -> None:
        self.num_classes = num_condition_classes(conditioning, num_bins)
        self.conditioning = "none" if self.num_classes is None else "slice_position"
        self.index_range = None if index_range is None else (int(index_range[0]), int(index_range[1]))
        self.class_counts = None if class_counts is None else [int(c) for c in class_counts]

    @classmethod
    def fit(cls, conditioning: str, num_bins: int, train_codes: Mapping[str, Any]) -> SlicePositionLabels:
        """Fit the index range and class counts on the training split's code cache (:func:`load_or_encode_codes`)."""
        labels = cls(conditioning, num_bins)
        if labels.num_classes is None:
            return labels
        indices = torch.as_tensor(train_codes["slice_indices"])
        known = indices[indices >= 0]
        if known.numel() == 0:
            logger.warning(
                "prior_conditioning is 'slice_position' but no training image name carries a slice index "
                "(expected case_XXX_slice_Y or <volume>#slice<k>); every slice gets class 0."
            )
        else:
            labels.index_range = (int(known.min()), int(known.max()))
        counts = torch.bincount(labels(indices.tolist()), minlength=labels.num_classes)
        labels.class_counts = counts.tolist()
        return labels

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> SlicePositionLabels:
        """Rebuild from the ``"conditioning"`` entry of a prior checkpoint's metadata (:meth:`to_metadata`)."""
        return cls(
            metadata.get("type", "none"),
            metadata.get("num_bins") or 1,
            metadata.get("slice_index_range"),
            metadata.get("class_counts"),
        )

    def to_metadata(self) -> dict[str, Any]:
        """Plain values for a checkpoint's metadata (loadable with ``weights_only``)."""
        return {
            "type": self.conditioning,
            "num_bins": self.num_classes,
            "slice_index_range": None if self.index_range is None else list(self.index_range),
            "class_counts": self.class_counts,
        }

    def __call__(self, slice_indices: Sequence[int | None] | torch.Tensor) -> torch.Tensor | None:
        """Labels (N,) int64 for slice indices (None or negative: unknown), or None without conditioning."""
        if self.num_classes is None:
            return None
        values = slice_indices.tolist() if isinstance(slice_indices, torch.Tensor) else list(slice_indices)
        if self.index_range is None:
            return torch.zeros(len(values), dtype=torch.long)
        low, high = self.index_range
        span = high - low + 1
        labels = []
        for index in values:
            if index is None or index < 0:
                labels.append(self.num_classes // 2)
                continue
            position = (min(max(int(index), low), high) - low) / span
            labels.append(min(int(math.floor(position * self.num_classes)), self.num_classes - 1))
        return torch.tensor(labels, dtype=torch.long)

    def bin_description(self, label: int) -> str:
        """What a label stands for, for figures: ``"slices 4-5 of 0-15"`` (``"position bin k"`` without a range).

        Slice indices grow from the base of the brain to the vertex (axial slices in RAS order), which
        ``grid.png``'s heading says.
        """
        if self.num_classes is None:
            return ""
        if self.index_range is None:
            return f"position bin {int(label)}"
        low, high = self.index_range
        members = [i for i in range(low, high + 1) if int(self([i])[0]) == int(label)]
        if not members:
            return f"position bin {int(label)}"
        covered = f"{members[0]}" if len(members) == 1 else f"{members[0]}-{members[-1]}"
        return f"slice{'s' if len(members) > 1 else ''} {covered} of {low}-{high}"

    def sample_labels(self, num_samples: int) -> torch.Tensor | None:
        """Labels for ``num_samples`` samples following the training distribution of the bins, in order.

        Sample ``i`` gets the bin holding the ``(i + 0.5) / num_samples`` quantile of the training labels: the
        samples cover the bins in proportion to the data (as a fair comparison with real images needs) and are
        ordered from the base of the brain to the vertex, with no randomness.
        """
        if self.num_classes is None:
            return None
        counts = torch.tensor(self.class_counts or [1] * self.num_classes, dtype=torch.float64)
        if counts.sum() <= 0:
            counts = torch.ones(self.num_classes, dtype=torch.float64)
        cumulative = torch.cumsum(counts / counts.sum(), dim=0)
        quantiles = (torch.arange(num_samples, dtype=torch.float64) + 0.5) / num_samples
        labels = torch.searchsorted(cumulative, quantiles, right=True)
        return labels.clamp_(max=self.num_classes - 1).long()


# ------------------------------------------------------------------------------------------------------ dataset
class CodeDataset(Dataset):
    """The code maps of one split as items ``{"codes": int64 (h, w), "label": int64 (), "name": str}``.

    ``"label"`` is only present when ``labels`` conditions the prior.

    Args:
        codes: a split's cache entry from :func:`load_or_encode_codes`.
        labels: the prior's conditioning (:class:`SlicePositionLabels`), or None.
    """

    def __init__(self, codes: Mapping[str, Any], labels: SlicePositionLabels | None = None) -> None:
        self.codes = torch.as_tensor(codes["codes"])
        self.names = list(codes["names"])
        self.labels = None if labels is None else labels(torch.as_tensor(codes["slice_indices"]))
        if len(self.names) != len(self.codes):
            raise ValueError(f"the code cache holds {len(self.codes)} code maps but {len(self.names)} names.")

    def __len__(self) -> int:
        return len(self.codes)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item: dict[str, Any] = {"codes": self.codes[index].long(), "name": self.names[index]}
        if self.labels is not None:
            item["label"] = self.labels[index]
        return item
