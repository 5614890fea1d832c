"""Ctrl-C during training: one line saying where it stopped and how to resume, not two tracebacks."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ignite.engine import Engine, Events

from ..errors import RunInterrupted

__all__ = ["InterruptHandler"]


class _MisleadingEngineLines(logging.Filter):
    """Drop two ignite log lines that mislead in a bundle run.

    MONAI creates its engines' state before ``run()``, so ignite announces every fresh start of an engine as
    "Engine run resuming from iteration 0, epoch N" (the trainer's start as epoch 0 even when
    :class:`~monai_vqbrain.handlers.TrainingCheckpointLoader` then resumes it at epoch 4, and each validation as a
    resumption); and on Ctrl-C ignite logs "Engine run is terminating due to exception: " with the empty message of a
    ``KeyboardInterrupt`` (or "interrupted", a validator's interrupt reaching the trainer), before
    :class:`InterruptHandler`'s own line.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        fresh_start = message.startswith("Engine run resuming from iteration 0, ")
        prefix = "Engine run is terminating due to exception: "
        # the KeyboardInterrupt's empty message, or a validator's RunInterrupted on its way to the trainer
        interrupt = message.startswith(prefix) and message[len(prefix) :] in ("", str(RunInterrupted()))
        return not (fresh_start or interrupt)


_FILTER = _MisleadingEngineLines()


class InterruptHandler:
    """Turn a Ctrl-C (``KeyboardInterrupt``) in an engine into one :class:`~monai_vqbrain.errors.RunInterrupted`.

    Attached first to a trainer (and to its validator), its ``EXCEPTION_RAISED`` handler runs before MONAI's
    ``StatsHandler``, which would log the interrupt with its whole traceback before Python prints it again. The
    bundle's error hook prints the message, ``interrupted at epoch N; resume with `--resume true```, and exits with
    status 130. Any other exception is raised on unchanged, to be reported once by the error hook (one line for a
    user error, Python's traceback for a bug).

    Args:
        resume_file: the trainer's resumable checkpoint (``<ckpt_dir>/last.pt``): whether it exists decides whether
            the message says to resume or to start again. None for a validator, whose interrupt the trainer
            reports with its epoch.
    """

    def __init__(self, resume_file: str | os.PathLike | None = None) -> None:
        self.resume_file = Path(resume_file) if resume_file is not None else None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EXCEPTION_RAISED, self)
        if _FILTER not in engine.logger.filters:
            engine.logger.addFilter(_FILTER)

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
