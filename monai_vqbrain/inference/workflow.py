"""The ``inferring`` workflow's engine pieces: a dataset that passes over bad files, the evaluator, output checks."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from monai.data import Dataset, MetaTensor
from monai.engines import SupervisedEvaluator
from monai.engines.utils import IterationEvents
from monai.utils import ensure_tuple
from monai.utils.enums import CommonKeys as Keys

from monai_vqbrain.errors import ImageFileError, OutputPathError, find_user_error
from monai_vqbrain.utils.io import remove_stale_temporary_files

from .handlers import ERROR_KEY, METRICS_FILE
from .input_files import glob_parts
from .transforms import check_output_dtype, codes_file, output_file


class InferenceDataset(Dataset):
    """A MONAI ``Dataset`` of input files that hands on a file it cannot read as an error item, unless ``strict``.

    A file whose preprocessing raises one of the package's errors (unreadable, damaged, too small, not an image)
    becomes ``{"image": <path>, "error": <message>, "error_type": <class name>}``: the evaluator runs no network on
    it, and the metrics handler names it in one log line and in the CSV. MONAI's ``Dataset`` would stop the run.

    Args:
        data: items ``{"image": path}``.
        transform: the preprocessing.
        strict: raise the first bad file's error instead.
    """

    def __init__(self, data: Sequence[dict], transform: Any = None, strict: bool = False) -> None:
        super().__init__(data, transform)
        self.strict = bool(strict)

    def _transform(self, index: int) -> dict:
        try:
            return super()._transform(index)
        except Exception as error:
            user_error = find_user_error(error)
            if user_error is None:
                raise
            if self.strict:
                raise user_error from None
            return {
                Keys.IMAGE: str(self.data[index][Keys.IMAGE]),
                ERROR_KEY: str(user_error),
                "error_type": type(user_error).__name__,
            }


def _drop_user_error_lines(record: logging.LogRecord) -> bool:
    """Drop the evaluator's own log lines about a user error ending its run: the error hook prints it, in one line.

    Ignite logs the exception that ends a run from inside its ``except`` block, so the exception is at hand here.
    """
    return record.levelno < logging.ERROR or find_user_error(sys.exc_info()[1]) is None


class ReconstructionEvaluator(SupervisedEvaluator):
    """MONAI's ``SupervisedEvaluator`` for an inferer that returns code maps with the reconstructions.

    Its iteration is ``SupervisedEvaluator``'s with two differences: the inferer's ``(reconstruction, codes)`` become
    ``pred`` and ``codes``, with the input as ``label`` (an autoencoder's target); and an error item of
    :class:`InferenceDataset` passes without a forward pass (no ``FORWARD_COMPLETED``) or ``pred`` (so
    post-processing with ``allow_missing_keys`` passes over it). A bad file under ``strict`` or a failing disk ends
    the run with the package's error, not logged again by Ignite. Takes ``SupervisedEvaluator``'s arguments.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.logger.addFilter(_drop_user_error_lines)  # added once: addFilter skips a filter it holds

    def _iteration(self, engine: SupervisedEvaluator, batchdata: dict[str, Any]) -> dict:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        if ERROR_KEY in batchdata:
            engine.state.output = {key: batchdata[key] for key in (Keys.IMAGE, ERROR_KEY, "error_type")}
            engine.fire_event(IterationEvents.MODEL_COMPLETED)
            return engine.state.output
        inputs, *_ = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        engine.state.output = {Keys.IMAGE: inputs, Keys.LABEL: inputs}
        with engine.mode(engine.network):
            reconstruction, codes = engine.inferer(inputs, engine.network)
        if isinstance(inputs, MetaTensor):
            # the input's metadata and transforms, for Invertd to undo (as SupervisedEvaluator does after compile)
            reconstruction = MetaTensor(reconstruction, meta=inputs.meta, applied_operations=inputs.applied_operations)
        engine.state.output.update({Keys.PRED: reconstruction, "codes": codes})
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output


def check_outputs(
    files: Sequence[Path],
    output_dir: str | os.PathLike,
    output_postfix: str = "recon",
    output_ext: str | None = None,
    output_dtype: str | None = None,
    separate_folder: bool = False,
    save_codes: bool = True,
    overwrite: bool = False,
    input_specs: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
) -> list[Path]:
    """Check that no output of a run would overwrite an input, another output, or (without ``overwrite``) a file.

    The bundle calls it before the evaluator runs, so that a run that would clobber something stops before doing any
    work; then the temporary files that a killed run left for this run's outputs are removed.

    Args:
        files: the input files (:func:`.input_files.find_input_files`), returned as given.
        output_dir: the output folder.
        output_postfix: the reconstructions' postfix (:func:`.transforms.output_file`); code maps: ``<name>_codes.npz``.
        output_ext: the reconstructions' extension (None: each input's own).
        output_dtype: the data type of the reconstructions (None: each input's own).
        separate_folder: whether each input's outputs go into a folder of their own.
        save_codes: whether code maps are written.
        overwrite: whether existing outputs may be replaced.
        input_specs: the ``input`` setting: an output folder equal to or inside the root of a recursive glob (``/d``
            of ``/d/**/*.png``) is refused, as the next run would take its outputs as inputs.

    Raises:
        OutputPathError: when ``output_dir`` is a file or holds inputs, an output would overwrite an input file, two
            inputs would write the same output, or outputs exist and ``overwrite`` is off.
        SettingError: when ``output_ext`` or ``output_dtype`` cannot be written in an input's format.
    """
    output_dir = Path(output_dir).expanduser().absolute()  # messages name absolute paths
    if output_dir.exists() and not output_dir.is_dir():
        raise OutputPathError(f"output_dir '{output_dir}' is a file; expected a folder (or a new path)")
    inputs = {Path(path).resolve(): Path(path) for path in files}
    # outputs written among the inputs become inputs of the next run over that folder (x_recon_recon.png); a
    # symbolic link given as an input lies in its own folder, whatever folder its target lies in
    folders = {path.parent for path in inputs} | {Path(path).absolute().parent.resolve() for path in files}
    if output_dir.resolve() in folders:
        raise OutputPathError(
            f"output_dir '{output_dir.resolve()}' holds input files; choose another folder so that reconstructions "
            f"are never read as inputs of a later run"
        )
    recursive_globs = [spec for spec in map(str, ensure_tuple(input_specs or ())) if "**" in spec]
    for root in (glob_parts(Path(spec).expanduser().absolute())[0].resolve() for spec in recursive_globs):
        if output_dir.resolve().is_relative_to(root):
            raise OutputPathError(
                f"output_dir '{output_dir.resolve()}' is inside '{root}', the root of a recursive input glob: the "
                f"next run over that glob would take the reconstructions as inputs; choose another --output_dir"
            )
    planned: dict[Path, Path] = {(output_dir / METRICS_FILE).resolve(): Path(METRICS_FILE)}
    for path in files:
        try:
            outputs = [output_file(path, output_dir, output_postfix, output_ext, separate_folder)]
            check_output_dtype(path, output_dtype)
        except ImageFileError:
            continue  # not an image file: it is reported by the run, and nothing is written for it
        if save_codes:
            outputs.append(codes_file(path, output_dir, separate_folder))
        for output in outputs:
            resolved = output.resolve()
            if resolved in inputs:
                raise OutputPathError(
                    f"output '{output}' would overwrite the input file '{inputs[resolved]}'; choose another --output_dir"
                )
            # separate_folder puts outputs in a sub-folder named like the input, which can be an input folder
            folder = output.absolute().parent.resolve()
            if folder in folders:
                raise OutputPathError(
                    f"output '{output}' would be written into '{folder}', which holds input files; choose another "
                    f"--output_dir so that reconstructions are never read as inputs of a later run"
                )
            if resolved in planned:
                raise OutputPathError(
                    f"inputs '{planned[resolved]}' and '{path}' would both write '{output}'; "
                    "reconstruct files with the same name into different output folders"
                )
            planned[resolved] = Path(path)
    if not overwrite:
        existing = [output for output in planned if output.exists()]
        if existing:
            raise OutputPathError(
                f"output '{existing[0]}' already exists"
                + (f" (and {len(existing) - 1} more)" if len(existing) > 1 else "")
                + "; pass --overwrite true to replace outputs, or choose another --output_dir"
            )
    # what a killed run left of these outputs: only the names atomic_path gives their temporary files
    for folder in {output.parent for output in planned}:
        remove_stale_temporary_files(folder, [output.name for output in planned if output.parent == folder])
    return list(files)
