"""Batched slice-wise reconstruction of the user's files, with code maps and a per-file metrics CSV.

:class:`InferenceRunner` is what the bundle's ``inferring`` workflow runs. For each input file it writes into
``output_dir``:

* ``<name>_recon.png`` or ``<name>_recon.nii.gz``: the reconstruction in the input's format, size, voxel order and
  intensity scale (see :mod:`monai_vqbrain.inference.io`);
* ``<name>_codes.npz`` (when ``save_codes``): the code-index map, ``codes`` of shape ``(N, h, w)`` (``N`` slices,
  ``h = w = image_size / 2**levels``) as ``uint16``, with ``num_embeddings``, ``image_size`` and ``slice_axis``
  (-1 for PNG); ``VQVAE.decode_samples(torch.from_numpy(codes).long())`` decodes it;

and one ``reconstruction_metrics.csv`` with a row per input file (bad files included, with their ``error``).

SSIM and PSNR compare the reconstruction with the input at the model's resolution, in ``[0, 1]``, exactly as the
evaluation does (MONAI ``SSIMMetric`` with an 11-pixel Gaussian window and ``PSNRMetric``, data range 1): that is,
after padding to a square and resizing to ``image_size``, before the reconstruction is restored to the input's size.
For a volume, ``ssim`` is the mean over all its slices and ``psnr`` is computed from the mean squared error over all
its slices.

Not yet MONAI's ``SupervisedEvaluator`` with ``SaveImaged``: a bad file must be named and skipped without stopping the
run (a MONAI dataset raises), a PNG is written back at its own bit depth and a NIfTI with its own header and data
type (``SaveImaged`` keeps only the affine), and the slices of many small files share a batch. The padding and
resizing are the training transforms, undone by their MONAI inverse.
"""

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

import numpy as np
import torch
from monai.data import MetaTensor
from monai.metrics import SSIMMetric
from monai.transforms import Compose
from monai.utils import convert_to_tensor
from torch import nn

from monai_vqbrain.data.limits import DEFAULT_MAX_IMAGE_PIXELS, DEFAULT_MAX_VOLUME_VOXELS
from monai_vqbrain.data.transforms import PadToSquared, ResizeSquared
from monai_vqbrain.engines.precision import autocast, resolve_amp
from monai_vqbrain.errors import DatasetError, InputsSkippedError, OutputWriteError, VQBrainError
from monai_vqbrain.utils.flags import as_bool
from monai_vqbrain.utils.io import atomic_path
from monai_vqbrain.utils.modules import unwrap_network

from .io import (
    DEFAULT_MIN_SLICE_SIZE,
    InputImage,
    OutputPathError,
    find_input_files,
    image_format,
    read_input,
    strip_image_suffix,
)

__all__ = ["METRICS_FILE", "FileResult", "InferenceRunner"]

METRICS_FILE = "reconstruction_metrics.csv"
"""Name of the per-file metrics table written into ``output_dir``."""

_logger = logging.getLogger(__name__)


def code_information_bits(codes: torch.Tensor) -> float:
    """Information content of a code map under its own code frequencies: ``N * H(p)`` bits for ``N`` codes.

    Args:
        codes: integer code indices of any shape.
    """
    counts = torch.bincount(codes.reshape(-1).long()).double()
    counts = counts[counts > 0]
    total = counts.sum()
    if total == 0:
        return 0.0
    return float(-(counts * torch.log2(counts / total)).sum())


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


@dataclass
class _Prepared:
    """An input read and resized for the model, waiting for its batch."""

    image: InputImage  # its full-size slices are released once model_input is made
    model_input: torch.Tensor  # (N, 1, S, S)
    result: FileResult
    operations: list  # the padding and resizing applied, for their inverse to restore the reconstruction


