"""One run per output folder: an exclusive lock file in each folder a bundle run writes to.

Two runs writing into one folder lose work silently: both training runs save ``model.pt`` by their own best metric,
and the last writer wins, whatever its score; a second ``generating`` run replaces the first's samples. So every
bundle workflow locks its output folders (:func:`lock_output_dirs`): a run into a held folder stops with one line
naming the holder and changes nothing.

The lock is ``.vqbrain.lock`` in the folder, held with ``fcntl.flock`` on an open descriptor, so the kernel releases
it whenever the holder ends, even by SIGKILL or a power cut. The file records the holder (pid, host, start time,
workflow) for the message; it is removed when the run ends (normally, by an error or by Ctrl-C). A file left by a
killed run is taken over with a one-line warning. A lock file written by a run on another host is never taken over
(``flock`` on a network file system may not see that host's lock): the message says to delete it once that run has
ended.
"""

from __future__ import annotations

import atexit
import errno
import fcntl
import json
import logging
import os
import socket
import time
from collections.abc import Mapping
from pathlib import Path

from ..errors import VQBrainError

logger = logging.getLogger(__name__)

#: the lock file's name in each locked folder
LOCK_FILE = ".vqbrain.lock"

# folder (resolved) -> (open descriptor holding the flock, folders this process created for the lock)
_HELD: dict[Path, tuple[int, list[Path]]] = {}


class OutputFolderLockedError(VQBrainError):
    """Another run holds an output folder this run would write to."""


def _holder_record(workflow: str) -> dict:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "workflow": workflow,
    }


def _read_record(fd: int) -> dict:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        record = json.loads(os.read(fd, 65536).decode("utf-8", "replace") or "{}")
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _describe(record: dict) -> str:
    if not record:
        return "another run (its lock file names no holder)"
    return (
        f"the '{record.get('workflow', '?')}' run of pid {record.get('pid', '?')} on host "
        f"{record.get('host', '?')} (since {record.get('since', '?')})"
    )


def _pid_alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _lock_one(key: str, named: Path, workflow: str) -> Path | None:
    """Lock ``named`` (created if need be); return the folder, or None when this process holds it already."""
    created = []
    missing = named
    while not missing.exists() and missing != missing.parent:
        created.append(missing)
        missing = missing.parent
    named.mkdir(parents=True, exist_ok=True)
    # one key per folder however it is named (a symbolic link, '..'): this process must not lock it twice
    folder = named.resolve()
    if folder in _HELD:
        return None
    path = folder / LOCK_FILE
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise
            holder = _read_record(fd)
            os.close(fd)
            _remove_created(created)
            raise OutputFolderLockedError(
                f"{key} '{named}' is in use by {_describe(holder)}: wait for it to end, or choose another --{key}."
            ) from None
        # the holder before us may have removed the file between our open and our lock: then we hold a lock on a
        # file no one else will find, and must lock the one now at the path instead
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    previous = _read_record(fd)
    if previous and previous.get("pid") != os.getpid():
        if previous.get("host") not in (None, socket.gethostname()):
            os.close(fd)
            _remove_created(created)
            raise OutputFolderLockedError(
                f"{key} '{named}' is in use by {_describe(previous)} (a lock from another host, which this host "
                f"cannot check): once that run has ended, delete '{path}'."
            )
        state = "no longer runs" if not _pid_alive(previous.get("pid")) else "no longer holds it"
        logger.warning(f"taking over the stale lock of {key} '{named}': {_describe(previous)} {state}.")
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, json.dumps(_holder_record(workflow)).encode())
    _HELD[folder] = (fd, created)
    return folder


def _remove_created(created: list[Path]) -> None:
    # folders made only to hold the lock; a folder the run has written into since is not empty and stays
    for folder in created:
        try:
            folder.rmdir()
        except OSError:
            return


def lock_output_dirs(dirs: Mapping[str, str | os.PathLike], workflow: str) -> None:
    """Lock every folder of ``dirs`` for this run, or fail naming the run that holds one; nothing is written then.

    Call it at start-up, after the settings are checked (:func:`check_output_dirs` included) and before anything is
    written. In a ``torchrun`` run only rank 0 locks (the ``RANK`` environment variable; the process group does not
    exist yet at start-up). Locks this process already holds are kept (a bundle run from Python, run twice, locks
    once). The locks are released when the process ends, or by :func:`release_output_locks` (the configs'
    ``finalize``).

    Args:
        dirs: setting name (``ckpt_dir``, ``output_dir``, ``generation_dir``) to the folder it names; folders that do
            not exist yet are created to hold the lock (and removed again if it cannot be taken).
        workflow: the run's workflow (``training``, ``inferring``, ...), recorded for the message of a second run.

    Raises:
        OutputFolderLockedError: naming the folder and the holder (pid, host, since when, workflow); the locks taken
            before it by this call are released.
    """
    if int(os.environ.get("RANK", "0") or 0) != 0:
        return
    taken = []
    try:
        for key, named in dirs.items():
            folder = _lock_one(key, Path(named).expanduser().absolute(), workflow)
            if folder is not None:
                taken.append(folder)
    except BaseException:
        for folder in taken:
            _release(folder)
        raise


def _release(folder: Path) -> None:
    fd, created = _HELD.pop(folder)
    try:
        # removed while still locked: a run that opens the path after this creates a new file and lock
        (folder / LOCK_FILE).unlink(missing_ok=True)
    except OSError:
        pass
    os.close(fd)
    _remove_created(created)


def release_output_locks() -> None:
    """Release every output-folder lock this process holds and remove the lock files (safe to call twice)."""
    for folder in list(_HELD):
        _release(folder)


atexit.register(release_output_locks)
