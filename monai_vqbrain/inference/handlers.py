"""Ignite handlers of the ``inferring`` workflow: the code-map files and the per-file metrics table, described in the
model card (``bundle/docs/README.md``, "Inference on your files")."""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.engines.utils import IterationEvents
from monai.metrics import SSIMMetric
from monai.utils import CommonKeys as Keys
from monai.utils import convert_to_numpy, ensure_tuple

from monai_vqbrain import errors
from monai_vqbrain.errors import DatasetError, InputsSkippedError, OutputWriteError, VQBrainError, find_user_error
from monai_vqbrain.utils.io import atomic_write_bytes, atomic_write_text

from .input_files import image_format
from .transforms import codes_file, output_file

METRICS_FILE = "reconstruction_metrics.csv"
"""Name of the per-file metrics table written into ``output_dir``."""

ERROR_KEY = "error"  # an item the dataset could not read: its message (and "error_type", the error's class name)
_CODES_FILE_KEY = "codes_file"  # where CodesSaver leaves the path it wrote, for the metrics table

_logger = logging.getLogger(__name__)


def code_information_bits(codes: torch.Tensor) -> float:
    """Information content of a code map (integer indices, any shape) under its own code frequencies: ``N * H(p)``
    bits for ``N`` codes."""
    counts = torch.unique(codes, return_counts=True)[1].double()  # how often each code in use occurs
    if counts.numel() == 0:
        return 0.0
    return float(-(counts * torch.log2(counts / counts.sum())).sum())


@dataclass
class FileResult:
    """One row of ``reconstruction_metrics.csv``.

    Attributes:
        input: the input file.
        format: ``png`` or ``nifti`` (empty for an unsupported file).
        shape: the input's image shape, e.g. ``256x256`` or ``176x208x176``.
        slices: number of slices reconstructed.
        ssim: SSIM of reconstruction vs input at model resolution in [0, 1] (mean over slices).
        psnr: PSNR in dB at model resolution in [0, 1] (from the mean squared error over slices).
        reconstruction: the reconstruction file.
        codes: the code-map file (empty when ``save_codes`` is off).
        input_bytes: size of the input file.
        codes_bytes: size of the code-map file.
        code_bits_fixed: size of the codes at a fixed length per code: number of codes x log2(num_embeddings).
        code_bits: information content of the codes under their own usage: number of codes x the entropy (bits) of
            the file's code frequencies, what an ideal entropy coder of independent codes would need (without
            the frequency table); at most ``code_bits_fixed``.
        error: why the file was skipped (empty on success).
    """

    input: str
    format: str = ""
    shape: str = ""
    slices: int | str = ""
    ssim: float | str = ""
    psnr: float | str = ""
    reconstruction: str = ""
    codes: str = ""
    input_bytes: int | str = ""
    codes_bytes: int | str = ""
    code_bits_fixed: float | str = ""
    code_bits: float | str = ""
    error: str = ""


def _items(output: Any) -> list[dict]:
    """The per-file items of a decollated engine output (a single dict when decollation is off)."""
    return output if isinstance(output, list) else [output]


def _source(item: dict) -> str:
    """The input file an engine output item came from."""
    image = item[Keys.IMAGE]
    return str(image.meta["filename_or_obj"]) if hasattr(image, "meta") else str(image)


def _error_row(source: str, error: str) -> FileResult:
    """The row of an input that could not be reconstructed: its format and size when known, and why."""
    result = FileResult(input=source, error=error)
    with contextlib.suppress(VQBrainError):
        result.format = image_format(source)
    with contextlib.suppress(OSError):
        result.input_bytes = Path(source).stat().st_size if Path(source).is_file() else ""
    return result


