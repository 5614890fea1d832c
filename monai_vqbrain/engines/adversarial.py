"""The patch adversarial term of a VQ-VAE's training (VQGAN): a discriminator that teaches the decoder tissue texture.

A decoder trained on pixel and SSIM losses alone returns the conditional mean of what a code could stand for: smooth
tissue that a texture statistic tells from a real slice at once. A patch discriminator scores every small patch of
an image as real or decoded; the decoder is pushed to make its patches score as real (Esser et al. 2021; MONAI
GenerativeModels' 2D VQGAN tutorial: L1 plus a PatchGAN least-squares loss). MONAI provides the discriminator
(:class:`monai.networks.nets.PatchDiscriminator`) and the loss (:class:`monai.losses.PatchAdversarialLoss`); this
module only holds the two steps of each iteration that :class:`~monai_vqbrain.engines.VQVAETrainer` runs.
"""

from __future__ import annotations

import torch
from monai.losses import PatchAdversarialLoss

from .precision import autocast, needs_grad_scaler

#: names of the adversarial loss components in ``engine.state.output`` (as ``loss_<name>``) when the term is used
ADVERSARIAL_COMPONENTS = ("adversarial", "discriminator")


class PatchAdversarialTerm:
    """A patch discriminator, its optimizer and the weight of its loss in the VQ-VAE's total.

    Each training iteration of :class:`~monai_vqbrain.engines.VQVAETrainer` adds ``weight`` times
    :meth:`generator_loss` to the VQ-VAE's loss, then takes one :meth:`discriminator_step`. Before ``start_epoch``
    neither happens (the decoder first learns to reconstruct, as in VQGAN's warm-up) and both components log 0.
    Under ``DistributedDataParallel`` each rank steps its own discriminator on its own batches (they are not
    synchronised; the saved one is rank 0's), while the VQ-VAE's gradients are reduced as usual.

    Args:
        discriminator: the patch discriminator, e.g. ``monai.networks.nets.PatchDiscriminator``; its last output is
            the patch logits.
        optimizer: the discriminator's optimizer.
        weight: weight of the adversarial loss in the VQ-VAE's total (MONAI's VQGAN tutorial: 0.01).
        start_epoch: the first epoch (1-based) the term is on.
        criterion: ``"least_squares"`` (LSGAN), ``"bce"`` or ``"hinge"``, see ``PatchAdversarialLoss``.
    """

    def __init__(
        self,
        discriminator: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        weight: float = 0.01,
        start_epoch: int = 1,
        criterion: str = "least_squares",
    ) -> None:
        if not weight >= 0:
            raise ValueError(f"adversarial weight must be >= 0, got {weight}.")
        if isinstance(start_epoch, bool) or int(start_epoch) != start_epoch or start_epoch < 1:
            raise ValueError(f"adversarial start_epoch must be an integer >= 1, got {start_epoch!r}.")
        self.discriminator = discriminator
        self.optimizer = optimizer
        self.weight = float(weight)
        self.start_epoch = int(start_epoch)
        self.loss = PatchAdversarialLoss(criterion=criterion)
        self._scaler: torch.amp.GradScaler | None = None

    def active(self, epoch: int) -> bool:
        """Whether the term is on at ``epoch`` (1-based)."""
        return self.weight > 0 and epoch >= self.start_epoch

    def _logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.discriminator(images.contiguous())[-1]

    def generator_loss(self, reconstruction: torch.Tensor) -> torch.Tensor:
        """The decoder's adversarial loss: its patches scored against "real" (call under the trainer's autocast)."""
        self.discriminator.train()
        return self.loss(self._logits(reconstruction), target_is_real=True, for_discriminator=False).float()

    def discriminator_step(
        self, reconstruction: torch.Tensor, images: torch.Tensor, device: torch.device, amp: bool
    ) -> torch.Tensor:
        """One discriminator step on detached reconstructions ("fake") and training images ("real"); its loss."""
        self.discriminator.train()
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(device, amp):
            fake = self.loss(self._logits(reconstruction.detach()), target_is_real=False, for_discriminator=True)
            real = self.loss(self._logits(images), target_is_real=True, for_discriminator=True)
        loss = 0.5 * (fake.float() + real.float())
        if self._scaler is None:  # as the trainer's: disabled (a pass-through) unless fp16 needs loss scaling
            self._scaler = torch.amp.GradScaler("cuda", enabled=needs_grad_scaler(device, amp))
        self._scaler.scale(loss).backward()
        self._scaler.step(self.optimizer)
        self._scaler.update()
        return loss.detach()
