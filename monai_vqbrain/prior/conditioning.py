"""What the prior is conditioned on: the slice position of each code map (parsed from its name and binned into
class labels, :class:`SlicePositionLabels`) and the fixed Fourier features of the position within a code map
(:func:`position_map`).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch

logger = logging.getLogger(__name__)

#: ways the prior can be conditioned: on nothing, or on the slice position (a class per bin of slice index)
CONDITIONINGS = ("none", "slice_position")

_SLICE_INDEX_PATTERNS = (
    re.compile(r"^case_\d+_slice_(\d+)(?:\.nii)?\.png$", re.IGNORECASE),
    re.compile(r"#slice(\d+)$"),
)


def parse_slice_index(name: str) -> int | None:
    """The slice index in a slice's name: ``Y`` of OASIS ``case_XXX_slice_Y.nii.png``, ``k`` of the NIfTI readers'
    ``<volume>#slice<k>``; None when the name carries none."""
    for pattern in _SLICE_INDEX_PATTERNS:
        if match := pattern.search(str(name)):
            return int(match.group(1))
    return None


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
    """Fixed Fourier features of the position in a code map: the prior's spatial conditioning map.

    For row ``r`` of ``h`` (``u = (r + 0.5) / h``) the features are ``sin(pi k u)`` and ``cos(pi k u)`` for
    ``k = 1 .. num_frequencies``, and the same for the column. A PixelCNN sees absolute position only through its
    zero padding, and never the bottom or right edge (its future), so without them it sometimes starts new
    structures in the last rows: blobs in the bottom corners of generated brains.

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
    range of indices seen in the training split: ``bin = floor((index - low) / (high - low + 1) * num_bins)``. The
    bin tells the prior whether to draw a slice near the base of the brain (small, with temporal lobes and
    cerebellum) or near the vertex, which a raster-order prior otherwise guesses from the first rows. When no
    training name carries a slice index every label is 0 (an unconditioned model with a constant bias); a name
    without one among names that have one gets the middle bin.

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
        labels.class_counts = torch.bincount(labels(indices), minlength=labels.num_classes).tolist()
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
        indices = torch.tensor([-1 if i is None or i < 0 else int(i) for i in values], dtype=torch.long)
        position = (indices.clamp(low, high) - low).double() / (high - low + 1)
        labels = (position * self.num_classes).floor().long().clamp(max=self.num_classes - 1)
        return torch.where(indices < 0, self.num_classes // 2, labels)

    def bin_description(self, label: int) -> str:
        """What a label stands for, for figures: ``"slices 4-5 of 0-15"`` (``"position bin k"`` without a range);
        slice indices grow from the base of the brain to the vertex (axial slices in RAS order)."""
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
        """Labels for ``num_samples`` samples: sample ``i`` gets the bin of the ``(i + 0.5) / num_samples`` quantile
        of the training labels, so the samples cover the bins in proportion to the data (as a fair comparison with
        real images needs), ordered from the base of the brain to the vertex, with no randomness."""
        if self.num_classes is None:
            return None
        counts = torch.tensor(self.class_counts or [1] * self.num_classes, dtype=torch.float64)
        if counts.sum() <= 0:
            counts = torch.ones(self.num_classes, dtype=torch.float64)
        cumulative = torch.cumsum(counts / counts.sum(), dim=0)
        quantiles = (torch.arange(num_samples, dtype=torch.float64) + 0.5) / num_samples
        labels = torch.searchsorted(cumulative, quantiles, right=True)
        return labels.clamp_(max=self.num_classes - 1).long()
