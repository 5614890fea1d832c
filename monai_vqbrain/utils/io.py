"""Atomic file output: a reader never sees a half-written file, and an interrupted run leaves no debris.

Files are written to a temporary file beside the destination and renamed onto it in one step, so a process killed at
any instant leaves either the old file or the new one. A kill can still leave the temporary file itself;
:func:`remove_stale_temporary_files` removes those of known outputs when the next run starts. Outputs get the
permissions the user's umask gives new files (``mkstemp`` would make them private to the owner).
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import re
import tempfile
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import ModuleType

from ..errors import OutputWriteError

_UMASK_LOCK = threading.Lock()
# mkstemp's random part: 8 characters of this alphabet
_RANDOM_PART = r"[a-z0-9_]{8}"


def _file_mode() -> int:
    """The mode new files get under the current umask (reading the umask means setting it, hence the lock)."""
    with _UMASK_LOCK:
        umask = os.umask(0o022)
        os.umask(umask)
    return 0o666 & ~umask


def _split_name(path: Path) -> tuple[str, str]:
    suffix = "".join(path.suffixes)
    return path.name[: len(path.name) - len(suffix)] if suffix else path.name, suffix or ".tmp"


def _write_error(path: Path, error: OSError) -> OutputWriteError:
    reason = error.strerror or str(error)
    hint = {
        errno.ENOSPC: "; free some space",
        errno.EROFS: "; choose a writable folder",
        errno.EACCES: "; choose a folder you may write to",
    }.get(error.errno or 0, "")
    return OutputWriteError(f"cannot write '{path}': {reason}{hint}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path`` in one step.

    Args:
        path: the final destination.
        overwrite: when False and ``path`` exists, raise ``FileExistsError`` instead of replacing it.

    Raises:
        FileExistsError: when ``path`` exists and not ``overwrite``.
        OutputWriteError: naming ``path`` when the folder cannot be created or written (full disk, read-only file
            system, no permission).
    """
    path = Path(path)
    if not overwrite and path.exists():
        raise FileExistsError(f"{path} exists; refusing to overwrite it")
    stem, suffix = _split_name(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # keep the real suffix so writers that infer the format from the name (PIL, nibabel) still work
        fd, tmp_name = tempfile.mkstemp(prefix=f".{stem}.", suffix=suffix, dir=path.parent)
        os.close(fd)
    except OSError as error:
        raise _write_error(path, error) from error
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    except OSError as error:
        if isinstance(error, (OutputWriteError, FileExistsError)):
            raise
        raise _write_error(path, error) from error
    finally:
        tmp.unlink(missing_ok=True)


def remove_stale_temporary_files(folder: str | os.PathLike, names: Iterable[str]) -> None:
    """Remove the temporary files a killed run left in ``folder`` for the outputs ``names``: only files named as
    :func:`atomic_path` names them."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    patterns = []
    for name in names:
        stem, suffix = _split_name(folder / name)
        patterns.append(re.compile(re.escape(f".{stem}.") + _RANDOM_PART + re.escape(suffix) + "$"))
    for entry in folder.iterdir():
        if entry.name.startswith(".") and entry.is_file() and any(p.match(entry.name) for p in patterns):
            entry.unlink()


def atomic_write_bytes(path: str | os.PathLike, data: bytes, overwrite: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically and return the path."""
    with atomic_path(path, overwrite=overwrite) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str, overwrite: bool = True) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically and return the path."""
    return atomic_write_bytes(path, text.encode("utf-8"), overwrite=overwrite)


def pyplot() -> ModuleType:
    """matplotlib's ``pyplot`` on the non-interactive Agg backend (imported on first use: only figures need it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def wrap_label(text: str, width: int) -> str:
    """Wrap a file name or label for a figure at most ``width`` characters a line, only after ``_ - /`` or a space.

    ``textwrap`` cuts a long name wherever the line is full (``case_113_slice_15.nii.pn`` / ``g``); here a line
    breaks only between the parts of a name (an extension stays with its part), and a part longer than ``width``
    keeps a line of its own.

    Args:
        text: the label.
        width: the most characters a line should hold.
    """
    parts = re.findall(r"[^_\-/ ]*[_\-/ ]|[^_\-/ ]+$", text)
    lines: list[str] = []
    line = ""
    for part in parts:
        if line and len((line + part).rstrip()) > width:
            lines.append(line.rstrip())
            line = ""
        line += part
    if line or not lines:
        lines.append(line.rstrip())
    return "\n".join(lines)


def epoch_axis(axis: object, epochs: Iterable[int]) -> None:
    """Give a matplotlib axis of epochs whole-number ticks only, one per epoch when there are few.

    ``MaxNLocator(integer=True)`` falls back to fractional ticks (0.945 ... 1.065) when the range holds fewer than two
    whole numbers, as after one epoch.

    Args:
        axis: the matplotlib axes whose x axis counts epochs.
        epochs: the epochs plotted.
    """
    from matplotlib.ticker import MaxNLocator

    shown = sorted({int(e) for e in epochs})
    if not shown:
        return
    if len(shown) <= 12:
        axis.set_xticks(shown)
    else:
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    if len(shown) == 1:
        axis.set_xlim(shown[0] - 1, shown[0] + 1)


def save_figure(figure: object, path: str | os.PathLike) -> Path:
    """Write a matplotlib figure to ``path`` as a PNG (110 dpi, tight box) atomically; close it; return ``path``.

    Args:
        figure: the matplotlib figure.
        path: the PNG to write.
    """
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    pyplot().close(figure)
    return atomic_write_bytes(path, buffer.getvalue())
