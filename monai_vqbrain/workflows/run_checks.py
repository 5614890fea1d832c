"""Checks a bundle run makes before it writes anything (those of a checkpoint folder, and the metadata checkpoints
carry, are in :mod:`monai_vqbrain.utils.run_checkpoints`, a layer below, where the prior's trainer uses them too)."""

from __future__ import annotations

import logging
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import CheckpointError, OutputPathError, OutputWriteError
from ..utils.checkpoint import METADATA_KEY, load_checkpoint
from ..utils.flags import as_bool

logger = logging.getLogger(__name__)


def check_output_dirs(
    dirs: Mapping[str, str | os.PathLike],
    dataset_dir: str | os.PathLike | None = None,
    demo_dir: str | os.PathLike | None = None,
    read_dirs: Mapping[str, str | os.PathLike] | None = None,
) -> None:
    """Check, before any work, that the run can write into each of its output folders, and none is its data folder.

    A folder that does not exist yet is judged by its nearest existing parent, where an empty folder is created and
    removed at once (nothing is left behind), so a read-only or misnamed folder is reported at start-up rather than
    after minutes of training or inference.

    Args:
        dirs: setting name (``ckpt_dir``, ``output_dir``, ...) to the folder it names; for a setting named
            ``*_file`` (``history_file``) and for ``tracking_uri`` (``sqlite:///<path>``), the folder holding that
            file is judged, and an existing ``tracking_uri`` file must be an SQLite database.
        dataset_dir: the ``dataset_dir`` setting of a run that reads a dataset; None or ``""`` when it reads the
            demo data in ``demo_dir``.
        demo_dir: the ``demo_dir`` setting: the data folder when ``dataset_dir`` is not set.
        read_dirs: setting name to a folder of checkpoints the run reads (``generating``'s ``ckpt_dir``): an output
            folder may not be one of them, where its files would land among the checkpoints.

    Raises:
        OutputPathError: naming the setting and the folder when it is equal to or inside the data folder, is the
            root of the file system, is one of ``read_dirs``, or (``tracking_uri``) is a file but no SQLite database.
        OutputWriteError: naming the setting and the folder when it, or its nearest existing parent, is a file, a
            symbolic link to nothing, or is not writable (read-only file system, no permission).
    """
    data_key, data_dir = ("dataset_dir", dataset_dir) if dataset_dir not in (None, "") else ("demo_dir", demo_dir)
    # resolved, so that a symbolic link or '..' cannot hide that an output folder is inside the data
    data = Path(data_dir).expanduser().resolve() if data_dir not in (None, "") else None
    for key, named in dirs.items():
        if key == "tracking_uri":
            named = _tracking_database(str(named))
        named = Path(named).expanduser().absolute()
        path = named.parent if key.endswith("_file") or key == "tracking_uri" else named
        if data is not None and (path.resolve() == data or data in path.resolve().parents):
            where = "is" if path.resolve() == data else "is inside"
            raise OutputPathError(
                f"{key} '{named}' {where} {data_key} '{data}', which this run reads: what it writes there would be "
                f"read as data by later runs; choose another --{key}."
            )
        if path == named and path.resolve() == Path(path.resolve().anchor):
            raise OutputPathError(
                f"{key} '{named}' is the root of the file system: the run would write its files and folders at the "
                f"top of the disk; choose a folder of its own, e.g. --{key} {Path(path.anchor) / 'vqbrain_run'}."
            )
        for read_key, read in (read_dirs or {}).items():
            if path.resolve() == Path(read).expanduser().absolute().resolve():
                raise OutputPathError(
                    f"{key} '{named}' is {read_key} '{read}', whose checkpoints this run reads: its files would land "
                    f"among them; choose another --{key}."
                )
        existing = path
        while not existing.exists() and existing != existing.parent:
            if existing.is_symlink():  # exists() follows links: this one points at nothing, and mkdir would fail
                raise OutputWriteError(
                    f"{key} '{named}' cannot be created: '{existing}' is a symbolic link to "
                    f"'{os.readlink(existing)}', which does not exist; choose another --{key} or mend the link."
                )
            existing = existing.parent
        if not existing.is_dir():
            raise OutputWriteError(f"{key} '{path}' cannot be created: '{existing}' is a file, not a folder.")
        if not os.access(existing, os.W_OK | os.X_OK):
            where = "" if existing == path else f" (its existing parent '{existing}' is not)"
            raise OutputWriteError(
                f"{key} '{path}' is not writable{where}: a read-only disk or no permission; choose another --{key}."
            )
        # os.access trusts permission bits: root passes them everywhere, yet cannot create a folder in /proc or on
        # some mounts; creating (and at once removing) an empty folder of our own is the test that decides
        try:
            os.rmdir(tempfile.mkdtemp(prefix=".vqbrain_write_check.", dir=existing))
        except OSError as error:
            where = "" if existing == path else f" in its existing parent '{existing}'"
            raise OutputWriteError(
                f"{key} '{path}' cannot be created or written{where}: {error.strerror or error}; choose another "
                f"--{key}."
            ) from error


