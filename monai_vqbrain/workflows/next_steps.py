"""What to run after a training finishes: the next commands, with the finished run's own overrides."""

from __future__ import annotations

import json
import logging
import shlex
from collections.abc import Sequence
from pathlib import Path

from ..engines.distributed import is_main_process
from .monai_adapter import bundle_command_line

logger = logging.getLogger(__name__)

#: per finished workflow: (what comes next, its run id, the config added to train.json)
NEXT_STEPS: dict[str, tuple[tuple[str, str, str], ...]] = {
    "training": (
        ("evaluate it on the test split", "evaluating", "evaluate.json"),
        ("train the prior over its codes (to generate new slices)", "training_prior", "train_prior.json"),
    ),
    "training_prior": (("generate slices and measure them", "generating", "generate.json"),),
}

#: presets that choose the model (its network and its folders): every later workflow of that model needs them, last
MODEL_PRESETS = ("generative.json",)

# overrides of the finished training that the next workflow must not inherit: they steer that training only
_TRAINING_ONLY = frozenset({"resume", "overwrite", "max_epochs", "prior_max_epochs", "tracking"})


def next_step_commands(finished: str, argv: Sequence[str] | None = None) -> list[tuple[str, str]]:
    """The commands that come after workflow ``finished``: ``[(what it does, command line), ...]``.

    From a ``monai.bundle run`` command line the commands name the same config folder and repeat its overrides
    (data, folders, image size, network settings), less those that steer the finished training only (``resume``,
    ``overwrite``, ``max_epochs``), and keep a model preset it used (:data:`MODEL_PRESETS`, e.g. ``generative.json``)
    last in the list; from Python they name ``bundle/configs`` and say to pass the same overrides.

    Args:
        finished: the run id that finished (``training``, ``training_prior``).
        argv: the command line; ``sys.argv`` when None.
    """
    parsed = bundle_command_line(argv)
    folder, pairs, presets = Path("bundle/configs"), None, []
    if parsed is not None and parsed[1]:
        folder = Path(parsed[1][0]).parent
        pairs = [(key, value) for key, value in parsed[0] if key not in _TRAINING_ONLY]
        presets = [Path(name) for name in parsed[1] if Path(name).name in MODEL_PRESETS]
    commands = []
    for purpose, run_id, config in NEXT_STEPS.get(finished, ()):
        files = [folder / "train.json", folder / config, *presets]
        overrides = " <the same overrides>"
        if pairs is not None:
            # only the keys the next workflow's configs define (a prior's training keys mean nothing to generating)
            known = _top_level_keys(files)
            kept = [(key, value) for key, value in pairs if key.split("#")[0] in known]
            overrides = "".join(
                f" --{key}" + ("" if value is None else f" {shlex.quote(value)}") for key, value in kept
            )
        listed = ",".join(f"'{path.as_posix()}'" for path in files)
        commands.append((purpose, f'python -m monai.bundle run {run_id} --config_file "[{listed}]"{overrides}'))
    return commands


def _top_level_keys(files: Sequence[Path]) -> set[str]:
    """The top-level keys of config files (those that exist), ``+key`` merges included."""
    keys: set[str] = set()
    for path in files:
        try:
            keys |= {key.lstrip("+") for key in json.loads(path.read_text(encoding="utf-8"))}
        except (OSError, ValueError):
            continue
    return keys


def log_next_steps(finished: str, argv: Sequence[str] | None = None) -> None:
    """Log (rank 0, INFO) what to run after workflow ``finished``: see :func:`next_step_commands`.

    Args:
        finished: the run id that finished (``training``, ``training_prior``).
        argv: the command line; ``sys.argv`` when None.
    """
    if not is_main_process():
        return
    for purpose, command in next_step_commands(finished, argv):
        logger.info(f"{finished} finished; to {purpose}: {command}")
