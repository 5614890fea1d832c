"""The OASIS preprocessed PNG slice layout (``keras_png_slices_data``, drawn in README.md): split folders, file order
and validation. The ``keras_png_slices_seg_*`` mask folders beside the image folders are ignored.
"""

from __future__ import annotations

import errno
import os
import re
import struct
import warnings
import zlib
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from monai_vqbrain.data.limits import DEFAULT_MAX_IMAGE_PIXELS, check_image_size, check_slice_shape
from monai_vqbrain.data.transforms import LOADABLE_MODES
from monai_vqbrain.errors import DatasetError, ImageFileError

SPLITS = ("train", "validate", "test")
"""The split names used throughout the package, in the order of the OASIS release."""

PNG_FOLDER_PREFIX = "keras_png_slices_"
# the archive unpacks to a folder of this name; users often point at its parent instead
_PNG_ARCHIVE_FOLDER = "keras_png_slices_data"
#: split names accepted for each of :data:`SPLITS`
SPLIT_ALIASES = {"train": "train", "validate": "validate", "val": "validate", "validation": "validate", "test": "test"}
_OASIS_SLICE_NAME = re.compile(r"^case_(\d+)_slice_(\d+)\.nii\.png$", re.IGNORECASE)


def canonical_split(split: str) -> str:
    """Return the canonical name (one of :data:`SPLITS`) of ``split``; ``"val"`` and ``"validation"`` are accepted.

    Args:
        split: a split name.

    Raises:
        DatasetError: when ``split`` names no known split.
    """
    canonical = SPLIT_ALIASES.get(str(split).strip().lower())
    if canonical is None:
        raise DatasetError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    return canonical


def png_split_folder(root: str | os.PathLike, split: str) -> Path:
    """Return the folder holding the PNG slices of ``split`` below an OASIS PNG root (it may not exist).

    Args:
        root: the ``keras_png_slices_data`` folder (or its parent).
        split: ``"train"``, ``"validate"`` or ``"test"``.
    """
    png_root = locate_png_root(root) or Path(root)
    return png_root / f"{PNG_FOLDER_PREFIX}{canonical_split(split)}"


def _is_image_split_folder(path: Path) -> bool:
    """True for a ``keras_png_slices_<split>`` folder of images; False for the ``..._seg_<split>`` mask folders and
    for ``keras_png_slices_data``, the folder that holds them all."""
    name = path.name.lower()
    if not name.startswith(PNG_FOLDER_PREFIX) or name in (_PNG_ARCHIVE_FOLDER, f"{_PNG_ARCHIVE_FOLDER}.zip"):
        return False
    return not name.startswith(f"{PNG_FOLDER_PREFIX}seg") and path.is_dir()


def locate_png_root(root: str | os.PathLike) -> Path | None:
    """Find the folder that holds the image split folders: ``root`` or ``root/keras_png_slices_data``.

    Args:
        root: the folder to look in.

    Returns:
        The absolute folder, or None when neither candidate holds an image split folder.
    """
    root = Path(root).expanduser()
    for candidate in (root, root / _PNG_ARCHIVE_FOLDER):
        if candidate.is_dir() and any(_is_image_split_folder(child) for child in candidate.iterdir()):
            return candidate.resolve()
    return None


def _png_sort_key(name: str) -> tuple:
    """Order OASIS slices by (case, slice) numerically, so slice 10 follows slice 9; other names follow, by name."""
    match = _OASIS_SLICE_NAME.match(name)
    if match:
        return (0, int(match.group(1)), int(match.group(2)), name)
    return (1, 0, 0, name)


def refuse_link_loop(path: str | os.PathLike, expected: str) -> None:
    """Refuse a data file that is a loop of symbolic links (``a -> b -> a``) with a message naming it.

    Raises:
        ImageFileError: naming the file and what was ``expected`` there.
    """
    try:
        os.stat(path)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise ImageFileError(
                f"'{path}' is a loop of symbolic links (it leads back to itself); expected {expected}: remove the "
                "link or point it at the file"
            ) from None


