"""Atomic file output: a reader never sees a half-written file, and an interrupted run leaves no debris."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path`` in one step.

    Args:
        path: the final destination.
        overwrite: when False and ``path`` exists, raise ``FileExistsError`` instead of replacing it.
    """
    path = Path(path)
    if not overwrite and path.exists():
        raise FileExistsError(f"{path} exists; refusing to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    # keep the real suffix so writers that infer the format from the name (PIL, nibabel) still work
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix="".join(path.suffixes) or ".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(path: str | os.PathLike, data: bytes, overwrite: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically and return the path."""
    with atomic_path(path, overwrite=overwrite) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str, overwrite: bool = True) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically and return the path."""
    return atomic_write_bytes(path, text.encode("utf-8"), overwrite=overwrite)
