"""What the trainer's per-iteration logs show, and how often."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from ignite.engine import Engine

from ..engines.adversarial import ADVERSARIAL_COMPONENTS
from ..engines.trainer import LOSS_COMPONENTS

_LOSS_KEYS = ("loss", *(f"loss_{c}" for c in LOSS_COMPONENTS + ADVERSARIAL_COMPONENTS))
#: entries of the trainer output logged every ``log_interval`` iterations (those present)
ITERATION_LOG_KEYS = (*_LOSS_KEYS, "perplexity", "codebook_usage")
_BATCH_LABELS = {"perplexity": "batch_perplexity", "codebook_usage": "batch_codebook_usage"}


def training_log_values(output: dict) -> dict[str, torch.Tensor]:
    """The scalar entries of a :class:`~monai_vqbrain.engines.VQVAETrainer` output worth logging per iteration.

    The codebook statistics cover one batch: they are labelled ``batch_perplexity`` and ``batch_codebook_usage``,
    unlike the whole epoch's ``train_perplexity`` and ``train_codebook_usage`` (``CodebookUsageHandler``).

    Args:
        output: the trainer's output of one iteration.
    """
    return {_BATCH_LABELS.get(key, key): output[key].detach() for key in ITERATION_LOG_KEYS if key in output}


def every_n_iterations(interval: int) -> Callable[[Engine, int], bool]:
    """An Ignite event filter true on every ``interval``-th iteration (and the first), for per-iteration logs.

    Logging reads tensors back to the host; doing it less often keeps the training loop free of syncs.
    """
    interval = max(1, int(interval))

    def event_filter(engine: Engine, event: int) -> bool:
        return event == 1 or event % interval == 0

    return event_filter


def _as_number(value: Any) -> Any:
    """A 1-tuple or 0-d tensor as its value, dict values likewise; anything else unchanged."""
    if isinstance(value, (tuple, list)) and len(value) == 1:
        value = value[0]
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    if isinstance(value, dict):
        return {key: _as_number(item) for key, item in value.items()}
    return value


def tracking_log_values(output: dict) -> dict[str, float]:
    """:func:`training_log_values` as Python floats, the values experiment trackers (MLflow) accept."""
    return {key: float(value) for key, value in training_log_values(output).items()}


def numeric_tracking_outputs(handlers: Sequence[Any]) -> list[Any]:
    """Make the experiment-tracking handlers among ``handlers`` log numbers; return the handlers.

    ``--tracking mlflow`` adds MONAI's ``MLFlowHandler`` with ``from_engine(['loss'], first=True)``, which on a
    trainer that does not decollate its output (ours, for speed) gives the loss as a 1-tuple that MLflow rejects.
    MONAI has no switch for this, so the handler's ``output_transform`` is wrapped to unpack such values.

    Args:
        handlers: the trainer's handlers (instantiated); only ``MLFlowHandler`` instances are changed.
    """
    from monai.handlers import MLFlowHandler

    for handler in handlers:
        if isinstance(handler, MLFlowHandler) and not getattr(handler.output_transform, "_numeric", False):
            transform = handler.output_transform

            def numeric(output: Any, transform: Callable = transform) -> Any:
                return _as_number(transform(output))

            numeric._numeric = True  # type: ignore[attr-defined]
            handler.output_transform = numeric
    return list(handlers)
