"""MONAI dictionary transforms that turn a PNG file, a slice of a volume or an in-memory slice into a square grey image.

MONAI has none that reads one slice of a cached volume, scales by bit depth (MONAI rescales by min/max), averages
RGB to grey, pads to the square of the larger side, or resizes by area or bilinear depending on the direction.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import PILReader
from monai.transforms import (
    Compose,
    EnsureChannelFirst,
    EnsureChannelFirstd,
    EnsureTyped,
    InvertibleTransform,
    LoadImage,
    MapTransform,
    Pad,
    Resize,
    SpatialPad,
)
from monai.utils import TraceKeys
from PIL import Image

from monai_vqbrain.data.limits import DEFAULT_MAX_VOLUME_VOXELS
from monai_vqbrain.data.slices import read_volume_plane
from monai_vqbrain.errors import ImageFileError

_NATIVE_MODES = frozenset({"L", "LA", "RGB", "RGBA", "I;16", "I;16L", "I", "F"})
# the other PIL modes a slice may have, and the mode each is converted to (big-endian 16-bit pixels to 32-bit ints,
# which numpy and torch understand; colour spaces other than RGB to RGB)
_CONVERSIONS = {"1": "L", "La": "LA", "P": "RGBA", "PA": "RGBA", "RGBa": "RGBA", "I;16B": "I"}
_CONVERSIONS.update(dict.fromkeys(("RGBX", "CMYK", "YCbCr", "LAB", "HSV"), "RGB"))
# the PIL modes normalize_pil_mode turns into grey, grey+alpha, RGB or RGBA channels
LOADABLE_MODES = _NATIVE_MODES | set(_CONVERSIONS)


def normalize_pil_mode(image: Image.Image) -> Image.Image:
    """Convert a PIL image to a mode whose pixels map directly to grey, grey+alpha, RGB or RGBA channels.

    Palette images would otherwise load as palette indices and bilevel images as booleans; both are converted to
    8-bit so that :class:`ScaleByDtyped` sees the intensities the file shows.

    Args:
        image: an opened PIL image.
    """
    if image.mode in _NATIVE_MODES:
        return image
    return image.convert(_CONVERSIONS.get(image.mode, "I" if image.mode.startswith("I;16") else "RGB"))


class SliceReader(PILReader):
    """PIL reader for 2D slices: arrays in (height, width) order as the file shows them, modes normalized.

    MONAI's default ``PILReader`` swaps the two axes (so that axis 0 is x, as for NIfTI); here rows stay rows so a
    slice read from a PNG has the same layout as a slice cut from a volume (:class:`LoadSliced`). The array
    is copied because ``numpy.asarray`` of a PIL image is read-only, which torch warns about.
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(converter=normalize_pil_mode, reverse_indexing=False, **kwargs)

    def get_data(self, img) -> tuple[np.ndarray, dict]:
        data, meta = super().get_data(img)
        return np.array(data), meta


