"""Training the PixelCNN prior: batch preparation, trainer, inferer, and the checks and metadata of a prior run."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from monai.engines.utils import IterationEvents, PrepareBatch
from monai.inferers import Inferer
from monai.utils.enums import CommonKeys as Keys

from ..engines.precision import autocast, parse_amp, resolve_amp
from ..engines.trainer import MixedPrecisionTrainer
from ..errors import CheckpointError
from ..utils.checkpoint import METADATA_KEY, load_checkpoint
from ..utils.modules import unwrap_network
from ..utils.run_checkpoints import check_checkpoint_dir, network_metadata
from .codes import vqvae_fingerprint
from .conditioning import SlicePositionLabels, position_map

#: the files a prior training run writes into ``ckpt_dir``: the best weights, then the resumable state
PRIOR_CHECKPOINTS = ("prior.pt", "prior_last.pt")

# the GatedPixelCNN arguments that change its weights or what it computes (dropout, off when sampling, does not)
NETWORK_SETTINGS = (
    "spatial_dims",
    "num_embeddings",
    "out_channels",
    "channels",
    "num_layers",
    "kernel_size",
    "num_classes",
    "cond_channels",
)


def training_loss(output: dict[str, Any]) -> torch.Tensor:
    """The loss of a :class:`PriorTrainer` iteration output, for per-iteration logs (``output_transform``)."""
    return output[Keys.LOSS].detach()


def lower_is_better(current: float, best: float) -> bool:
    """``metric_cmp_fn`` for a non-negative key metric to minimise, such as the validation NLL (MONAI's default
    keeps the highest). MONAI's workflows start from ``best_metric = -1``, which older versions compare with the
    first value, so a negative ``best`` means "no best yet".
    """
    return best < 0 or current < best


class PriorPrepareBatch(PrepareBatch):
    """Return ``(codes, codes, (), network_kwargs)`` from a :class:`~monai_vqbrain.prior.CodeDataset` batch: the
    codes are the prior's input and target; the network keyword arguments hold ``class_labels`` when the batch has
    labels and ``cond_map`` (:func:`~monai_vqbrain.prior.position_map`) when ``position_frequencies`` is positive.

    Args:
        codes_key: key of the code maps in the batch.
        label_key: key of the class labels; batches without it give no labels.
        position_frequencies: frequencies of the position features; 0 gives no ``cond_map``.
    """

    def __init__(self, codes_key: str = "codes", label_key: str = "label", position_frequencies: int = 0) -> None:
        self.codes_key = codes_key
        self.label_key = label_key
        self.position_frequencies = int(position_frequencies)
        self._maps: dict[tuple, torch.Tensor] = {}

    def __call__(
        self,
        batchdata: dict[str, torch.Tensor],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor, tuple, dict[str, torch.Tensor]]:
        if not isinstance(batchdata, dict) or self.codes_key not in batchdata:
            raise ValueError(f"expected a dictionary batch with key '{self.codes_key}'.")
        codes = batchdata[self.codes_key].to(device=device, non_blocking=non_blocking, dtype=torch.long)
        network_kwargs = {}
        if self.label_key in batchdata:
            network_kwargs["class_labels"] = batchdata[self.label_key].to(
                device=device, non_blocking=non_blocking, dtype=torch.long
            )
        if self.position_frequencies > 0:
            key = (tuple(codes.shape[1:]), codes.device)
            if key not in self._maps:  # the map depends only on the size: build it once per size and device
                self._maps[key] = position_map(codes.shape[1:], self.position_frequencies).to(codes.device)
            network_kwargs["cond_map"] = self._maps[key].expand(codes.shape[0], -1, -1, -1)
        return codes, codes, (), network_kwargs


class PriorInferer(Inferer):
    """Logits of the prior for a batch of code maps, as float32 (under autocast when ``amp``).

    Args:
        amp: run the network under autocast (bf16 on CPU): True, False, or ``"auto"`` for mixed precision only
            where the inputs' device runs it natively; the logits are returned as float32 either way, so the NLL is
            computed in full precision.
    """

    def __init__(self, amp: bool | str = False) -> None:
        super().__init__()
        self.amp = parse_amp(amp)  # resolved per call: the device is known only then

    def __call__(self, inputs: torch.Tensor, network: torch.nn.Module, *args: Any, **kwargs: Any) -> torch.Tensor:
        with autocast(inputs.device, resolve_amp(self.amp, inputs.device)):
            logits = network(inputs, *args, **kwargs)
        return logits.float()


class PriorTrainer(MixedPrecisionTrainer):
    """Train a :class:`~monai_vqbrain.networks.GatedPixelCNN` on code maps by cross-entropy, with
    :class:`PriorPrepareBatch` and ``loss_function`` a ``torch.nn.CrossEntropyLoss`` (nats per code) computed on
    float32 logits; otherwise as :class:`~monai_vqbrain.engines.MixedPrecisionTrainer`.

    After each iteration ``engine.state.output`` holds ``image`` and ``label`` (both the code maps), ``pred`` (the
    detached float32 logits, for training metrics) and ``loss``.

    Args:
        kwargs: arguments of :class:`~monai_vqbrain.engines.MixedPrecisionTrainer` (``max_grad_norm`` and those of
            :class:`monai.engines.SupervisedTrainer`).
    """

    def _iteration(self, engine: PriorTrainer, batchdata: dict[str, torch.Tensor]) -> dict:  # type: ignore[override]
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        batch = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        codes, targets = batch[0], batch[1]
        args, kwargs = (batch[2], batch[3]) if len(batch) == 4 else ((), {})
        engine.state.output = {Keys.IMAGE: codes, Keys.LABEL: targets}
        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)

        with autocast(engine.state.device, engine.amp):
            logits = engine.network(codes, *args, **kwargs)
        # the softmax over hundreds of codes is computed in float32: bf16 would blur the small probabilities
        logits = logits.float()
        loss = engine.loss_function(logits, targets)
        engine.state.output[Keys.PRED] = logits.detach()
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        engine.state.output[Keys.LOSS] = loss
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        engine.backward_and_step(loss)
        return engine.state.output


def check_prior_run(
    ckpt_dir: str | os.PathLike,
    vqvae_checkpoint: str | os.PathLike,
    resume: bool = False,
    overwrite: bool = False,
    max_epochs: int | None = None,
    image_size: int | None = None,
) -> Path | None:
    """Checks a prior training run makes before it writes anything: the VQ-VAE checkpoint exists, prior checkpoints
    are not overwritten unless asked (:func:`~monai_vqbrain.workflows.check_checkpoint_dir`), and a resumed run
    continues over the VQ-VAE its checkpoint was trained on, as other codes make the saved weights meaningless.

    Args:
        ckpt_dir: the folder of the checkpoints.
        vqvae_checkpoint: the trained VQ-VAE (``<ckpt_dir>/model.pt``).
        resume: continue from ``<ckpt_dir>/prior_last.pt``.
        overwrite: start over existing prior checkpoints.
        max_epochs: the run's ``prior_max_epochs``; a resumed state that has trained as many is refused.
        image_size: the run's image size; a resumed state trained at another is refused.

    Returns:
        The checkpoint to resume from, if any.

    Raises:
        CheckpointError: for a missing VQ-VAE, prior checkpoints that would be overwritten, nothing to resume from,
            or a resumed checkpoint trained over another VQ-VAE.
    """
    vqvae_sha256 = vqvae_fingerprint(vqvae_checkpoint)
    expected = {} if image_size is None else {"image_size": image_size}
    resumable = check_checkpoint_dir(
        ckpt_dir, resume, overwrite, PRIOR_CHECKPOINTS, max_epochs, expected, max_epochs_key="prior_max_epochs"
    )
    if resumable is not None:
        metadata = load_checkpoint(resumable).get(METADATA_KEY, {}) or {}
        saved = metadata.get("vqvae_sha256")
        if saved is not None and saved != vqvae_sha256:
            raise CheckpointError(
                f"'{resumable}' was trained over the codes of another VQ-VAE checkpoint than '{vqvae_checkpoint}' "
                f"(the VQ-VAE was retrained since); its weights do not fit the new codes: pass --overwrite true to "
                f"train the prior again."
            )
    return resumable


def prior_network_settings(network: torch.nn.Module) -> dict[str, Any]:
    """The constructor arguments of a :class:`~monai_vqbrain.networks.GatedPixelCNN`, enough to rebuild it."""
    network = unwrap_network(network)
    settings = {name: getattr(network, name) for name in NETWORK_SETTINGS}
    dropout = getattr(network.layers[0], "dropout", None) if hasattr(network, "layers") else None
    settings["dropout"] = float(dropout.p) if isinstance(dropout, torch.nn.Dropout) else 0.0
    return settings


def prior_metadata(
    network: torch.nn.Module,
    labels: SlicePositionLabels,
    train_codes: dict[str, Any],
    vqvae: torch.nn.Module,
    vqvae_checkpoint: str | os.PathLike,
    vqvae_sha256: str,
    image_size: int,
    position_frequencies: int = 0,
) -> dict[str, Any]:
    """Metadata of a prior checkpoint: enough to rebuild, condition and check the prior without its config.

    Args:
        network: the prior.
        labels: its conditioning.
        train_codes: the training split's code cache (for the code map size).
        vqvae: the VQ-VAE whose codes it models.
        vqvae_checkpoint: that VQ-VAE's checkpoint file.
        vqvae_sha256: that file's fingerprint; generation refuses a prior whose VQ-VAE has changed.
        image_size: the image size of the VQ-VAE.
        position_frequencies: frequencies of the position features the prior is conditioned on (0: none).
    """
    return {
        "network": type(unwrap_network(network)).__name__,
        "network_settings": prior_network_settings(network),
        "conditioning": labels.to_metadata(),
        "position_frequencies": int(position_frequencies),
        "code_size": [int(s) for s in train_codes["code_size"]],
        "image_size": int(image_size),
        "num_train_code_maps": len(train_codes["names"]),
        "vqvae_checkpoint": str(vqvae_checkpoint),
        "vqvae_sha256": vqvae_sha256,
        "vqvae": network_metadata(vqvae, image_size=image_size),
    }
