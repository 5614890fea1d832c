"""Batch preparation for autoencoders: the target of a reconstruction is its input."""

from __future__ import annotations

from typing import Any

import torch
from monai.engines.utils import PrepareBatch


class AutoencoderPrepareBatch(PrepareBatch):
    """Return ``(image, image)`` from a dictionary batch, moved to ``device`` in channels-last layout.

    Args:
        image_key: key of the images in the batch.
        channels_last: use the channels-last memory layout, faster for 2D convolutions on CPU and CUDA.
    """

    def __init__(self, image_key: str = "image", channels_last: bool = True) -> None:
        self.image_key = image_key
        self.channels_last = channels_last

    def __call__(
        self,
        batchdata: dict[str, torch.Tensor],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(batchdata, dict) or self.image_key not in batchdata:
            raise ValueError(f"expected a dictionary batch with key '{self.image_key}'.")
        images = batchdata[self.image_key]
        # MetaTensor bookkeeping costs time on every op and is not needed past the data pipeline
        images = images.as_tensor() if hasattr(images, "as_tensor") else images
        images = images.to(device=device, non_blocking=non_blocking, **kwargs)
        if self.channels_last and images.ndim == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, images
