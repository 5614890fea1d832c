"""Code maps of a trained VQ-VAE for the prior: load the VQ-VAE, encode a split once, cache it, and serve it as a
dataset.

A split's code maps are cached in one file, written atomically, with a fingerprint of the VQ-VAE checkpoint's
bytes, the split's source files (path, size and modification time) and every setting that changes the images; a
cache whose fingerprint differs is recomputed, so the prior never trains on stale codes.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from monai.data import Dataset as MonaiDataset
from torch.utils.data import DataLoader, Dataset

from ..data.datasets import detect_dataset_format, get_datalist, get_dataset, resolve_dataset_dir
from ..data.oasis import canonical_split, find_png_files, png_split_folder
from ..data.volume_files import list_nifti_volumes
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
from .conditioning import SlicePositionLabels, parse_slice_index

# benchmarks/benchmark.py imports position_map from here, where it lived before conditioning.py
from .conditioning import position_map as position_map

logger = logging.getLogger(__name__)

#: version of the cache file layout; bumping it invalidates every existing cache
_CACHE_VERSION = 1

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


def _check_vqvae_file(path: str | os.PathLike) -> Path:
    missing = (
        f"VQ-VAE checkpoint '{Path(path)}' does not exist: the prior works on the codes of a trained VQ-VAE: train it "
        f"first (python -m monai.bundle run training --config_file bundle/configs/train.json) or point --ckpt_dir "
        f"at the folder holding its model.pt."
    )
    return check_checkpoint_file(path, missing, "VQ-VAE checkpoint")


def vqvae_fingerprint(path: str | os.PathLike) -> str:
    """The SHA-256 of a VQ-VAE checkpoint, which the prior's codes and checkpoint are tied to.

    Raises:
        CheckpointError: when the checkpoint does not exist, saying how to train it.
    """
    return file_sha256(_check_vqvae_file(path))


def load_vqvae(
    network: torch.nn.Module,
    checkpoint: str | os.PathLike,
    image_size: int | None = None,
    device: str | torch.device | None = None,
) -> torch.nn.Module:
    """Load a trained VQ-VAE checkpoint into ``network`` and return it in eval mode (in training mode the quantizer
    updates its EMA codebook, and may restart codes, on every batch: the codes would change while computed).

    Args:
        network: the configured VQ-VAE (``network_def``); a DDP wrapper's ``module`` is used.
        checkpoint: its checkpoint, ``<ckpt_dir>/model.pt``.
        image_size: the configured image size, checked against the checkpoint's metadata.
        device: where to load the weights (default: where the network is).

    Raises:
        CheckpointError: when the checkpoint is missing, unreadable, of another network or another image size.
    """
    path = _check_vqvae_file(checkpoint)
    network = unwrap_network(network)
    if device is None:
        device = next(network.parameters()).device
    expected = None if image_size is None else {"image_size": image_size}
    load_network_weights(network, path, expected, device)
    return network.eval()


def codes_fingerprint(vqvae_sha256: str, dataset_kwargs: Mapping[str, Any], split: str, image_size: int) -> str:
    """The SHA-256 hex digest of everything a split's code maps depend on (see the module's description).

    Args:
        vqvae_sha256: the VQ-VAE checkpoint's :func:`vqvae_fingerprint`.
        dataset_kwargs: the arguments of :func:`~monai_vqbrain.data.get_dataset` (``train.json``'s
            ``dataset_kwargs``).
        split: the split.
        image_size: the image size the VQ-VAE encodes.
    """
    split = canonical_split(split)
    # the files the split is read from, listed without opening them
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
    stats = [(path, path.stat()) for path in files]
    description = {
        "version": _CACHE_VERSION,
        "vqvae_sha256": vqvae_sha256,
        "split": split,
        "image_size": int(image_size),
        "format": dataset_format,
        "settings": {key: dataset_kwargs.get(key) for key in _IMAGE_SETTINGS},
        "files": [[str(path), stat.st_size, stat.st_mtime_ns] for path, stat in stats],
    }
    return hashlib.sha256(json.dumps(description, sort_keys=True, default=str).encode("utf-8")).hexdigest()


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
    model = unwrap_network(vqvae).eval()
    device = torch.device(device) if device is not None else next(model.parameters()).device
    amp = as_bool(amp, "amp")
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    codes: list[torch.Tensor] = []
    names: list[str] = []
    # minutes of silence on a large split under load read as a hang: say what runs, and how far it is, each quarter
    total, started, quarter = len(dataset), time.perf_counter(), 1
    logger.info(f"encoding {total} slices to code maps")
    for batch in loader:
        images = batch["image"]
        images = images.as_tensor() if hasattr(images, "as_tensor") else images
        with autocast(device, amp):
            codes.append(model.index_quantize(images.to(device)).cpu())
        names += [str(name) for name in batch.get("name", [f"image_{len(names) + i}" for i in range(len(images))])]
        reached = min(4 * len(names) // total, 3)  # the last quarter reached, at most the third
        if reached >= quarter:
            logger.info(f"encoding: {len(names)}/{total} slices ({time.perf_counter() - started:.0f} s)")
            quarter = reached + 1
    if not codes:
        raise DatasetError("there are no images to encode: the split is empty.")
    return torch.cat(codes).long(), names


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
    preprocessing: Callable | None = None,
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
        overwrite: encode again over a damaged cache (its fingerprint matches, its contents are not code maps of this
            VQ-VAE) instead of refusing it.
        preprocessing: the transform from a datalist item to ``{"image", ...}`` (the bundle passes its config's, so
            the codes are of the images the VQ-VAE was trained on); None: :func:`~monai_vqbrain.data.get_dataset`'s.

    Returns:
        ``{"codes": int16 (N, h, w), "names": [str], "slice_indices": int64 (N,) (-1: none in the name),
        "fingerprint": str, "split": str, "num_embeddings": int, "code_size": [h, w], "image_size": int}``.

    Raises:
        CheckpointError: one line naming the cache and how to recover, when it is damaged and ``overwrite`` is off.
    """
    cache_file = Path(cache_file)
    split = canonical_split(split)
    fingerprint = codes_fingerprint(vqvae_sha256, dataset_kwargs, split, image_size)
    codebook = getattr(unwrap_network(vqvae), "num_embeddings", None)
    cached = _read_cache(cache_file)
    reason = "no cache yet" if cached is None else "the VQ-VAE checkpoint or the data changed"
    if cached is not None and cached["fingerprint"] == fingerprint:
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
    if preprocessing is not None:
        # which images: get_datalist's share of get_dataset's arguments (how they are built is `preprocessing`)
        listed = inspect.signature(get_datalist).parameters
        listing = {key: value for key, value in dataset_kwargs.items() if key in listed}
        dataset: Dataset = MonaiDataset(get_datalist(split=split, **listing), transform=preprocessing)
    else:
        # cache_rate=0: the images are read once here, caching them in memory would only cost memory
        dataset = get_dataset(split=split, **{**dict(dataset_kwargs), "image_size": image_size, "cache_rate": 0.0})
    num_workers = int(dataset_kwargs.get("num_workers", 0) or 0)
    codes, names = encode_dataset(vqvae, dataset, device, batch_size=batch_size, num_workers=num_workers, amp=amp)
    num_embeddings = int(codebook) if codebook is not None else int(codes.max()) + 1
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


class CodeDataset(Dataset):
    """The code maps of one split as items ``{"codes": int64 (h, w), "label": int64 (), "name": str}``, with
    ``"label"`` only when ``labels`` conditions the prior.

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
