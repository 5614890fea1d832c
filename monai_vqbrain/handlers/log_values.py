"""What the trainer's per-iteration logs show, and how often."""

from __future__ import annotations

from collections.abc import Callable

import torch
from ignite.engine import Engine

from ..engines.trainer import LOSS_COMPONENTS

#: entries of the trainer output logged every ``log_interval`` iterations
ITERATION_LOG_KEYS = ("loss", *(f"loss_{c}" for c in LOSS_COMPONENTS), "perplexity", "codebook_usage")


def training_log_values(output: dict) -> dict[str, torch.Tensor]:
    """The scalar entries of a :class:`~monai_vqbrain.engines.VQVAETrainer` output worth logging per iteration."""
    return {key: output[key].detach() for key in ITERATION_LOG_KEYS if key in output}


def every_n_iterations(interval: int) -> Callable[[Engine, int], bool]:
    """An Ignite event filter true on every ``interval``-th iteration (and the first), for per-iteration logs.

    Logging reads tensors back to the host; doing it less often keeps the training loop free of syncs.
    """
    interval = max(1, int(interval))

    def event_filter(engine: Engine, event: int) -> bool:
        return event == 1 or event % interval == 0

    return event_filter
