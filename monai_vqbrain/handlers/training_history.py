"""A JSON record of every epoch's metrics, for the loss-curve figure and for resumed runs."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ignite.engine import Engine, Events

from ..engines.distributed import is_main_process
from ..utils.io import atomic_write_text


def read_history(history_file: str | os.PathLike) -> list[dict]:
    """Read a history file written by :class:`TrainingHistoryHandler` (an empty list when there is none)."""
    path = Path(history_file)
    if not path.is_file():
        return []
    try:
        records = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"training history '{path}' is not readable JSON: {error}") from error
    if not isinstance(records, list):
        raise ValueError(f"training history '{path}' should hold a list of per-epoch records.")
    return records


class TrainingHistoryHandler:
    """After every epoch append the trainer's metrics (and the validator's, when it ran) to a JSON file.

    Attach it after the ``ValidationHandler`` so the epoch's validation metrics are there. On a resumed run the
    records of epochs after the resumed epoch are dropped, so the file always describes one consistent run.
    Only rank 0 writes; the file is replaced atomically.

    Args:
        history_file: the JSON file to write.
        validator: the evaluator whose ``state.metrics`` to record beside the trainer's, if any.
    """

    def __init__(self, history_file: str | os.PathLike, validator: Engine | None = None) -> None:
        self.history_file = Path(history_file)
        self.validator = validator
        self.records: list[dict] = []
        self._last_validation_iteration = -1

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._load)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._record)

    def _load(self, engine: Engine) -> None:
        self.records = [r for r in read_history(self.history_file) if r.get("epoch", 0) <= engine.state.epoch]

    def _record(self, engine: Engine) -> None:
        record: dict = {"epoch": engine.state.epoch, "iteration": engine.state.iteration}
        # Ignite's time of this epoch's iterations (handlers excluded): the figure a speed comparison needs
        epoch_seconds = engine.state.times.get(Events.EPOCH_COMPLETED.name)
        if epoch_seconds is not None:
            record["epoch_seconds"] = float(epoch_seconds)
        record.update({k: float(v) for k, v in engine.state.metrics.items() if isinstance(v, (int, float))})
        validator = self.validator
        if validator is not None and validator.state.iteration and validator.state.epoch == engine.state.epoch:
            record.update({k: float(v) for k, v in validator.state.metrics.items() if isinstance(v, (int, float))})
        self.records.append(record)
        if is_main_process():
            atomic_write_text(self.history_file, json.dumps(self.records, indent=1))