class LoadSliced(MapTransform):
    """Load the 2D slice a datalist item names: a PNG file, or one slice of a NIfTI/Analyze volume.

    An item ``{"image": path}`` is a 2D image file, read by MONAI's ``LoadImage`` with :class:`SliceReader` and made
    channel-first. An item that also has ``"slice_axis"`` and ``"slice_index"`` (as listed by
    :func:`~monai_vqbrain.data.slices.list_volume_slices`) is that slice of the volume, as
    :func:`~monai_vqbrain.data.slices.read_volume_plane` reads it (MONAI's ``LoadImaged`` would read the whole
    volume for each of its slices). A file that vanished since it was listed is one error naming it.

    Args:
        keys: the key holding the path (``"image"``).
        max_volume_voxels: the most voxels a volume's header may declare; None allows any.
        allow_missing_keys: do not fail when a key is missing.
    """

    def __init__(
        self,
        keys: KeysCollection,
        max_volume_voxels: int | None = DEFAULT_MAX_VOLUME_VOXELS,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.max_volume_voxels = max_volume_voxels
        # dtype=None keeps the stored integer type, which ScaleByDtyped needs to know the bit depth
        self._load_image = Compose([LoadImage(reader=SliceReader(), image_only=True, dtype=None), EnsureChannelFirst()])

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            if d.get("slice_index") is None:
                if not os.path.exists(d[key]):
                    raise ImageFileError(
                        f"'{d[key]}' was listed but no longer exists; it was removed or moved while the run used it "
                        "(put it back, or start the run again)"
                    )
                d[key] = self._load_image(d[key])
            else:
                plane = read_volume_plane(d[key], int(d["slice_axis"]), int(d["slice_index"]), self.max_volume_voxels)
                d[key] = torch.from_numpy(plane)
        return d


class ScaleByDtyped(MapTransform):
    """Scale integer images to [0, 1] by the largest value their bit depth holds; leave float images unchanged.

    An 8-bit image is divided by 255 and a 16-bit one by 65535 (MONAI loads 16-bit PNGs as int32, so any integer
    image whose values fit in 16 bits is treated as 16-bit), which keeps the absolute contrast of each slice: a
    dark slice stays dark, unlike with a per-image min-max rescale. Integer images beyond 16 bits are divided by
    their maximum. Float images (slices cut from NIfTI volumes) are already in [0, 1].
    """

    @staticmethod
    def peak(image: torch.Tensor) -> float:
        """The value white has in an integer image: 255 at 8 bits (and for booleans), else 65535 or its maximum."""
        if image.dtype in (torch.uint8, torch.bool):
            return 255.0
        return max(float(image.max()), 65535.0) if image.numel() else 65535.0

    @staticmethod
    def scale(image: torch.Tensor) -> torch.Tensor:
        """Return ``image`` as float32 in [0, 1] (integer input) or as float32 unchanged (float input)."""
        if image.dtype.is_floating_point or image.dtype == torch.bool:
            return image.float()
        return (image.float() / ScaleByDtyped.peak(image)).clamp_(0.0, 1.0)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.scale(d[key])
        return d


class ToGreyscaled(MapTransform):
    """Reduce a channel-first image to one grey channel: RGB(A) becomes the mean of R, G and B; alpha is dropped."""

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
        name = getattr(image, "meta", {}).get("filename_or_obj", "<in-memory image>")  # a MetaTensor's file
        raise ImageFileError(
            f"'{name}' has {channels} channels; expected 1 (grey), 2 (grey+alpha), 3 (RGB) or 4 (RGBA)"
        )

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.to_grey(d[key])
        return d


class PadToSquared(MapTransform, InvertibleTransform):
    """Zero-pad a channel-first 2D image symmetrically to a square of its larger side, keeping its aspect ratio.

    Invertible: on a ``MetaTensor`` MONAI's ``Pad`` records the padding and its ``inverse`` crops it off again. One
    ``Pad`` pads every image (by the amounts ``SpatialPad`` computes for its size), so its records are its own.
    """

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self._pad = Pad(mode="constant")

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            side = max(d[key].shape[-2:])
            to_pad = SpatialPad((side, side), method="symmetric").compute_pad_width(d[key].shape[1:])
            # also when already square, so that every image records one step for inverse() to undo
            d[key] = self._pad(d[key], to_pad=to_pad)
        return d

    def inverse(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self._pad.inverse(d[key])
        return d


class ResizeSquared(MapTransform, InvertibleTransform):
    """Resize a square channel-first 2D image to ``size`` x ``size``.

    Shrinking uses area averaging (each output pixel is the mean of the input pixels it covers, so there is no
    aliasing and an exact 2x reduction is a 2x2 mean); enlarging uses bilinear interpolation, since area mode
    would replicate pixels into blocks. Invertible on a ``MetaTensor``: :meth:`inverse` resizes back to the recorded
    size by the same rule (MONAI's ``Resize.inverse`` would enlarge with the area mode used to shrink).
    """

    def __init__(self, keys: KeysCollection, size: int, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.size = int(size)
        self._shrink = Resize((self.size, self.size), mode="area")
        self._enlarge = Resize((self.size, self.size), mode="bilinear", align_corners=False)

    @staticmethod
    def resize(image: torch.Tensor, size: int) -> torch.Tensor:
        """``image`` resized to ``size`` x ``size`` by area (shrinking) or bilinear (enlarging), untracked."""
        mode = {"mode": "area"} if max(image.shape[-2:]) >= size else {"mode": "bilinear", "align_corners": False}
        resizer = Resize((size, size), **mode)
        with resizer.trace_transform(False):
            return resizer(image)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            # also at the right size (a no-op then), so that every image records one step for inverse() to undo
            resize = self._shrink if max(d[key].shape[-2:]) >= self.size else self._enlarge
            d[key] = resize(d[key])
        return d

    def inverse(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            original = self.pop_transform(d[key], check=False)[TraceKeys.ORIG_SIZE]
            d[key] = self.resize(d[key], int(original[-1]))
        return d


def get_slice_transforms(
    image_size: int = 128, load_from_file: bool = True, max_volume_voxels: int | None = DEFAULT_MAX_VOLUME_VOXELS
) -> Compose:
    """Build the deterministic pipeline from a datalist item to ``{"image": float32 (1, S, S) in [0, 1], ...}``.

    The steps of ``preprocessing`` in ``train.json``. Other keys than ``"image"`` (the slice ``"name"``) pass through
    and collate to a list. No step is random, so a ``CacheDataset`` caches the finished images.

    Args:
        image_size: the side ``S`` of the square output.
        load_from_file: True when ``item["image"]`` is a path (read by :class:`LoadSliced`); False when it is an
            in-memory channel-first array, such as a float slice already cut from a volume.
        max_volume_voxels: the most voxels a volume's header may declare; None allows any.

    Raises:
        ValueError: when ``image_size`` is not a positive integer.
    """
    if int(image_size) != image_size or image_size < 1:
        raise ValueError(f"image_size must be a positive integer, got {image_size!r}")
    keys = "image"
    if load_from_file:
        load = LoadSliced(keys, max_volume_voxels=max_volume_voxels)
    else:
        load = EnsureChannelFirstd(keys, channel_dim=0)
    return Compose(
        [
            load,
            ScaleByDtyped(keys),
            ToGreyscaled(keys),
            PadToSquared(keys),
            ResizeSquared(keys, size=int(image_size)),
            # plain tensors: the metadata is not needed downstream and MetaTensor slows every op on the batch
            EnsureTyped(keys, dtype=torch.float32, track_meta=False),
        ]
    )
