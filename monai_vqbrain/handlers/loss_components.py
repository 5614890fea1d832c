"""Per-epoch means of every VQ-VAE loss component, published as trainer metrics."""

from __future__ import annotations

import torch
from ignite.engine import Engine, Events

from ..engines.adversarial import ADVERSARIAL_COMPONENTS
from ..engines.distributed import all_reduce_sum
from ..engines.trainer import LOSS_COMPONENTS


class LossComponentsHandler:
    """Average ``loss`` and each ``loss_<component>`` of the trainer's output over an epoch.

    At the end of every epoch it sets ``engine.state.metrics[f"{prefix}loss"]`` and ``[f"{prefix}<component>"]``
    for each component the trainer outputs (the adversarial ones only with an adversarial term), so MONAI's
    ``StatsHandler`` and ``TensorBoardStatsHandler`` log them per epoch. Sums stay on the device during the epoch
    (no host sync per iteration) and are summed across ranks under DDP.

    Args:
        prefix: prefix of the metric names.
    """

    def __init__(self, prefix: str = "train_") -> None:
        self.prefix = prefix
        self._sums: torch.Tensor | None = None
        self._count = 0
        self._components: tuple[str, ...] = LOSS_COMPONENTS

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._accumulate)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._publish)

    def _reset(self, engine: Engine) -> None:
        self._sums = None
        self._count = 0

    def _accumulate(self, engine: Engine) -> None:
        output = engine.state.output
        if self._sums is None:
            # fixed for a run: the trainer outputs the adversarial components on every iteration or never
            self._components = tuple(
                c for c in LOSS_COMPONENTS + ADVERSARIAL_COMPONENTS if c in LOSS_COMPONENTS or f"loss_{c}" in output
            )
        values = torch.stack(
            [output["loss"].detach().float()] + [output[f"loss_{c}"].float() for c in self._components]
        )
        self._sums = values if self._sums is None else self._sums + values
        self._count += 1

    def _publish(self, engine: Engine) -> None:
        if self._sums is None:
            return
        *sums, count = all_reduce_sum(torch.cat([self._sums, self._sums.new_tensor([self._count])])).tolist()
        for name, total in zip(("loss", *self._components), sums, strict=True):
            engine.state.metrics[f"{self.prefix}{name}"] = total / count