def _tracking_database(tracking_uri: str) -> Path:
    """The file of a ``sqlite:///<path>`` tracking URI (the settings allow no other), checked to be a database."""
    path = Path(tracking_uri.removeprefix("sqlite:///")).expanduser().absolute()
    if path.is_file():
        with open(path, "rb") as handle:
            header = handle.read(16)
        # an empty file is what sqlite3 itself creates before the first table; any other content must be a database
        if header and header != b"SQLite format 3\x00":
            raise OutputPathError(
                f"tracking_uri '{tracking_uri}' names '{path}', which exists and is not an SQLite database (MLflow "
                f"would fail on it after the run's work); choose another --tracking_uri, or move that file away."
            )
    elif path.exists():
        raise OutputPathError(f"tracking_uri '{tracking_uri}' names '{path}', which is not a file; choose another.")
    return path


def check_outputs_absent(
    output_dir: str | os.PathLike, names: Sequence[str], overwrite: bool = False, key: str = "output_dir"
) -> None:
    """Refuse, before any work, a run that would replace the files ``names`` in ``output_dir`` unless ``overwrite``.

    Args:
        output_dir: the folder the run writes to.
        names: the files the run writes there.
        overwrite: allow replacing them.
        key: the setting naming the folder, for the message.

    Raises:
        OutputPathError: naming the first existing file.
    """
    if as_bool(overwrite, "overwrite"):
        return
    existing = [Path(output_dir) / name for name in names if (Path(output_dir) / name).exists()]
    if existing:
        raise OutputPathError(
            f"'{existing[0]}' already exists and would be replaced by this run; pass --overwrite true to replace it, "
            f"or --{key} to write to another folder."
        )


def _describe_dataset(record: Mapping[str, Any]) -> str:
    sizes = ", ".join(f"{count} {split}" for split, count in dict(record.get("sizes") or {}).items())
    return f"'{record.get('dir')}' ({sizes} slices, fingerprint {record.get('fingerprint')})"


def check_resumed_dataset(
    resumable: str | os.PathLike, dataset: Mapping[str, Any], resume: bool = True, overwrite: bool = False
) -> None:
    """Refuse to resume a run on another data set (or another split of it) than the one it trained on.

    Called after :func:`check_checkpoint_dir`, which refuses a resumed state of another network or image size
    without listing the data.

    Args:
        resumable: the training state to resume (``<ckpt_dir>/last.pt``), whose metadata holds ``"dataset"``.
        dataset: this run's :func:`~monai_vqbrain.data.dataset_record`.
        resume: whether the run resumes; nothing is checked otherwise.
        overwrite: continue on the new data set anyway, with a warning.

    Raises:
        CheckpointError: naming both data sets (folder, split sizes, fingerprint), unless ``overwrite``.
    """
    if not as_bool(resume, "resume"):
        return
    saved = (load_checkpoint(resumable).get(METADATA_KEY, {}) or {}).get("dataset")
    if not isinstance(saved, Mapping) or saved.get("fingerprint") == dataset.get("fingerprint"):
        return  # the same data, or a checkpoint from before data sets were recorded: nothing to compare
    message = f"'{resumable}' was trained on {_describe_dataset(saved)}, but this run reads {_describe_dataset(dataset)}"
    if as_bool(overwrite, "overwrite"):
        logger.warning(f"{message}; resuming on the new data set as --overwrite true asks.")
        return
    raise CheckpointError(
        f"{message}: a resumed run would mix two data sets in one model and history; pass the same --dataset_dir "
        f"and split settings, or --overwrite true (with --resume true) to continue on this data set anyway."
    )


_CONCATENATED_CONFIG_PATH = re.compile(r"^(?P<folder>.*) \+ '/(?P<name>config_\d{8}_\d{6}\.json)'$")


def executed_config_file(save_execute_config: Any) -> str | None:
    """The file MONAI wrote the executed config to, for the tracking handlers' ``artifacts``.

    With ``--tracking``, MONAI (``ConfigWorkflow.patch_bundle_tracking``) writes the executed config to
    ``<output_dir>/config_<time>.json`` and sets ``save_execute_config`` to ``output_dir``'s config text followed by
    ``+ '/config_<time>.json'``. That is an expression when ``output_dir`` is the config's default
    (``$@bundle_root + '/outputs'``), but when ``--output_dir /x`` is given it is the literal text
    ``/x + '/config_<time>.json'``, a file that does not exist, so the executed config would not be logged. This
    undoes that concatenation; any other value is returned as is.

    Args:
        save_execute_config: the config's ``save_execute_config`` after MONAI's patch: a path, that text, or None.
    """
    if not isinstance(save_execute_config, (str, os.PathLike)):
        return None
    text = os.fspath(save_execute_config)
    concatenated = _CONCATENATED_CONFIG_PATH.match(text)
    return os.path.join(concatenated["folder"], concatenated["name"]) if concatenated else text


def local_tracking_uri(output_dir: str | os.PathLike) -> str:
    """The MLflow tracking URI of a run: a SQLite file ``mlruns.db`` in ``output_dir`` (artifacts in ``mlruns/``).

    Local on purpose: a bundle run never contacts a tracking server. SQLite rather than a ``file://`` store because
    MONAI's ``MLFlowHandler`` (MONAI >= 1.6) refuses the file store, which MLflow >= 3.13 no longer supports.

    Args:
        output_dir: the run's output folder.
    """
    return "sqlite:///" + (Path(output_dir).expanduser().absolute() / "mlruns.db").as_posix()
