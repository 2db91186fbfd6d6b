"""One writer at a time per output folder: an advisory lock held for the whole run.

Two ``convert`` runs into one folder at once would interleave bundles, the catalog
(:mod:`fhirimg.catalog`) and ``report.json``. So a run takes :class:`FolderLock` first: an exclusive
``flock`` on ``<out>/.fhirimg/lock``, held until the run ends. The second run either waits for it
(``wait`` seconds) or stops at once with :class:`FolderLockedError`, naming the folder and the
holder (PID, host, start time: written into the lock file by whoever holds it).

The lock belongs to the open file, not to the file on disk: the operating system drops it when the
holder exits, however it exits (``kill -9`` included), so there is never a stale lock to clean up.
The lock file itself stays; its content is only a hint for the message. A child created by
``fork`` shares the holder's open file, so the lock is held until the holder and its forked
children (a process pool) have all exited; :meth:`FolderLock.release` unlocks explicitly first.

``<out>/.fhirimg/`` is fhirimg's private state in an output folder (this lock, the catalog, and
``tmp/``: a run's temporary files, such as the records spilled while grouping, which hold patient
data). It is created with mode 0700, the lock file with 0600, and neither is followed when it is a
symbolic link. Temporary files live there, not in the system's temp folder, so a run killed
with ``kill -9`` leaves them where the next run into the folder finds them:
:func:`clean_leftovers`, called by that run once it holds the lock (so a live run's files are
never touched), removes ``tmp/`` and the ``.*.tmp`` files an atomic write left in the folder.
On systems without ``fcntl`` (Windows) there is no lock, as for the push journal.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import re
import shutil
import socket
import stat
import time
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType

import orjson

from fhirimg.errors import FolderLockedError, Holder

try:  # POSIX only; elsewhere the folder is simply not locked (like the push journal).
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

__all__ = [
    "LOCK_NAME",
    "STATE_DIR",
    "WORK_DIR",
    "FolderLock",
    "FolderLockedError",
    "Holder",
    "clean_leftovers",
    "state_dir",
    "work_dir",
]

STATE_DIR = ".fhirimg"
"""fhirimg's private folder inside an output folder (lock, catalog)."""
LOCK_NAME = "lock"
WORK_DIR = "tmp"
# jsonio.open_temp's names: ".<file>.<mkstemp's 8 random characters>.tmp"; only JSON files of
# fhirimg's (bundles, report.json, the journal): an output folder may hold the user's own files.
_ATOMIC_LEFTOVER = re.compile(r"\..+\.jsonl?\.[a-z0-9_]{8}\.tmp")
"""A run's temporary files, inside :data:`STATE_DIR` (:func:`work_dir`)."""
_POLL_FIRST, _POLL_MAX = 0.05, 0.5  # seconds between tries while waiting


def state_dir(out_dir: str | os.PathLike[str]) -> Path:
    """``<out_dir>/.fhirimg``, created (with ``out_dir``) when missing, mode 0700.

    Raises ``OSError`` (ELOOP / ENOTDIR) when it is a symbolic link or not a folder: fhirimg never
    writes its state through a link someone else may have planted.

    >>> import tempfile
    >>> path = state_dir(Path(tempfile.mkdtemp()) / "out")
    >>> path.name, oct(path.stat().st_mode & 0o777)
    ('.fhirimg', '0o700')
    """
    out = Path(out_dir)
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = out / STATE_DIR
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        pass
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise OSError(
            errno.ELOOP, "refusing to use a symbolic link as fhirimg's state folder", path
        )
    if not stat.S_ISDIR(st.st_mode):
        raise OSError(errno.ENOTDIR, "fhirimg's state folder is not a folder", path)
    return path


def work_dir(out_dir: str | os.PathLike[str]) -> Path:
    """``<out_dir>/.fhirimg/tmp``, created when missing (mode 0700; never a symbolic link): where a
    run keeps its temporary files, under the folder's lock (:func:`clean_leftovers`).

    >>> import tempfile
    >>> path = work_dir(Path(tempfile.mkdtemp()))
    >>> path.parent.name, path.name, oct(path.stat().st_mode & 0o777)
    ('.fhirimg', 'tmp', '0o700')
    """
    path = state_dir(out_dir) / WORK_DIR
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        pass
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):  # lstat: a link is not a folder here
        raise OSError(errno.ENOTDIR, "fhirimg's temporary folder is not a folder", path)
    return path


