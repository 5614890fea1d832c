"""MONAI dictionary transforms that turn a PNG file or an in-memory slice into a square grey image in [0, 1]."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor, PILReader
from monai.transforms import (
    Compose,
    EnsureChannelFirstd,
    EnsureTyped,
    LoadImaged,
    MapTransform,
    Resize,
    SpatialPad,
)
from PIL import Image

from monai_vqbrain.errors import ImageFileError

__all__ = [
    "normalize_pil_mode",
    "SliceReader",
    "ScaleByDtyped",
    "ToGreyscaled",
    "PadToSquared",
    "ResizeSquared",
    "get_slice_transforms",
]

_NATIVE_MODES = frozenset({"L", "LA", "RGB", "RGBA", "I;16", "I;16L", "I", "F"})


def normalize_pil_mode(image: Image.Image) -> Image.Image:
    """Convert a PIL image to a mode whose pixels map directly to grey, grey+alpha, RGB or RGBA channels.

    Palette images would otherwise load as palette indices and bilevel images as booleans; both are converted to
    8-bit so that :class:`ScaleByDtyped` sees the intensities the file shows.

    Args:
        image: an opened PIL image.
    """
    mode = image.mode
    if mode in _NATIVE_MODES:
        return image
    if mode in ("1", "La"):
        return image.convert("L" if mode == "1" else "LA")
    if mode in ("P", "PA", "RGBa"):
        return image.convert("RGBA")
    if mode.startswith("I;16"):
        # big-endian 16-bit pixels: 32-bit ints keep the values and are understood by numpy and torch
        return image.convert("I")
    return image.convert("RGB")


class SliceReader(PILReader):
    """PIL reader for 2D slices: arrays in (height, width) order as the file shows them, modes normalized.

    MONAI's default ``PILReader`` swaps the two axes (so that axis 0 is x, as for NIfTI); here rows stay rows so a
    slice read from a PNG has the same layout as a slice cut from a volume by :func:`load_nifti_slices`. The array
    is copied because ``numpy.asarray`` of a PIL image is read-only, which torch warns about.
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(converter=normalize_pil_mode, reverse_indexing=False, **kwargs)

    def get_data(self, img) -> tuple[np.ndarray, dict]:
        data, meta = super().get_data(img)
        return np.array(data), meta


def _image_name(image: torch.Tensor) -> str:
    """The file an image was loaded from, for error messages; a placeholder for in-memory images."""
    if isinstance(image, MetaTensor):
        return str(image.meta.get("filename_or_obj", "<in-memory image>"))
    return "<in-memory image>"


class ScaleByDtyped(MapTransform):
    """Scale integer images to [0, 1] by the largest value their bit depth holds; leave float images unchanged.

    An 8-bit image is divided by 255 and a 16-bit one by 65535 (MONAI loads 16-bit PNGs as int32, so any integer
    image whose values fit in 16 bits is treated as 16-bit), which keeps the absolute contrast of each slice: a
    dark slice stays dark, unlike with a per-image min-max rescale. Integer images beyond 16 bits are divided by
    their maximum. Float images (slices cut from NIfTI volumes) are already in [0, 1].
    """

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)

    @staticmethod
    def scale(image: torch.Tensor) -> torch.Tensor:
        """Return ``image`` as float32 in [0, 1] (integer input) or as float32 unchanged (float input)."""
        if image.dtype.is_floating_point:
            return image.float()
        if image.dtype == torch.bool:
            return image.float()
        if image.dtype == torch.uint8:
            peak = 255.0
        else:
            peak = max(float(image.max()), 65535.0) if image.numel() else 65535.0
        return (image.float() / peak).clamp_(0.0, 1.0)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.scale(d[key])
        return d


class ToGreyscaled(MapTransform):
    """Reduce a channel-first image to one grey channel: RGB(A) becomes the mean of R, G and B; alpha is dropped."""

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)

    @staticmethod
    def to_grey(image: torch.Tensor) -> torch.Tensor:
        """Return the one-channel grey version of a (C, H, W) image with C in 1 (grey), 2 (+alpha), 3 or 4."""
        channels = image.shape[0]
        if channels == 1:
            return image
        if channels == 2:
            return image[:1]
        if channels in (3, 4):
            return image[:3].mean(dim=0, keepdim=True)
        raise ImageFileError(
            f"'{_image_name(image)}' has {channels} channels; expected 1 (grey), 2 (grey+alpha), 3 (RGB) or 4 (RGBA)"
        )

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.to_grey(d[key])
        return d


class PadToSquared(MapTransform):
    """Zero-pad a channel-first 2D image symmetrically to a square of its larger side, keeping its aspect ratio."""

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            height, width = d[key].shape[-2:]
            if height != width:
                side = max(height, width)
                d[key] = SpatialPad((side, side), method="symmetric", mode="constant")(d[key])
        return d


class ResizeSquared(MapTransform):
    """Resize a square channel-first 2D image to ``size`` x ``size``.

    Shrinking uses area averaging (each output pixel is the mean of the input pixels it covers, so there is no
    aliasing and an exact 2x reduction is a 2x2 mean); enlarging uses bilinear interpolation, since area mode
    would replicate pixels into blocks.
    """

    def __init__(self, keys: KeysCollection, size: int, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.size = int(size)
        self._shrink = Resize((self.size, self.size), mode="area")
        self._enlarge = Resize((self.size, self.size), mode="bilinear", align_corners=False)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            shape = tuple(d[key].shape[-2:])
            if shape != (self.size, self.size):
                resize = self._shrink if max(shape) >= self.size else self._enlarge
                d[key] = resize(d[key])
        return d


def get_slice_transforms(image_size: int = 128, load_from_file: bool = True) -> Compose:
    """Build the deterministic pipeline from a slice item to ``{"image": float32 (1, S, S) in [0, 1], ...}``.

    Only the ``"image"`` key is transformed; other keys (the slice ``"name"``) pass through untouched and collate
    to a list. No step is random, so a ``CacheDataset`` caches the finished images.

    Args:
        image_size: the side ``S`` of the square output.
        load_from_file: True when ``item["image"]`` is a path to a PNG (or other 2D image) file; False when it is
            an in-memory channel-first array, such as the float slices of :func:`load_nifti_slices`.

    Raises:
        ValueError: when ``image_size`` is not a positive integer.
    """
    if int(image_size) != image_size or image_size < 1:
        raise ValueError(f"image_size must be a positive integer, got {image_size!r}")
    keys = "image"
    steps: list = []
    if load_from_file:
        # dtype=None keeps the stored integer type, which ScaleByDtyped needs to know the bit depth
        steps += [LoadImaged(keys, reader=SliceReader(), image_only=True, dtype=None), EnsureChannelFirstd(keys)]
    else:
        steps.append(EnsureChannelFirstd(keys, channel_dim=0))
    steps += [
        ScaleByDtyped(keys),
        ToGreyscaled(keys),
        PadToSquared(keys),
        ResizeSquared(keys, size=int(image_size)),
        # plain tensors: the metadata is not needed downstream and MetaTensor slows every op on the batch
        EnsureTyped(keys, dtype=torch.float32, track_meta=False),
    ]
    return Compose(steps)
