"""Ctrl-C during training: one line saying where it stopped and how to resume, not two tracebacks."""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path
from types import FrameType

from ignite.engine import Engine, Events

from ..errors import RunInterrupted

logger = logging.getLogger(__name__)


def _drop_misleading_engine_lines(record: logging.LogRecord) -> bool:
    """Drop two ignite log lines that mislead in a bundle run (a ``logging`` filter).

    MONAI creates its engines' state before ``run()``, so ignite announces every fresh start of an engine as
    "Engine run resuming from iteration 0, epoch N" (the trainer's start as epoch 0 even when
    :class:`~monai_vqbrain.handlers.TrainingCheckpointLoader` then resumes it at epoch 4, and each validation as a
    resumption); and on Ctrl-C ignite logs "Engine run is terminating due to exception: " with the empty message of a
    ``KeyboardInterrupt`` (or "interrupted", a validator's interrupt reaching the trainer), before
    :class:`InterruptHandler`'s own line.
    """
    message = record.getMessage()
    fresh_start = message.startswith("Engine run resuming from iteration 0, ")
    prefix = "Engine run is terminating due to exception: "
    interrupt = message in (prefix, prefix + str(RunInterrupted()))
    return not (fresh_start or interrupt)


class InterruptHandler:
    """Turn a Ctrl-C (``KeyboardInterrupt``) in an engine into one :class:`~monai_vqbrain.errors.RunInterrupted`.

    Attached first to a trainer (and to its validator), its ``EXCEPTION_RAISED`` handler runs before MONAI's
    ``StatsHandler``, which would log the interrupt with its whole traceback before Python prints it again. The
    bundle's error hook prints the message, ``interrupted at epoch N; resume with `--resume true```, and exits with
    status 130. Any other exception is raised on unchanged, for the error hook to report once.

    Args:
        resume_file: the trainer's ``<ckpt_dir>/last.pt``: if it exists the message says to resume, else to start
            again; None for a validator, whose interrupt the trainer reports with its epoch.
    """

    def __init__(self, resume_file: str | os.PathLike | None = None) -> None:
        self.resume_file = Path(resume_file) if resume_file is not None else None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EXCEPTION_RAISED, self)
        engine.logger.addFilter(_drop_misleading_engine_lines)  # added once: addFilter skips a filter it holds

    def __call__(self, engine: Engine, error: BaseException) -> None:
        interrupted = isinstance(error, KeyboardInterrupt) or (
            isinstance(error, RunInterrupted) and error.epoch is None
        )
        if not interrupted:
            raise error
        if self.resume_file is None:
            raise RunInterrupted() from None
        epoch = int(engine.state.epoch)
        if self.resume_file.is_file():
            message = f"interrupted at epoch {epoch}; resume with `--resume true`"
        else:
            message = f"interrupted at epoch {epoch}, before its first checkpoint; run the command again to start over"
        raise RunInterrupted(message, epoch=epoch) from None


class EpochEndInterruptHold:
    """Hold a Ctrl-C that arrives after an epoch's last iteration until that epoch's checkpoint is written.

    Between the last iteration and the resumable checkpoint, the epoch is validated (and may be saved as the best
    model): a Ctrl-C there would throw away an epoch that is trained and validated, and the resumed run would train
    it again. :meth:`hold` (at the last iteration) defers SIGINT; :meth:`release` (after the checkpoint) restores the
    previous handler and then raises the held ``KeyboardInterrupt``, so the run stops with that epoch done. A second
    Ctrl-C stops at once. Only the main thread can handle signals: elsewhere both do nothing.
    """

    def __init__(self) -> None:
        self._holding = False
        self._previous: object = None  # None too where the previous handler was not installed from Python
        self._pending = False

    def hold(self) -> None:
        """Defer SIGINT from now until :meth:`release`."""
        if threading.current_thread() is not threading.main_thread() or self._holding:
            return
        self._pending = False
        self._previous = signal.signal(signal.SIGINT, self._on_interrupt)
        self._holding = True

    def release(self, raise_held: bool = True) -> None:
        """Restore the previous SIGINT handler; raise ``KeyboardInterrupt`` if a Ctrl-C was held and ``raise_held``."""
        if not self._holding:
            return
        signal.signal(signal.SIGINT, self._previous if self._previous is not None else signal.default_int_handler)
        self._holding, pending, self._pending = False, self._pending, False
        if pending and raise_held:
            raise KeyboardInterrupt

    def _on_interrupt(self, signum: int, frame: FrameType | None) -> None:
        if self._pending:  # the second Ctrl-C: stop now
            self.release(raise_held=False)
            raise KeyboardInterrupt
        self._pending = True
        logger.warning(
            "Ctrl-C: stopping once this epoch's validation and checkpoint are written (Ctrl-C again stops now)"
        )
