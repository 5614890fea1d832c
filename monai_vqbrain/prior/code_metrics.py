"""The prior's metrics on code maps (NLL in bits per code, top-1 accuracy), as MONAI cumulative metrics."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from monai.metrics import CumulativeIterationMetric
from monai.metrics.utils import do_metric_reduction
from monai.utils import MetricReduction


class _CodeMetric(CumulativeIterationMetric):
    """Base of the per-image metrics of a prior's logits ``(B, K, H, W)`` against codes ``(B, H, W)``."""

    def __init__(self, reduction: MetricReduction | str = MetricReduction.MEAN, get_not_nans: bool = False) -> None:
        super().__init__()
        self.reduction = reduction
        self.get_not_nans = get_not_nans

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if y_pred.ndim != 4 or y.ndim != 3 or y_pred.shape[0] != y.shape[0] or y_pred.shape[2:] != y.shape[1:]:
            raise ValueError(
                f"expected logits (B, K, H, W) and codes (B, H, W), got {tuple(y_pred.shape)} and {tuple(y.shape)}."
            )
        return self._per_code(y_pred.float(), y.long()).flatten(1).mean(dim=1, keepdim=True)

    def _per_code(self, logits: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def aggregate(
        self, reduction: MetricReduction | str | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Reduce the per-image values buffered so far (the mean over images by default)."""
        data = self.get_buffer()
        if not isinstance(data, torch.Tensor):
            raise ValueError("the data to aggregate must be a PyTorch Tensor.")
        value, not_nans = do_metric_reduction(data, reduction or self.reduction)
        return (value, not_nans) if self.get_not_nans else value


class CodeNLLMetric(_CodeMetric):
    """Negative log-likelihood of the true codes under a prior's logits, in bits per code.

    Per image the mean over positions of ``-log2 softmax(logits)[code]``; images all have as many codes, so their
    mean is the per-code NLL of the set. A uniform guess over ``K`` codes costs ``log2(K)`` bits.

    Args:
        reduction: reduction over images (MONAI's ``MetricReduction``), ``"mean"`` by default.
        get_not_nans: also return the count of not-nan values from :meth:`aggregate`.
    """

    def _per_code(self, logits: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, codes, reduction="none") / math.log(2.0)


class CodeAccuracyMetric(_CodeMetric):
    """Fraction of positions where a prior's most likely code is the true code (teacher forced).

    Args:
        reduction: reduction over images (MONAI's ``MetricReduction``), ``"mean"`` by default.
        get_not_nans: also return the count of not-nan values from :meth:`aggregate`.
    """

    def _per_code(self, logits: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        return (logits.argmax(dim=1) == codes).float()
