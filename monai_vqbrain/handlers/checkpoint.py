"""Checkpoint handlers: the best model by validation metric, the latest training state, and resumption.

Not MONAI's ``CheckpointSaver`` / ``CheckpointLoader``: those write ignite's ``{name}_key_metric=...pt`` files with
no metadata, cannot refuse a checkpoint of another network or image size, load with ``torch.load``'s pickle
defaults rather than ``weights_only=True``, and do not reconcile a resumed run's best model (``BestMetricRestorer``)
after a kill between the two files being written.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events

from ..engines.distributed import is_main_process
from ..errors import CheckpointError
from ..utils.checkpoint import (
    DEFAULT_MAX_CHECKPOINT_BYTES,
    METADATA_KEY,
    check_finite_weights,
    check_state_dict_matches,
    checkpoint_byte_limit,
    load_checkpoint,
    read_model_metadata,
    save_checkpoint,
    save_model,
)
from ..utils.flags import as_bool
from ..utils.modules import unwrap_network
from .divergence import TrainingDivergedError, non_finite_weights
from .interrupt import EpochEndInterruptHold

logger = logging.getLogger(__name__)

# scheduler attributes that hold the schedule's length in epochs (CosineAnnealingLR, LinearLR, PolynomialLR, ...)
_SCHEDULE_LENGTHS = ("T_max", "total_iters")


def _refuse_non_finite(network: torch.nn.Module | None, save_path: Path, metric: float = 0.0) -> None:
    """Never write a checkpoint of a diverged network (the last good one stays): fail the run instead."""
    bad = non_finite_weights(network) if network is not None else []
    if bad or not math.isfinite(metric):
        what = f"{len(bad)} weight tensor(s) hold NaN or inf (e.g. {bad[0]})" if bad else f"its key metric is {metric}"
        raise TrainingDivergedError(
            f"training diverged: {what}; '{save_path}' was not written (the last good one is kept): lower the "
            f"learning rate (--learning_rate, --prior_learning_rate) and train again."
        )


class BestModelSaver:
    """Save the network's weights whenever the evaluator's key metric reaches a new best.

    Written on rank 0 by :func:`~monai_vqbrain.utils.checkpoint.save_model`: the state dict only, as model-zoo
    bundles' ``model.pt``, and ``metadata``, extended by the epoch and the metric value, in ``model.json`` beside it.

    Args:
        save_path: the checkpoint file (the bundle uses ``<ckpt_dir>/model.pt``).
        network: the network whose weights to save.
        metadata: what produced the weights (network settings, image size, ...).
    """

    def __init__(self, save_path: str | os.PathLike, network: torch.nn.Module, metadata: dict[str, Any] | None = None):
        self.save_path = Path(save_path)
        self.network = network
        self.metadata = dict(metadata or {})

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._save_if_best)

    def _save_if_best(self, engine: Engine) -> None:
        state = engine.state
        if state.best_metric_epoch != state.epoch or not is_main_process():
            return
        # a resumed run restores the best metric and its epoch from this file; when that epoch is replayed (the run
        # was killed between saving the best model and the resumable state) the epoch numbers match although this
        # epoch's own metric is not the best: only weights that scored the best metric may be saved with it
        current = state.metrics.get(getattr(state, "key_metric_name", None) or "")
        if current is None or float(current) != float(state.best_metric):
            return
        _refuse_non_finite(self.network, self.save_path, float(current))
        metadata = {**self.metadata, "epoch": engine.state.epoch, "key_metric": float(engine.state.best_metric)}
        save_model(self.save_path, unwrap_network(self.network).state_dict(), metadata)
        logger.info(f"saved best model (key metric {engine.state.best_metric:.4f}) to {self.save_path}")


class EpochSnapshotSaver:
    """Save the network's weights at the end of chosen epochs, each to its own file, as the best model is saved.

    For learning curves of what a model generates (a prior's samples after 2, 12, 24 epochs of one run); the
    sampler loads a snapshot like the best model. A replayed epoch (a resumed run) replaces its snapshot.

    Args:
        save_path: the file of a snapshot, ``{epoch}`` replaced by the epoch (``<ckpt_dir>/prior_epoch_{epoch}.pt``).
        network: the network whose weights to save.
        epochs: the epochs (1-based) after which to save; empty: none.
        metadata: what produced the weights (as :class:`BestModelSaver`'s), extended by the epoch.

    Raises:
        ValueError: for an epoch that is not an integer >= 1, or a path without ``{epoch}``.
    """

    def __init__(
        self,
        save_path: str | os.PathLike,
        network: torch.nn.Module,
        epochs: list[int] | tuple[int, ...] = (),
        metadata: dict[str, Any] | None = None,
    ) -> None:
        if "{epoch}" not in str(save_path):
            raise ValueError(f"save_path must contain '{{epoch}}', got {str(save_path)!r}.")
        if any(isinstance(e, bool) or not isinstance(e, int) or e < 1 for e in epochs):
            raise ValueError(f"epochs must be integers >= 1, got {list(epochs)!r}.")
        self.save_path = str(save_path)
        self.network = network
        self.epochs = set(epochs)
        self.metadata = dict(metadata or {})

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._save)

    def _save(self, engine: Engine) -> None:
        if engine.state.epoch not in self.epochs or not is_main_process():
            return
        path = Path(self.save_path.replace("{epoch}", str(engine.state.epoch)))
        metadata = {**self.metadata, "epoch": engine.state.epoch}
        save_model(path, unwrap_network(self.network).state_dict(), metadata)
        logger.info(f"saved the epoch {engine.state.epoch} snapshot to {path}")


class TrainingCheckpointSaver:
    """Save everything needed to resume training (weights, optimizer, scheduler, engine state) every epoch.

    The state of the engine the handler is attached to is saved under ``"trainer"``. A Ctrl-C after an epoch's last
    iteration is held until this epoch's checkpoint is written (:class:`EpochEndInterruptHold`): the run then stops
    with the epoch done, rather than training a validated epoch again when resumed.

    Args:
        save_path: the checkpoint file (the bundle uses ``<ckpt_dir>/last.pt``); replaced atomically each time.
        save_dict: objects with a ``state_dict``; ``"model"`` is unwrapped from DDP.
        metadata: what produced the checkpoint.
        interval: save every ``interval`` epochs (the last epoch is always saved).
    """

    def __init__(
        self,
        save_path: str | os.PathLike,
        save_dict: dict[str, Any],
        metadata: dict[str, Any] | None = None,
        interval: int = 1,
    ) -> None:
        self.save_path = Path(save_path)
        self.save_dict = save_dict
        self.metadata = dict(metadata or {})
        self.interval = max(1, interval)
        self._interrupts = EpochEndInterruptHold()

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._hold_interrupts)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._save)

    def _hold_interrupts(self, engine: Engine) -> None:
        # on every rank, so that all of them stop after the same epoch
        if engine.state.epoch_length and engine.state.iteration % engine.state.epoch_length == 0 and self._due(engine):
            self._interrupts.hold()

    def _due(self, engine: Engine) -> bool:
        return not (engine.state.epoch % self.interval and engine.state.epoch != engine.state.max_epochs)

    def _save(self, engine: Engine) -> None:
        try:
            if self._due(engine) and is_main_process():
                _refuse_non_finite(self.save_dict.get("model"), self.save_path)
                checkpoint = {
                    key: (unwrap_network(obj) if key == "model" else obj).state_dict()
                    for key, obj in self.save_dict.items()
                    if obj is not None
                }
                checkpoint["trainer"] = engine.state_dict()
                checkpoint[METADATA_KEY] = {**self.metadata, "epoch": engine.state.epoch}
                save_checkpoint(self.save_path, checkpoint)
        except BaseException:
            self._interrupts.release(raise_held=False)  # the run stops with this error, not a Ctrl-C
            raise
        self._interrupts.release()


class TrainingCheckpointLoader:
    """Resume training from a :class:`TrainingCheckpointSaver` file when the trainer starts.

    The network's architecture is checked first; the engine continues from the saved epoch up to its own ``max_epochs``.

    Args:
        load_path: the checkpoint file.
        load_dict: the objects to restore, keyed as when saved (``"model"``, ``"optimizer"``, ...).
        map_location: where to load tensors.
    """

    def __init__(
        self, load_path: str | os.PathLike, load_dict: dict[str, Any], map_location: str | torch.device = "cpu"
    ):
        self.load_path = Path(load_path)
        self.load_dict = load_dict
        self.map_location = map_location

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._load)

    def _load(self, engine: Engine) -> None:
        objects = {key: obj for key, obj in self.load_dict.items() if obj is not None}
        # the bound counts every module the state restores (the optimizer's moments are sized like the network)
        modules = [obj for obj in objects.values() if isinstance(obj, torch.nn.Module)]
        checkpoint = load_checkpoint(
            self.load_path, map_location=self.map_location, max_bytes=checkpoint_byte_limit(*modules)
        )
        missing = [key for key in objects if key not in checkpoint]
        if missing:
            raise CheckpointError(f"checkpoint '{self.load_path}' cannot resume training: it has no {missing} entries.")
        network = unwrap_network(self.load_dict["model"])
        check_state_dict_matches(network, checkpoint["model"], str(self.load_path))
        check_finite_weights(checkpoint["model"], str(self.load_path))
        stretched = []
        for key, obj in objects.items():
            # a schedule's length is a setting of this run, not state: resuming with more epochs must stretch the
            # schedule (the saved T_max would restart the cosine and raise the learning rate again)
            configured = {name: getattr(obj, name) for name in _SCHEDULE_LENGTHS if hasattr(obj, name)}
            (network if key == "model" else obj).load_state_dict(checkpoint[key])
            for name, value in configured.items():
                if getattr(obj, name) != value:
                    logger.info(f"{key}: {name} follows this run's settings: {getattr(obj, name)} -> {value}")
                    setattr(obj, name, value)
                    stretched.append((key, obj))
        for key, scheduler in stretched:
            _follow_stretched_schedule(key, scheduler)
        trainer_state = checkpoint.get("trainer")
        if trainer_state is not None:
            # ignite's engine state records iterations, not epochs; checkpoints are saved at epoch ends
            engine.state.epoch = int(trainer_state["iteration"]) // int(trainer_state["epoch_length"])
            engine.state.iteration = engine.state.epoch * engine.state.epoch_length
        logger.info(
            f"resuming training from {self.load_path}: {engine.state.epoch} epoch(s) done, continuing with epoch "
            f"{engine.state.epoch + 1} of {engine.state.max_epochs}"
        )


def _follow_stretched_schedule(key: str, scheduler: Any) -> None:
    """Set the optimizer's learning rates to where the stretched schedule is at the epoch reached.

    PyTorch's schedulers step recursively from the optimizer's current rate, so a new length alone would leave a
    finished schedule at its floor (12 epochs of a cosine resumed to 24 would all train at ``eta_min``). The
    closed form is the rate the longer schedule has at this epoch, had it been planned from the start.
    """
    closed_form = getattr(scheduler, "_get_closed_form_lr", None)
    if closed_form is None:
        return
    rates = closed_form()
    for group, rate in zip(scheduler.optimizer.param_groups, rates, strict=True):
        group["lr"] = rate
    scheduler._last_lr = list(rates)
    logger.info(f"{key}: learning rate {', '.join(f'{rate:.3g}' for rate in rates)} at epoch {scheduler.last_epoch}")


class BestMetricRestorer:
    """On a resumed run, start the validator from the best key metric of the saved best checkpoint.

    A new evaluator knows no best metric, so without this the first validation after resuming would replace the
    best checkpoint even when it is worse than the one saved before the interruption.

    Args:
        checkpoint: the best-model file (e.g. ``<ckpt_dir>/model.pt`` or ``prior.pt``) whose metadata (``model.json``
            beside it) holds ``key_metric`` and ``epoch``.
        validator: the evaluator whose ``best_metric`` to restore.
        enabled: False makes the handler do nothing (the bundle passes ``resume``).
    """

    def __init__(self, checkpoint: str | os.PathLike, validator: Engine, enabled: bool = True) -> None:
        self.checkpoint = Path(checkpoint)
        self.validator = validator
        self.enabled = as_bool(enabled, "resume")

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._restore)

    def _restore(self, engine: Engine) -> None:
        if not self.enabled or not self.checkpoint.is_file():
            return
        network = getattr(self.validator, "network", None)
        limit = checkpoint_byte_limit(network) if isinstance(network, torch.nn.Module) else DEFAULT_MAX_CHECKPOINT_BYTES
        metadata = read_model_metadata(self.checkpoint, max_bytes=limit)
        if "key_metric" in metadata and "epoch" in metadata:
            self.validator.state.best_metric = float(metadata["key_metric"])
            self.validator.state.best_metric_epoch = int(metadata["epoch"])
            logger.info(f"best key metric so far: {metadata['key_metric']:.4f} (epoch {metadata['epoch']})")