class CodesSaver:
    """Write each input's code map to ``<name>_codes.npz`` (atomically) once its iteration's model run completes.

    Attached to ``MODEL_COMPLETED``, after MONAI's decollation and post-processing; the path written is left in the
    item as ``codes_file`` for :class:`InferenceMetricsWriter`. MONAI has no handler for this: ``SaveImaged`` would
    write the codes as an image, not the documented ``.npz`` with the codebook size, image size and slice axis.

    Args:
        output_dir: the output folder.
        num_embeddings: the codebook size (stored in the file; ``uint32`` codes beyond 65536 entries).
        image_size: the model's image size (stored in the file).
        separate_folder: put each input's outputs in a sub-folder named like the input.
        overwrite: replace existing files (else ``FileExistsError``).
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        num_embeddings: int,
        image_size: int,
        separate_folder: bool = False,
        overwrite: bool = False,
    ) -> None:
        self.output_dir = Path(output_dir).expanduser().absolute()  # the table names files by absolute paths
        self.num_embeddings = int(num_embeddings)
        self.image_size = int(image_size)
        self.separate_folder = bool(separate_folder)
        self.overwrite = bool(overwrite)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(IterationEvents.MODEL_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        for item in _items(engine.state.output):
            if ERROR_KEY in item:
                continue
            source = _source(item)
            path = codes_file(source, self.output_dir, self.separate_folder)
            codes = convert_to_numpy(item["codes"])
            buffer = io.BytesIO()
            np.savez_compressed(
                buffer,
                codes=codes.astype(np.uint16 if self.num_embeddings <= 1 << 16 else np.uint32),
                num_embeddings=np.int64(self.num_embeddings),
                image_size=np.int64(self.image_size),
                slice_axis=np.int64(int(item[Keys.IMAGE].meta["slice_axis"])),
            )
            atomic_write_bytes(path, buffer.getvalue(), overwrite=self.overwrite)
            item[_CODES_FILE_KEY] = str(path)


class InferenceMetricsWriter:
    """Score each file, name each skipped one, and write ``reconstruction_metrics.csv`` (atomically) at the end.

    Scores are taken at model resolution, before post-processing restores the input's size. The table is written
    when the run completes, unless no input was reconstructed, and also, when possible, when the disk fails mid-run.
    Not MONAI's ``IgniteMetricHandler`` with ``MetricsSaver``: those keep one number per image and metric, not the
    files written, their sizes, code bits and a skipped file's error, and they do not write atomically nor refuse an
    existing table without ``overwrite``.

    Args:
        inputs: the input files, in the order of the rows.
        output_dir: the output folder.
        num_embeddings: the codebook size, for ``code_bits_fixed``.
        overwrite: replace an existing table (else ``FileExistsError``), and remove the outputs an earlier run
            wrote for an input this run skips, so that none is left beside a table listing its input as an error.
        allow_skipped: :meth:`raise_for_skipped` accepts skipped inputs.
        output_postfix: the reconstructions' postfix (see :func:`.transforms.output_file`), to find those outputs.
        output_ext: the reconstructions' extension (None: each input's own), likewise.
        separate_folder: whether each input's outputs are in a folder of its own, likewise.
        save_codes: whether this run writes code maps (only then is a skipped input's earlier code map removed).
        strict: the run stops at its first bad input; the table then holds the rows done, the bad input's error and
            the rest as not reconstructed.
    """

    def __init__(
        self,
        inputs: Sequence[str | os.PathLike],
        output_dir: str | os.PathLike,
        num_embeddings: int,
        overwrite: bool = False,
        allow_skipped: bool = False,
        output_postfix: str = "recon",
        output_ext: str | None = None,
        separate_folder: bool = False,
        save_codes: bool = True,
        strict: bool = False,
    ) -> None:
        self.inputs = [str(path) for path in inputs]
        self.output_dir = Path(output_dir).expanduser().absolute()  # the table names files by absolute paths
        self.num_embeddings = int(num_embeddings)
        self.overwrite = bool(overwrite)
        self.allow_skipped = bool(allow_skipped)
        self.output_postfix = output_postfix
        self.output_ext = output_ext
        self.separate_folder = bool(separate_folder)
        self.save_codes = bool(save_codes)
        self.strict = bool(strict)
        self._ssim = SSIMMetric(spatial_dims=2, data_range=1.0, reduction="none")
        self._reset()

    @property
    def metrics_file(self) -> Path:
        return self.output_dir / METRICS_FILE

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(IterationEvents.FORWARD_COMPLETED, self._score)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._record)
        engine.add_event_handler(Events.COMPLETED, self._write_all)
        engine.add_event_handler(Events.EXCEPTION_RAISED, self._on_exception)

    def _reset(self, engine: Engine | None = None) -> None:
        self._scores: dict[str, FileResult] = {}
        self._rows: dict[str, FileResult] = {}
        self._errors: dict[str, VQBrainError] = {}
        self.results: list[FileResult] = []

    def _score(self, engine: Engine) -> None:
        output = engine.state.output
        image, reconstruction, codes = output[Keys.IMAGE], output[Keys.PRED], output["codes"]
        names = ensure_tuple(image.meta["filename_or_obj"])
        # plain tensors: the metadata has served its purpose and MetaTensor slows every operation
        images, reconstructions = (t.as_tensor() if hasattr(t, "as_tensor") else t for t in (image, reconstruction))
        for index, name in enumerate(names):
            target = images[index].float().cpu()[:, None]
            recon = reconstructions[index].float().cpu()[:, None]
            ssim = float(self._ssim(recon, target).reshape(-1).mean())
            self._ssim.reset()
            mse = float(torch.mean((recon - target) ** 2))
            result = FileResult(input=str(name), slices=int(target.shape[0]))
            # a NaN or infinite score is not a number a reader can compare: leave the cell empty and say why
            problems = []
            if math.isfinite(ssim):
                result.ssim = round(ssim, 4)
            else:
                problems.append(f"ssim is {ssim} (the reconstruction is not finite)")
            if math.isfinite(mse) and mse > 0:
                result.psnr = round(10.0 * math.log10(1.0 / mse), 4)
            else:
                problems.append(
                    "psnr is infinite (the reconstruction equals the input)"
                    if mse == 0
                    else f"psnr is undefined (mean squared error {mse})"
                )
            result.error = "; ".join(problems)
            file_codes = codes[index]
            result.code_bits_fixed = round(file_codes.numel() * math.log2(self.num_embeddings), 3)
            result.code_bits = round(code_information_bits(file_codes.cpu()), 3)
            self._scores[result.input] = result

    def _record(self, engine: Engine) -> None:
        for item in _items(engine.state.output):
            source = _source(item)
            if ERROR_KEY in item:
                result = _error_row(source, str(item[ERROR_KEY]))
                error_type = getattr(errors, str(item.get("error_type", "")), None)
                is_error_type = isinstance(error_type, type) and issubclass(error_type, VQBrainError)
                self._errors[source] = (error_type if is_error_type else VQBrainError)(result.error)
                _logger.warning("skipping '%s': %s", source, result.error)
            else:
                meta = item[Keys.IMAGE].meta
                result = self._scores.pop(source)
                result.format, result.shape = str(meta["format"]), str(meta["shape"])
                result.input_bytes = int(meta["input_bytes"])
                saved_to = item[Keys.PRED].meta.get("saved_to")
                result.reconstruction = str(Path(saved_to).absolute()) if saved_to else ""
                if _CODES_FILE_KEY in item:
                    result.codes = item[_CODES_FILE_KEY]
                    result.codes_bytes = Path(result.codes).stat().st_size
                _logger.info("reconstructed '%s' (SSIM %s, PSNR %s dB)", source, result.ssim, result.psnr)
            self._rows[source] = result

    def write(self, results: Sequence[FileResult]) -> Path:
        """Write ``reconstruction_metrics.csv`` (one row per input file) atomically and return its path."""
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=[field.name for field in fields(FileResult)], lineterminator="\n")
        writer.writeheader()
        writer.writerows(map(asdict, results))
        return atomic_write_text(self.metrics_file, buffer.getvalue(), overwrite=self.overwrite)

    def _write_all(self, engine: Engine) -> None:
        self.results = [self._rows[path] for path in self.inputs]
        failed = [result for result in self.results if not result.reconstruction]
        if len(failed) == len(self.results):
            # nothing was written: leave the folder as it was, so that the run can be repeated once the inputs are
            # mended; the log has named every file and why
            return
        self._remove_outputs_of_skipped(failed)
        self.write(self.results)
        _logger.info(
            "reconstructed %d of %d file(s) into '%s'; metrics in '%s'",
            len(self.results) - len(failed),
            len(self.results),
            self.output_dir,
            self.metrics_file,
        )

    def _remove_outputs_of_skipped(self, skipped: Sequence[FileResult]) -> None:
        """With ``overwrite``, remove the files this run would have written for its skipped inputs: only those
        (check_outputs has made sure none of them is an input)."""
        if not self.overwrite:
            return
        naming = (self.output_dir, self.output_postfix, self.output_ext, self.separate_folder)
        for result in skipped:
            try:
                stale = [output_file(result.input, *naming)]
            except VQBrainError:
                continue  # not named like an image: this run writes nothing for it
            if self.save_codes:
                stale.append(codes_file(result.input, self.output_dir, self.separate_folder))
            for path in stale:
                if path.is_symlink() or path.is_file():
                    path.unlink()
                    _logger.info("removed '%s', an earlier output of the skipped input '%s'", path, result.input)

    def _on_exception(self, engine: Engine, error: BaseException) -> None:
        """Write the table of what was done before the disk failed or ``strict`` met a bad input (if the disk still
        allows it); re-raise."""
        cause = find_user_error(error)
        rows, not_done = dict(self._rows), None
        if isinstance(cause, OutputWriteError):
            not_done = f"not reconstructed: {cause}"
        elif self.strict and cause is not None and self._rows:
            # a bad input under --strict: the loader reads the inputs in order, so it is the first without a row;
            # files were written before it, so the table says which (a run that wrote nothing writes no table)
            not_done = "not reconstructed: stopped by --strict"
            bad = next((path for path in self.inputs if path not in rows), None)
            if bad is not None:
                rows[bad] = _error_row(bad, str(cause))
                self._remove_outputs_of_skipped([rows[bad]])
        if not_done is not None:
            with contextlib.suppress(OutputWriteError):
                self.write([rows.get(path) or FileResult(input=path, error=not_done) for path in self.inputs])
        # the package's own error, not MONAI's wrapper around a failing post-processing transform, is the message
        raise cause if cause is not None else error

    def raise_for_skipped(self) -> list[FileResult]:
        """Return the rows of a run that reconstructed every input; else raise what was skipped.

        Returns:
            One :class:`FileResult` per input file, in input order.

        Raises:
            VQBrainError: the only input's own error (e.g. ``ImageFileError``) when it is bad.
            DatasetError: when every one of several input files is bad.
            InputsSkippedError: when some inputs were skipped and not ``allow_skipped``; its ``results`` attribute
                holds the rows.
        """
        failed = [result for result in self.results if not result.reconstruction]
        if failed and len(failed) == len(self.results):
            if len(self.results) == 1:
                # the one input is bad: its own error is the clearest message
                raise self._errors[failed[0].input]
            raise DatasetError(
                f"none of the {len(self.results)} input files could be reconstructed (first: {failed[0].error}); "
                "the log above names each file and why, and nothing was written"
            )
        if failed and not self.allow_skipped:
            error = InputsSkippedError(
                f"{len(failed)} of {len(self.results)} input file(s) were skipped (first: {failed[0].error}); the "
                f"others were reconstructed, see '{self.metrics_file}'; pass --allow_skipped true to accept skipped "
                "inputs"
            )
            error.results = self.results
            raise error
        return self.results
