"""The sampler's writers: ``SaveImaged`` and MONAI's PNG and NIfTI writers, writing each sample atomically and
surfacing a failed write as the one-line error it is.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from monai.config import PathLike
from monai.data import NibabelWriter, PILWriter
from monai.data.utils import to_affine_nd
from monai.transforms import SaveImaged
from monai.utils import convert_to_numpy

from ..utils.io import atomic_path

# SaveImage reports any error of its writers as missing writer libraries (a RuntimeError holding the error as text);
# the writers keep a failed write's own error here, for SaveSampled to re-raise as the one-line error it is
_WRITE_ERROR: ContextVar[OSError | None] = ContextVar("sample_write_error", default=None)


@contextlib.contextmanager
def _sample_path(filename: PathLike) -> Iterator[Path]:
    """:func:`~monai_vqbrain.utils.atomic_path` for a writer: MONAI's writers save straight to the final path, so a
    killed run would leave a truncated sample beside whole ones; a failure is also kept for :class:`SaveSampled`."""
    try:
        with atomic_path(filename) as tmp:
            yield tmp
    except OSError as error:
        _WRITE_ERROR.set(error)
        raise


class SaveSampled(SaveImaged):
    """MONAI's ``SaveImaged`` whose writers' failures (a full disk, a read-only folder) surface as themselves,
    one line naming the file, rather than as ``SaveImage``'s "cannot find a suitable writer"."""

    def __call__(self, data: Mapping[Any, Any]) -> dict[Any, Any]:
        _WRITE_ERROR.set(None)
        try:
            return super().__call__(data)
        except RuntimeError as error:
            failure = _WRITE_ERROR.get()
            if failure is None:
                raise
            raise failure from error


class SamplePNGWriter(PILWriter):
    """MONAI's ``PILWriter`` writing atomically, and rounding to the nearest 8-bit level (``PILWriter`` truncates)."""

    def write(self, filename: PathLike, verbose: bool = False, **kwargs: Any) -> None:
        """Write the image to ``filename`` (a temporary file beside it, then renamed)."""
        if self.scale == np.iinfo(np.uint8).max:
            data = convert_to_numpy(self.data_obj, wrap_sequence=True).astype(np.float64)
            self.data_obj, self.scale = np.rint(np.clip(data, 0.0, 1.0) * 255.0).astype(np.uint8), None
        with _sample_path(filename) as tmp:
            super().write(str(tmp), verbose=verbose, format="PNG", **kwargs)


class SampleNiftiWriter(NibabelWriter):
    """MONAI's ``NibabelWriter`` writing a ``(S, S, 1)`` axial slice atomically, both transforms coded "aligned".

    The qform too, so readers that prefer it (ITK, FSL) place the slice like those reading the sform; code 2, not
    ``NibabelWriter``'s 1 (scanner), as a sample stands for no scanner position; units mm.
    """

    def set_metadata(self, meta_dict: Mapping[str, Any] | None = None, resample: bool = True, **options: Any) -> None:
        """Take the affine of ``meta_dict``; a sample is on its own grid, with nothing to resample it to.

        Args:
            meta_dict: the sample's metadata (``affine``, see :class:`SampleRequests`).
            resample: ignored.
            options: ignored.
        """
        self.affine = None if meta_dict is None else meta_dict.get("affine")

    def write(self, filename: PathLike, verbose: bool = False, **obj_kwargs: Any) -> None:
        """Write the image to ``filename`` (a temporary file beside it, then renamed)."""
        plane = np.asarray(convert_to_numpy(self.data_obj, wrap_sequence=True), dtype=self.output_dtype or np.float32)
        volume = np.ascontiguousarray(plane.reshape(plane.shape[0], plane.shape[1], 1))
        affine = to_affine_nd(3, convert_to_numpy(self.affine if self.affine is not None else np.eye(4)))
        nifti = nib.Nifti1Image(volume, affine=affine)
        nifti.set_qform(affine, code=2)
        nifti.set_sform(affine, code=2)
        nifti.header.set_xyzt_units("mm")
        with _sample_path(filename) as tmp:
            nib.save(nifti, str(tmp))
