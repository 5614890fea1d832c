"""A JSON record of every epoch's metrics, for the loss-curve figure and for resumed runs."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ignite.engine import Engine, Events

from ..engines.distributed import is_main_process
from ..errors import CheckpointError
from ..utils.io import atomic_write_text


class HistoryFileError(CheckpointError):
    """A training history file that is not what :class:`TrainingHistoryHandler` writes (damaged or edited)."""


def read_history(history_file: str | os.PathLike) -> list[dict]:
    """Read a history file written by :class:`TrainingHistoryHandler` (an empty list when there is none).

    Raises:
        HistoryFileError: one line naming the file and how to recover, when it is not readable JSON or not a list
            of per-epoch records (dictionaries with an integer ``epoch``).
    """
    path = Path(history_file)
    if not path.is_file():
        return []
    problem = None
    try:
        records = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        records, problem = None, f"it is not readable JSON: {error}"
    if problem is None and not isinstance(records, list):
        problem = f"it holds a {type(records).__name__}, not a list of per-epoch records"
    if problem is None:
        for position, record in enumerate(records):
            epoch = record.get("epoch") if isinstance(record, dict) else None
            if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
                problem = f"its record {position} is not a per-epoch record with an integer 'epoch'"
                break
    if problem is not None:
        raise HistoryFileError(
            f"training history '{path}' is damaged ({problem}); delete it (a resumed run then records only the "
            f"epochs it trains), or pass --overwrite true to train a new run, which rewrites it."
        )
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
        # a new run (epoch 0) keeps none of an earlier run's records, so it need not read (a damaged) one
        if engine.state.epoch == 0:
            self.records = []
            return
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
