"""The VQ-VAE training engine: MONAI's SupervisedTrainer with a VQ-VAE iteration and CPU/CUDA mixed precision."""

from __future__ import annotations

from typing import Any

import torch
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.engines.workflow import Workflow
from monai.utils.enums import CommonKeys as Keys

from .adversarial import ADVERSARIAL_COMPONENTS, PatchAdversarialTerm
from .precision import autocast, needs_grad_scaler, resolve_amp

#: names of the loss components in ``engine.state.output`` after each iteration
LOSS_COMPONENTS = ("reconstruction", "vq", "codebook", "commitment")


class MixedPrecisionTrainer(SupervisedTrainer):
    """A :class:`monai.engines.SupervisedTrainer` whose ``amp`` works on CPU too, with optional gradient clipping.

    ``amp`` is ``"auto"``, True or False (see :func:`~monai_vqbrain.engines.precision.resolve_amp`): mixed precision
    means bf16 autocast on CPU and on bf16-capable GPUs, fp16 with gradient scaling on other GPUs (MONAI's own
    ``amp`` is CUDA-only). Subclasses compute their loss under :func:`autocast` in ``_iteration``
    and finish with :meth:`backward_and_step`.

    Args:
        max_grad_norm: clip the gradient norm to this value; None disables clipping.
        kwargs: arguments of :class:`monai.engines.SupervisedTrainer`.
    """

    def __init__(self, *args: Any, max_grad_norm: float | None = None, **kwargs: Any) -> None:
        if "amp" in kwargs:
            device = kwargs["device"] if "device" in kwargs else args[0]
            kwargs["amp"] = resolve_amp(kwargs["amp"], device)
        super().__init__(*args, **kwargs)
        self.max_grad_norm = max_grad_norm
        # enabled only where fp16 needs loss scaling; disabled, it passes the loss and the step through unchanged
        self.grad_scaler = torch.amp.GradScaler("cuda", enabled=needs_grad_scaler(self.state.device, self.amp))

    def run(self) -> None:
        """Run the training, without the ``GradScaler`` MONAI's ``Trainer.run`` makes for ``amp``.

        That one is CUDA's, warns on a CPU and goes unused: this trainer steps with its own ``grad_scaler``.
        """
        self.scaler = None
        Workflow.run(self)

    def backward_and_step(self, loss: torch.Tensor) -> None:
        """Backpropagate ``loss`` (scaled for fp16), clip the gradients if asked, and step the optimizer."""
        self.grad_scaler.scale(loss).backward()
        self.fire_event(IterationEvents.BACKWARD_COMPLETED)
        if self.max_grad_norm is not None:
            self.grad_scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), self.max_grad_norm)
        self.grad_scaler.step(self.optimizer)
        self.grad_scaler.update()
        self.fire_event(IterationEvents.MODEL_COMPLETED)


class VQVAETrainer(MixedPrecisionTrainer):
    """Train a :class:`~monai_vqbrain.networks.VQVAE` with :class:`~monai_vqbrain.losses.VQVAELoss`.

    Everything :class:`monai.engines.SupervisedTrainer` offers (handlers, metrics, events, DDP-wrapped networks)
    applies; the network is run through ``inferer`` (MONAI's ``SimpleInferer`` by default, the bundle's
    ``train#inferer``) with ``return_details=True`` so every loss component and codebook statistic reaches
    ``engine.state.output``, and ``amp`` and clipping behave as in :class:`MixedPrecisionTrainer`.

    After each iteration ``engine.state.output`` holds ``image``, ``label``, ``pred`` (the reconstruction),
    ``loss`` (the total), ``loss_<component>`` for each of :data:`LOSS_COMPONENTS`, ``perplexity``,
    ``codebook_usage`` and ``indices`` (the code maps), all as tensors: nothing here forces a host sync.
    With an ``adversarial`` term it also holds ``loss_adversarial`` (the decoder's, already in ``loss`` with its
    weight) and ``loss_discriminator``, both 0 before the term's ``start_epoch``.

    Args:
        adversarial: a :class:`~monai_vqbrain.engines.PatchAdversarialTerm` trained beside the VQ-VAE; None: none.
        kwargs: arguments of :class:`MixedPrecisionTrainer` (``loss_function`` must be a ``VQVAELoss``).
    """

    def __init__(self, *args: Any, adversarial: PatchAdversarialTerm | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.adversarial = adversarial

    def _iteration(self, engine: VQVAETrainer, batchdata: dict[str, torch.Tensor]) -> dict:  # type: ignore[override]
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        images, targets = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        engine.state.output = {Keys.IMAGE: images, Keys.LABEL: targets}
        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)

        with autocast(engine.state.device, engine.amp):
            details = engine.inferer(images, engine.network, return_details=True)
        losses = engine.loss_function(details.reconstruction, targets, details.codebook_loss, details.commitment_loss)
        adversarial = engine.adversarial
        adversarial_on = adversarial is not None and adversarial.active(engine.state.epoch)
        total = losses["total"]
        if adversarial is not None:
            losses["adversarial"] = losses["discriminator"] = total.new_zeros(()).detach()
        if adversarial_on:
            with autocast(engine.state.device, engine.amp):
                losses["adversarial"] = adversarial.generator_loss(details.reconstruction)
            total = total + adversarial.weight * losses["adversarial"]
        engine.state.output[Keys.PRED] = details.reconstruction
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        engine.state.output[Keys.LOSS] = total
        for component in LOSS_COMPONENTS + (ADVERSARIAL_COMPONENTS if adversarial is not None else ()):
            engine.state.output[f"loss_{component}"] = losses[component].detach()
        engine.state.output["perplexity"] = details.perplexity
        engine.state.output["codebook_usage"] = details.codebook_usage
        engine.state.output["indices"] = details.indices
        engine.fire_event(IterationEvents.LOSS_COMPLETED)

        engine.backward_and_step(total)
        if adversarial_on:
            engine.state.output["loss_discriminator"] = adversarial.discriminator_step(
                details.reconstruction, targets, engine.state.device, engine.amp
            )
        return engine.state.output