class InferenceRunner:
    """Reconstruct PNG and NIfTI files through a VQ-VAE, writing results in the inputs' own formats.

    Slices of all files are run through the network in batches of ``batch_size`` (several small files share a batch;
    a volume's slices span several batches). A bad input file is logged, listed in the CSV with its ``error`` and
    skipped, unless ``strict``; inputs are never overwritten, and existing outputs only with ``overwrite``.

    Args:
        network: a :class:`~monai_vqbrain.networks.VQVAE` or a wrapper of one with a ``vqvae`` attribute (such as
            :class:`~monai_vqbrain.inference.ReconstructionNetwork`), with its weights loaded.
        inputs: a file, a folder, a glob or a list of them; see :func:`~monai_vqbrain.inference.find_input_files`.
        output_dir: the folder for the outputs; created if needed.
        image_size: the side of the square images the network was trained on.
        device: where to run the network.
        batch_size: slices per network call.
        slice_axis: the RAS axis volumes are sliced along: 0 sagittal, 1 coronal, 2 axial (as in training).
        min_slice_size: smallest accepted in-plane side of a slice, in pixels.
        save_codes: also write each file's code-index map.
        strict: stop at the first bad input instead of skipping it.
        overwrite: replace existing outputs.
        amp: run the network under autocast (bf16/fp16): True, False, or ``"auto"`` for mixed precision only where
            ``device`` runs it natively; off by default here (the bundle's default is ``"auto"``).
        allow_skipped: finish normally when some inputs were skipped; by default :meth:`run` ends with an
            :class:`~monai_vqbrain.errors.InputsSkippedError` (exit status 3) after writing everything else.
        max_image_pixels: the most pixels a PNG header may declare; larger files are skipped before decoding.
        max_volume_voxels: the most voxels a NIfTI header may declare; larger files are skipped before reading.
    """

    def __init__(
        self,
        network: nn.Module,
        inputs: str | os.PathLike | Sequence[str | os.PathLike] | None,
        output_dir: str | os.PathLike,
        image_size: int,
        device: str | torch.device = "cpu",
        batch_size: int = 32,
        slice_axis: int = 2,
        min_slice_size: int = DEFAULT_MIN_SLICE_SIZE,
        save_codes: bool = True,
        strict: bool = False,
        overwrite: bool = False,
        amp: bool | str = False,
        allow_skipped: bool = False,
        max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
        max_volume_voxels: int | None = DEFAULT_MAX_VOLUME_VOXELS,
    ) -> None:
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if slice_axis not in (0, 1, 2):
            raise ValueError(f"slice_axis must be 0, 1 or 2 (an axis of the RAS volume), got {slice_axis!r}")
        if int(min_slice_size) < 1:
            raise ValueError(f"min_slice_size must be a positive integer, got {min_slice_size!r}")
        network = unwrap_network(network)
        self.network = network
        self.vqvae = getattr(network, "vqvae", network)
        for method in ("index_quantize", "decode_samples"):
            if not callable(getattr(self.vqvae, method, None)):
                raise TypeError(
                    f"network must be a VQVAE or wrap one as `.vqvae`; {type(network).__name__} has no {method}"
                )
        self.inputs = inputs
        self.output_dir = Path(output_dir)
        self.image_size = int(image_size)
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        self.slice_axis = slice_axis
        self.min_slice_size = int(min_slice_size)
        self.save_codes = as_bool(save_codes, "save_codes")
        self.strict = as_bool(strict, "strict")
        self.overwrite = as_bool(overwrite, "overwrite")
        self.amp = resolve_amp(amp, self.device)
        self.allow_skipped = as_bool(allow_skipped, "allow_skipped")
        self.max_image_pixels = max_image_pixels
        self.max_volume_voxels = max_volume_voxels
        self.num_embeddings = int(self.vqvae.num_embeddings)
        self._to_model = Compose([PadToSquared("image"), ResizeSquared("image", size=self.image_size)])
        self._ssim = SSIMMetric(spatial_dims=2, data_range=1.0, reduction="none")
        self._errors: dict[str, VQBrainError] = {}

    # ------------------------------------------------------------------------------------------------------------
    # inputs and outputs

    def output_paths(self, path: Path) -> tuple[Path, Path | None]:
        """The reconstruction file and (when ``save_codes``) the code-map file written for input ``path``.

        Raises:
            ImageFileError: when ``path`` is not named like a PNG or NIfTI file.
        """
        stem = strip_image_suffix(path)
        suffix = ".png" if image_format(path) == "png" else ".nii.gz"
        recon = self.output_dir / f"{stem}_recon{suffix}"
        return recon, (self.output_dir / f"{stem}_codes.npz" if self.save_codes else None)

    @property
    def metrics_file(self) -> Path:
        return self.output_dir / METRICS_FILE

    def check(self) -> list[Path]:
        """Find the input files and check that no output would overwrite an input, another output or an old file.

        :meth:`run` calls it first; the bundle also calls it before loading the checkpoint, so that a run that
        would clobber something stops before doing any work.

        Returns:
            The input files.

        Raises:
            DatasetError: when the input names no file.
            OutputPathError: when an output would overwrite an input file, two inputs would write the same output,
                or outputs exist and ``overwrite`` is off.
        """
        files = find_input_files(self.inputs)
        if self.output_dir.exists() and not self.output_dir.is_dir():
            raise OutputPathError(f"output_dir '{self.output_dir}' is a file; expected a folder (or a new path)")
        inputs = {path.resolve(): path for path in files}
        planned: dict[Path, Path] = {self.metrics_file.resolve(): Path(METRICS_FILE)}
        for path in files:
            try:
                outputs = self.output_paths(path)
            except VQBrainError:
                continue  # not an image file: it is reported by the run, and nothing is written for it
            for output in outputs:
                if output is None:
                    continue
                resolved = output.resolve()
                if resolved in inputs:
                    raise OutputPathError(
                        f"output '{output}' would overwrite the input file '{inputs[resolved]}'; "
                        "choose another --output_dir"
                    )
                if resolved in planned:
                    raise OutputPathError(
                        f"inputs '{planned[resolved]}' and '{path}' would both write '{output}'; "
                        "reconstruct files with the same name into different output folders"
                    )
                planned[resolved] = path
        if not self.overwrite:
            existing = [output for output in planned if output.exists()]
            if existing:
                raise OutputPathError(
                    f"output '{existing[0]}' already exists"
                    + (f" (and {len(existing) - 1} more)" if len(existing) > 1 else "")
                    + "; pass --overwrite true to replace outputs, or choose another --output_dir"
                )
        return files

    # ------------------------------------------------------------------------------------------------------------
    # the network

    @torch.no_grad()
    def encode_decode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Code maps ``(B, h, w)`` and their decodings ``(B, 1, S, S)`` (clamped to [0, 1]) of model-size images.

        The reconstruction is decoded from the code map itself, so a saved code map decodes to exactly it.
        """
        outputs_codes, outputs_images = [], []
        for start in range(0, images.shape[0], self.batch_size):
            batch = images[start : start + self.batch_size].to(self.device)
            with autocast(self.device, self.amp):
                codes = self.vqvae.index_quantize(batch)
                decoded = self.vqvae.decode_samples(codes)
            outputs_codes.append(codes.cpu())
            outputs_images.append(decoded.float().clamp(0.0, 1.0).cpu())
        return torch.cat(outputs_codes), torch.cat(outputs_images)

    def _model_input(self, image: InputImage) -> tuple[torch.Tensor, list]:
        """A file's slices at model size ``(N, 1, S, S)``, and the record of the padding and resizing done."""
        # all slices of a file as channels: padding and resizing act on each channel alike; a MetaTensor records them
        resized = self._to_model({"image": MetaTensor(torch.from_numpy(image.slices))})["image"]
        return resized.as_tensor().float()[:, None], list(resized.applied_operations)

    def _from_model(self, reconstruction: torch.Tensor, operations: list) -> np.ndarray:
        """Undo the padding and resizing ``operations`` recorded: ``(N, 1, S, S)`` to the input's ``(N, H, W)``.

        The inverse of the same :class:`PadToSquared` and :class:`ResizeSquared` steps training uses.
        """
        recorded = MetaTensor(reconstruction[:, 0], applied_operations=list(operations))
        restored = self._to_model.inverse({"image": recorded})["image"]
        return convert_to_tensor(restored, track_meta=False).clamp(0.0, 1.0).numpy()

    # ------------------------------------------------------------------------------------------------------------
    # the run

    def _fail(self, result: FileResult, error: VQBrainError) -> None:
        if self.strict:
            raise error
        result.error = str(error)
        self._errors[result.input] = error
        _logger.warning("skipping '%s': %s", result.input, error)

    def _prepare(self, path: Path) -> _Prepared | FileResult:
        result = FileResult(input=str(path), input_bytes=path.stat().st_size if path.is_file() else "")
        try:
            result.format = image_format(path)
            image = read_input(
                path, self.slice_axis, self.min_slice_size, self.max_image_pixels, self.max_volume_voxels
            )
        except VQBrainError as error:
            self._fail(result, error)
            return result
        result.shape = "x".join(str(s) for s in image.shape)
        result.slices = int(image.slices.shape[0])
        model_input, operations = self._model_input(image)
        # a file waits for its batch at model size: keeping its full-size pixels would let a few huge inputs
        # hold gigabytes until the batch runs
        image.slices = image.slices[:0]
        return _Prepared(image=image, model_input=model_input, result=result, operations=operations)

    def _finish(self, item: _Prepared, codes: torch.Tensor, reconstruction: torch.Tensor) -> FileResult:
        """Score one file at model resolution, then write its reconstruction and code map."""
        result, image = item.result, item.image
        target = item.model_input
        ssim = float(self._ssim(reconstruction, target).reshape(-1).mean())
        mse = float(torch.mean((reconstruction - target) ** 2))
        self._ssim.reset()
        # a NaN or infinite score is not a number a reader can compare: leave the cell empty and say why
        problems = []
        if math.isfinite(ssim):
            result.ssim = round(ssim, 6)
        else:
            problems.append(f"ssim is {ssim} (the reconstruction is not finite)")
        if math.isfinite(mse) and mse > 0:
            result.psnr = round(10.0 * math.log10(1.0 / mse), 4)
        else:
            problems.append("psnr is infinite (the reconstruction equals the input)" if mse == 0 else
                            f"psnr is undefined (mean squared error {mse})")
        result.error = "; ".join(problems)

        recon_path, codes_path = self.output_paths(image.path)
        restored = self._from_model(reconstruction, item.operations)
        image.save_reconstruction(restored, recon_path, overwrite=self.overwrite)
        result.reconstruction = str(recon_path)
        result.code_bits_fixed = round(codes.numel() * math.log2(self.num_embeddings), 3)
        result.code_bits = round(code_information_bits(codes), 3)
        if codes_path is not None:
            self._save_codes(codes, codes_path, image)
            result.codes = str(codes_path)
            result.codes_bytes = codes_path.stat().st_size
        _logger.info("reconstructed '%s' (SSIM %s, PSNR %s dB)", image.path, result.ssim, result.psnr)
        return result

    def _save_codes(self, codes: torch.Tensor, path: Path, image: InputImage) -> None:
        dtype = np.uint16 if self.num_embeddings <= 1 << 16 else np.uint32
        buffer = io.BytesIO()
        np.savez_compressed(
            buffer,
            codes=codes.numpy().astype(dtype),
            num_embeddings=np.int64(self.num_embeddings),
            image_size=np.int64(self.image_size),
            slice_axis=np.int64(getattr(image, "axis", -1)),
        )
        with atomic_path(path, overwrite=self.overwrite) as tmp:
            tmp.write_bytes(buffer.getvalue())

    def _flush(self, pending: list[_Prepared], results: dict[Path, FileResult]) -> None:
        """Reconstruct a batch of prepared files, recording each file's result as soon as its outputs are written."""
        if not pending:
            return
        codes, reconstructions = self.encode_decode(torch.cat([item.model_input for item in pending]))
        start = 0
        for item in pending:
            count = item.model_input.shape[0]
            result = self._finish(item, codes[start : start + count], reconstructions[start : start + count])
            results[item.image.path] = result
            start += count

    def _reconstruct_all(self, files: Sequence[Path], results: dict[Path, FileResult]) -> None:
        pending: list[_Prepared] = []
        pending_slices = 0
        for path in files:
            prepared = self._prepare(path)
            if isinstance(prepared, FileResult):
                results[path] = prepared
                continue
            pending.append(prepared)
            pending_slices += prepared.model_input.shape[0]
            if pending_slices >= self.batch_size:
                self._flush(pending, results)
                pending, pending_slices = [], 0
        self._flush(pending, results)

    def write_metrics(self, results: Sequence[FileResult]) -> Path:
        """Write ``reconstruction_metrics.csv`` (one row per input file) atomically and return its path."""
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=[field.name for field in fields(FileResult)], lineterminator="\n")
        writer.writeheader()
        for result in results:
            writer.writerow(asdict(result))
        with atomic_path(self.metrics_file, overwrite=self.overwrite) as tmp:
            tmp.write_text(buffer.getvalue(), encoding="utf-8")
        return self.metrics_file

    def run(self) -> list[FileResult]:
        """Reconstruct every input file and write the outputs and ``reconstruction_metrics.csv``.

        Returns:
            One :class:`FileResult` per input file, in input order.

        Raises:
            DatasetError, OutputPathError: see :meth:`check`.
            ImageFileError: for the first bad file when ``strict``; for the only input file when it is bad.
            DatasetError: when every one of several input files is bad.
            OutputWriteError: when an output cannot be written (full or read-only disk); the metrics CSV is still
                written, when possible, with the files done so far.
            InputsSkippedError: after everything is written, when some inputs were skipped and not
                ``allow_skipped``; its ``results`` attribute holds the returned value.
        """
        files = self.check()
        self.network.eval()
        self._errors = {}
        results: dict[Path, FileResult] = {}
        try:
            self._reconstruct_all(files, results)
        except OutputWriteError as error:
            # the disk failed (full, read-only): record what was written before, if the disk still allows it
            done = [results.get(path) or FileResult(input=str(path), error=f"not reconstructed: {error}") for path in files]
            with contextlib.suppress(OutputWriteError):
                self.write_metrics(done)
            raise
        ordered = [results[path] for path in files]
        self.write_metrics(ordered)
        failed = [result for result in ordered if not result.reconstruction]
        _logger.info(
            "reconstructed %d of %d file(s) into '%s'; metrics in '%s'",
            len(ordered) - len(failed),
            len(ordered),
            self.output_dir,
            self.metrics_file,
        )
        if failed and len(failed) == len(ordered):
            if len(ordered) == 1:
                # the one input is bad: its own error is the clearest message
                raise self._errors[failed[0].input]
            raise DatasetError(
                f"none of the {len(ordered)} input files could be reconstructed (first: {failed[0].error}); "
                f"see '{self.metrics_file}'"
            )
        if failed and not self.allow_skipped:
            error = InputsSkippedError(
                f"{len(failed)} of {len(ordered)} input file(s) were skipped (first: {failed[0].error}); the others "
                f"were reconstructed, see '{self.metrics_file}'; pass --allow_skipped true to accept skipped inputs"
            )
            error.results = ordered
            raise error
        return ordered
