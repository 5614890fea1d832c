"""Stop a training run whose loss or weights stop being finite, before anything of the diverged network is saved."""

from __future__ import annotations

import math

import torch
from ignite.engine import Engine, Events
from monai.utils import CommonKeys as Keys

from ..errors import VQBrainError
from ..utils.modules import unwrap_network


class TrainingDivergedError(VQBrainError):
    """Training produced a non-finite loss or non-finite weights: the run failed (exit status 1)."""


def non_finite_weights(network: torch.nn.Module) -> list[str]:
    """The names of the floating-point parameters and buffers of ``network`` that hold NaN or inf.

    Args:
        network: the network to check (a DDP wrapper's ``module`` is checked).
    """
    state = unwrap_network(network).state_dict()
    return [
        name for name, value in state.items() if value.is_floating_point() and not bool(torch.isfinite(value).all())
    ]


class StopOnDivergence:
    """Fail the run at the first non-finite training loss, and before an epoch ends with non-finite weights.

    A diverged run otherwise goes on to the end: validation scores the NaN network (SSIM reads 0.0), the checkpoint
    handlers save its NaN weights, and the run exits 0. This handler raises :class:`TrainingDivergedError` at
    ``ITERATION_COMPLETED`` for a NaN or inf loss and at ``EPOCH_COMPLETED`` for such a weight (a step after the
    epoch's last finite loss can leave one): attached before the validation and checkpoint handlers, it stops the
    epoch before they run, so the last good ``model.pt`` and ``last.pt`` stay.

    Args:
        network: the trained network, whose weights are checked at each epoch's end.
        learning_rate_key: the setting that sets the optimizer's learning rate, for the hint
            (``learning_rate``, ``prior_learning_rate``).
        loss_key: the key of the loss in ``engine.state.output``.
    """

    def __init__(self, network: torch.nn.Module, learning_rate_key: str = "learning_rate", loss_key: str = Keys.LOSS):
        self.network = network
        self.learning_rate_key = learning_rate_key
        self.loss_key = loss_key
        self.last_finite: tuple[int, float] | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._check_loss)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._check_weights)

    def _fail(self, engine: Engine, what: str) -> None:
        last = "no finite loss yet"
        if self.last_finite is not None:
            last = f"last finite loss {self.last_finite[1]:.4g} at iteration {self.last_finite[0]}"
        groups = getattr(getattr(engine, "optimizer", None), "param_groups", None)
        rate = f" (now {groups[0]['lr']:g})" if groups else ""
        raise TrainingDivergedError(
            f"training diverged at epoch {engine.state.epoch}, iteration {engine.state.iteration}: {what} ({last}); "
            f"no checkpoint of the diverged network was saved (those of the last good epoch, if any, are kept): lower "
            f"--{self.learning_rate_key}{rate} and train again."
        )

    def _check_loss(self, engine: Engine) -> None:
        output = engine.state.output
        loss = output.get(self.loss_key) if isinstance(output, dict) else output
        if loss is None:
            return
        value = float(loss.detach().float().mean()) if isinstance(loss, torch.Tensor) else float(loss)
        if not math.isfinite(value):
            self._fail(engine, f"the loss is {value}")
        self.last_finite = (engine.state.iteration, value)

    def _check_weights(self, engine: Engine) -> None:
        bad = non_finite_weights(self.network)
        if bad:
            self._fail(engine, f"{len(bad)} weight tensor(s) hold NaN or inf (e.g. {bad[0]})")