def find_png_files(folder: str | os.PathLike) -> list[Path]:
    """List the ``.png`` files of one split folder in OASIS order, without opening them.

    Hidden files (macOS ``._*`` forks, ``.DS_Store``) and files of other types are skipped; sub-folders are not
    searched, as the OASIS layout is flat.

    Args:
        folder: a split folder such as ``keras_png_slices_train``.

    Raises:
        DatasetError: when the folder does not exist or holds no ``.png`` file.
        ImageFileError: naming a ``.png`` entry that is a loop of symbolic links.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise DatasetError(
            f"split folder '{folder}' does not exist; expected a folder of PNG slices named like case_001_slice_0.nii.png"
        )
    names = []
    for entry in os.scandir(folder):
        if entry.name.startswith(".") or not entry.name.lower().endswith(".png"):
            continue
        if entry.is_symlink():
            refuse_link_loop(entry.path, "a PNG slice")
        if entry.is_file():
            names.append(entry.name)
    if not names:
        raise DatasetError(
            f"split folder '{folder}' holds no PNG images; expected files named like case_001_slice_0.nii.png"
        )
    # the entries, not their link targets: a message must name the entry the user can remove or mend
    folder = folder.resolve()
    return [folder / name for name in sorted(names, key=_png_sort_key)]


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# PNG colour type -> samples per pixel
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
# Adam7 passes: (x0, y0, dx, dy)
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


def _png_stream_problem(path: str | os.PathLike) -> str | None:
    """Why a PNG's compressed pixel stream is not exactly the size its header declares, or None when it is.

    PIL fills the missing rows of a short stream with zeros without a warning; this inflates the stream (bounded
    by the declared size) and compares its length with the header's.
    """
    with open(path, "rb") as handle:
        data = handle.read()
    if not data.startswith(_PNG_SIGNATURE):
        return None  # another format under a .png name: PIL's decoding judges it
    position, header, idat = len(_PNG_SIGNATURE), None, []
    while position + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[position : position + 8])
        body = data[position + 8 : position + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body[:13]) if len(body) >= 13 else None
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
        position += 12 + length
    if header is None or header[3] not in _PNG_CHANNELS:
        return None
    width, height, bit_depth, colour, _, _, interlace = header
    bits, expected = _PNG_CHANNELS[colour] * bit_depth, 0
    # the scanlines of each pass (one pass unless Adam7-interlaced), each led by its filter byte
    for x0, y0, dx, dy in _ADAM7 if interlace else ((0, 0, 1, 1),):
        w, h = -(-(width - x0) // dx), -(-(height - y0) // dy)
        if w > 0 and h > 0:
            expected += h * (1 + (w * bits + 7) // 8)
    inflater = zlib.decompressobj()
    try:
        found = len(inflater.decompress(b"".join(idat), expected + 1))
    except zlib.error as err:
        return f"its compressed pixel data is corrupt ({err})"
    if found < expected:
        return f"its pixel data holds {found} of the {expected} bytes its {width}x{height} header declares (truncated)"
    if found > expected or not inflater.eof:
        return f"its pixel data does not match its {width}x{height} header"
    return None


def png_declared_size(path: str | os.PathLike) -> tuple[int, int] | None:
    """The ``(width, height)`` a PNG's IHDR chunk declares, read from its first 24 bytes; None for another format.

    Read before PIL opens the file: PIL's own "decompression bomb" error (a header of more than twice its
    ``MAX_IMAGE_PIXELS``) would hide the ``max_image_pixels`` message and its hint.
    """
    with open(path, "rb") as handle:
        start = handle.read(24)
    # the signature, then the IHDR chunk's length and type, then its first fields: width and height
    if len(start) < 24 or not start.startswith(_PNG_SIGNATURE) or start[12:16] != b"IHDR":
        return None  # not a PNG (or a damaged one): PIL's reading judges it
    return struct.unpack(">II", start[16:24])


def _named(path: str | os.PathLike) -> str:
    """A file as a message names it: the entry, and for a symbolic link the file it points to."""
    if Path(path).is_symlink():
        return f"'{path}' (a symbolic link to '{os.readlink(path)}')"
    return f"'{path}'"


def check_png_file(
    path: str | os.PathLike,
    max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
    min_slice_size: int | None = None,
) -> None:
    """Check that ``path`` is a whole, decodable image of a size within the limits.

    The size comes from the header, before any decoding; then the chunks' CRCs, the length of the pixel stream and
    the decoding are checked, so that a bad file is reported before training starts rather than as a deep traceback
    from a data-loader worker, or not at all.

    Args:
        path: the image file.
        max_pixels: the most pixels the header, and the square it is padded to, may declare; None allows any.
        min_slice_size: the smallest side allowed; None allows any.

    Raises:
        ImageFileError: naming the file when it is too large, too small, not a readable image, truncated or has no
            pixels.
    """
    try:
        declared = png_declared_size(path)
        if declared is not None:
            check_image_size(path, declared, max_pixels, "max_image_pixels")
            check_slice_shape(path, declared[::-1], min_slice_size, max_pixels)
        with warnings.catch_warnings():
            # the size is judged here against max_pixels (PIL's own bomb limit still raises): its warning adds nothing
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                mode = image.mode
                check_image_size(path, (width, height), max_pixels, "max_image_pixels")
                check_slice_shape(path, (height, width), min_slice_size, max_pixels)
                image.verify()
        problem = _png_stream_problem(path)
        if problem is None:
            with Image.open(path) as image:
                image.load()
    except ImageFileError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError, EOFError) as err:
        raise ImageFileError(
            f"{_named(path)} is not a readable image ({err}); expected a 2D grey or RGB PNG slice"
        ) from err
    if problem is not None:
        raise ImageFileError(f"{_named(path)} is damaged: {problem}; expected a whole 2D grey or RGB PNG slice")
    if width < 1 or height < 1:
        raise ImageFileError(f"'{path}' has size {width}x{height}; expected a 2D image with pixels")
    if mode not in LOADABLE_MODES:
        raise ImageFileError(f"'{path}' has PIL mode {mode!r}; expected a grey, grey+alpha, RGB or RGBA image")


def list_oasis_png_split(
    root: str | os.PathLike,
    split: str,
    max_items: int | None = None,
    max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
    min_slice_size: int | None = None,
) -> list[dict]:
    """List the PNG slices of one split, each checked with :func:`check_png_file` (a bad file stops the run here).

    Args:
        root: the ``keras_png_slices_data`` folder (or the folder it was unpacked into).
        split: ``"train"``, ``"validate"`` or ``"test"`` (``"val"``/``"validation"`` are accepted).
        max_items: list (and check) only the first this many slices; None lists all.
        max_pixels: ``max_image_pixels``, as :func:`check_png_file`.
        min_slice_size: the smallest side a slice may have; None allows any.

    Returns:
        One ``{"image": absolute path (str), "name": file name}`` per slice, ordered by (case, slice).

    Raises:
        DatasetError: when the split folder is missing or holds no PNG file.
        ImageFileError: when a ``.png`` file is not a readable image.
    """
    files = find_png_files(png_split_folder(root, split))[:max_items]
    for path in files:
        check_png_file(path, max_pixels, min_slice_size)
    return [{"image": str(path), "name": path.name} for path in files]
