"""Checks a bundle run makes before it writes anything, and the metadata it stores in checkpoints."""

from __future__ import annotations

import logging
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import CheckpointError, OutputPathError, OutputWriteError, SettingError
from ..utils.checkpoint import METADATA_KEY, load_checkpoint, metadata_file
from ..utils.flags import as_bool
from ..utils.io import remove_stale_temporary_files
from ..utils.modules import unwrap_network

logger = logging.getLogger(__name__)

# files besides the checkpoints that training runs write atomically into ``ckpt_dir``
_OTHER_RUN_FILES = ("training_history.json", "prior_training_history.json", "codes_train.pt", "codes_validate.pt")


def check_checkpoint_dir(
    ckpt_dir: str | os.PathLike,
    resume: bool = False,
    overwrite: bool = False,
    filenames: tuple[str, ...] = ("model.pt", "last.pt"),
    max_epochs: int | None = None,
    expected_metadata: Mapping[str, Any] | None = None,
    max_epochs_key: str = "max_epochs",
) -> Path | None:
    """Refuse to overwrite existing checkpoints unless asked; return the checkpoint to resume from, if any.

    Temporary files that a killed run left beside the checkpoints are removed first. A resumed run must continue
    the same network at the same image size, and must have epochs left to train.

    Args:
        ckpt_dir: the folder training writes checkpoints to.
        resume: continue from ``<ckpt_dir>/<filenames[-1]>`` (the last training state).
        overwrite: start a new training run over existing checkpoints.
        filenames: the checkpoint files the run writes; the last one is the resumable training state.
        max_epochs: the run's epochs; resuming a state saved at or after it is refused (nothing left to train).
        expected_metadata: entries (``image_size``, network settings) the resumed state's metadata must match.
        max_epochs_key: the setting that sets ``max_epochs``, for the message.

    Raises:
        CheckpointError: when checkpoints exist and neither ``resume`` nor ``overwrite`` is set, when there is nothing
            to resume from (``resume`` set, or a best model without a training state), or when the state was saved
            with other settings.
        SettingError: when the resumed state has already trained ``max_epochs`` epochs.
    """
    ckpt_dir = Path(ckpt_dir)
    resume, overwrite = as_bool(resume, "resume"), as_bool(overwrite, "overwrite")
    # the best-model files (all but the last) have their metadata file beside them (model.pt: model.json)
    sidecars = tuple(metadata_file(name).name for name in filenames[:-1])
    remove_stale_temporary_files(ckpt_dir, (*filenames, *sidecars, *_OTHER_RUN_FILES))
    resumable = ckpt_dir / filenames[-1]
    existing = [ckpt_dir / name for name in (*filenames, *sidecars) if (ckpt_dir / name).exists()]
    if existing and not resumable.exists() and (resume or not overwrite):
        # the best model of epoch 1 is written before the first training state: a run killed (or out of disk) in
        # between left a best model and nothing to resume from; a rerun and a --resume run say the same
        raise CheckpointError(
            f"'{existing[0]}' exists but '{resumable}' does not: the run that wrote it ended before saving a training "
            f"state (killed or out of disk space in its first epoch), so there is nothing to resume; pass "
            f"--overwrite true (without --resume) to train again from the start, or --ckpt_dir to train into another "
            f"folder."
        )
    if resume:
        if not resumable.is_file():
            raise CheckpointError(f"resume was asked for but '{resumable}' does not exist; train without --resume first.")
        _check_resumable(resumable, max_epochs, expected_metadata or {}, max_epochs_key)
        return resumable
    if existing and not overwrite:
        raise CheckpointError(
            f"'{existing[0]}' already exists and would be overwritten by a new training run; pass --resume true to "
            f"continue it, --overwrite true to start over, or --ckpt_dir to train into another folder."
        )
    return None


def check_output_dirs(
    dirs: Mapping[str, str | os.PathLike],
    dataset_dir: str | os.PathLike | None = None,
    demo_dir: str | os.PathLike | None = None,
    read_dirs: Mapping[str, str | os.PathLike] | None = None,
) -> None:
    """Check, before any work, that the run can write into each of its output folders, and none is its data folder.

    A folder that does not exist yet is judged by its nearest existing parent, where an empty folder is created and
    removed at once (nothing is left behind), so a read-only or misnamed folder is reported at start-up rather than
    after minutes of training or inference. An output folder equal to or inside the dataset the run reads is
    refused: what the run writes there (samples, checkpoints, figures) would be read back as data by the next run.

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
            root of the file system, or is one of ``read_dirs``.
        OutputPathError: naming ``tracking_uri`` when it names an existing file that is not an SQLite database.
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


def _check_resumable(
    resumable: Path, max_epochs: int | None, expected: Mapping[str, Any], max_epochs_key: str
) -> None:
    metadata = load_checkpoint(resumable).get(METADATA_KEY, {}) or {}
    for key, value in expected.items():
        if key in ("epoch", "key_metric") or key not in metadata:
            continue
        saved = list(metadata[key]) if isinstance(metadata[key], tuple) else metadata[key]
        value = list(value) if isinstance(value, tuple) else value
        if saved != value:
            raise CheckpointError(
                f"'{resumable}' was trained with {key}={saved}, but {key}={value} is configured: a resumed run must "
                f"keep the network and image size; set {key} to {saved}, or pass --overwrite true (without --resume) "
                f"to start a new run."
            )
    done = metadata.get("epoch")
    if max_epochs is not None and isinstance(done, int) and done >= int(max_epochs):
        raise SettingError(
            f"nothing left to train: '{resumable}' has already trained {done} epoch(s) and {max_epochs_key} is "
            f"{max_epochs}; pass --{max_epochs_key} above {done} to train more."
        )


def network_metadata(network: nn.Module, **entries: Any) -> dict[str, Any]:
    """Metadata stored in checkpoints: the network's class and settings plus ``entries`` (e.g. ``image_size``)."""
    network = unwrap_network(network)
    settings = {
        name: getattr(network, name)
        for name in ("spatial_dims", "in_channels", "out_channels", "channels", "num_embeddings", "embedding_dim")
        if hasattr(network, name)
    }
    settings = {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()}
    return {"network": type(network).__name__, **settings, **entries}


# what MONAI's tracking patch (ConfigWorkflow.patch_bundle_tracking) makes of save_execute_config when output_dir
# is a plain path (set on the command line): the text "<dir> + '/config_<time>.json'", not an expression
_CONCATENATED_CONFIG_PATH = re.compile(r"^(?P<folder>.*) \+ '/(?P<name>config_\d{8}_\d{6}\.json)'$")


def executed_config_file(save_execute_config: Any) -> str | None:
    """The file MONAI wrote the executed config to, for the tracking handlers' ``artifacts``.

    With ``--tracking``, MONAI writes the executed config to ``<output_dir>/config_<time>.json`` and sets
    ``save_execute_config`` to ``output_dir``'s config text followed by ``+ '/config_<time>.json'``. That is an
    expression when ``output_dir`` is the config's default (``$@bundle_root + '/outputs'``), but when
    ``--output_dir /x`` is given it is the literal text ``/x + '/config_<time>.json'``, a file that does not exist,
    so the executed config would not be logged. This undoes that concatenation; any other value is returned as is.

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