def clean_leftovers(out_dir: str | os.PathLike[str], keep: Path | None = None) -> int:
    """Remove what an interrupted run (``kill -9``, a power cut) left in ``out_dir``: the
    contents of ``.fhirimg/tmp/`` (but ``keep``, a folder the caller made there before taking
    the lock), the ``.<name>.<random>.tmp`` files of atomic writes cut short
    (:func:`fhirimg.jsonio.atomic_writer`) and the ``.fhirimg-stream-*`` folders of older
    versions' ``convert --push``. Returns how many were removed.

    Call it only while holding the folder's :class:`FolderLock`: a live run's files are then
    never removed. Links are removed, never followed.
    """
    out = Path(out_dir)
    removed = 0
    tmp = out / STATE_DIR / WORK_DIR
    kept = os.path.abspath(keep) if keep is not None else None
    candidates: list[Path] = []
    if tmp.is_dir() and not tmp.is_symlink():
        candidates += [p for p in tmp.iterdir() if os.path.abspath(p) != kept]
    if out.is_dir():
        candidates += [
            p
            for p in out.iterdir()
            if _ATOMIC_LEFTOVER.fullmatch(p.name) or p.name.startswith(".fhirimg-stream-")
        ]
    for path in candidates:
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
            removed += 1
        except FileNotFoundError:
            pass
    if removed:
        log.info("removed %d leftover temporary file(s) of an interrupted run in %s", removed, out)
    return removed


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _read_holder(fd: int) -> Holder | None:
    """What the lock file says about its holder; None when empty, torn or stale."""
    try:
        data = os.pread(fd, 4096, 0)
        doc = orjson.loads(data)
        holder = Holder(int(doc["pid"]), str(doc["host"]), str(doc["started"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if holder.host == socket.gethostname():
        try:  # a PID of this host that is gone: the file still holds a former holder's words
            os.kill(holder.pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass  # alive, another user's
    return holder


class FolderLock:
    """The exclusive lock on an output folder, for one run (a context manager).

    ``wait``: None or 0 fails at once when another process holds the lock; a number of seconds
    waits up to that long (``math.inf``: as long as it takes), then fails. Either way the failure
    is :class:`FolderLockedError`, whose message names the folder and the holder.

    >>> import tempfile
    >>> out = Path(tempfile.mkdtemp())
    >>> with FolderLock(out) as lock:
    ...     try:
    ...         FolderLock(out).acquire()
    ...     except FolderLockedError as exc:
    ...         print("locked:", exc.holder is not None and exc.holder.pid == os.getpid())
    locked: True
    >>> with FolderLock(out):  # released on leaving the block
    ...     pass
    """

    def __init__(self, out_dir: str | os.PathLike[str], wait: float | None = None) -> None:
        if wait is not None and (math.isnan(wait) or wait < 0):
            raise ValueError("wait must be None or a number of seconds >= 0")
        self.out_dir = Path(out_dir)
        self.wait = wait or 0.0
        self._fd: int | None = None

    @property
    def path(self) -> Path:
        return self.out_dir / STATE_DIR / LOCK_NAME

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> FolderLock:
        """Take the lock (waiting up to ``wait`` seconds); raises :class:`FolderLockedError`."""
        if self._fd is not None:
            return self
        folder = state_dir(self.out_dir)
        dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
            try:
                fd = os.open(LOCK_NAME, flags, 0o600, dir_fd=dir_fd)
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise OSError(
                        errno.ELOOP, "refusing to follow a symbolic link as the lock", self.path
                    ) from None
                raise
        finally:
            os.close(dir_fd)
        try:
            self._lock(fd)
            # The lock is ours: say who holds it, for the message another run will print.
            info = {"pid": os.getpid(), "host": socket.gethostname(), "started": _now()}
            os.ftruncate(fd, 0)
            os.pwrite(fd, orjson.dumps(info) + b"\n", 0)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        log.debug("locked %s", self.out_dir)
        return self

    def _lock(self, fd: int) -> None:
        if fcntl is None:  # pragma: no cover
            return
        deadline = time.monotonic() + self.wait
        pause = _POLL_FIRST
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise self._locked_error(fd) from None
                time.sleep(min(pause, left))
                pause = min(pause * 2, _POLL_MAX)

    def _locked_error(self, fd: int) -> FolderLockedError:
        holder = _read_holder(fd)
        who = (
            f"another fhirimg process ({holder.describe()})"
            if holder
            else "another fhirimg process"
        )
        waited = f" after waiting {self.wait:g} s" if self.wait else ""
        return FolderLockedError(
            f"the output folder {self.out_dir} is in use by {who}{waited}; only one run may write "
            "to a folder at a time: try again when it has finished, or use another folder",
            self.out_dir,
            holder,
        )

    def release(self) -> None:
        """Drop the lock (for forked children sharing the file too) and close the file."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)  # the holder's words are no longer true
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
        log.debug("unlocked %s", self.out_dir)

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
