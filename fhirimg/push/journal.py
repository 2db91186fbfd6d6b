"""The push journal: what a server has confirmed, so that a re-run skips it.

A JSON Lines file, one record a line, only ever appended; each line is written with one ``write``
and fsynced before the work it records counts as done. A crash can at worst leave a torn last line,
which is ignored on reading (the work it described is simply done again, harmlessly, since every
push is idempotent).

Group commit: the lock that keeps lines whole is held for the ``write`` only, never during the
``fsync``. A writer whose line is not yet on disk either starts an fsync, which then covers every
line written before it started, or waits for the one under way and, if its line came too late
for it, starts the next. So with ``--jobs 4`` one fsync commonly confirms several bundles, and a
slow disk never blocks :meth:`Journal.bundle_done` lookups. A record counts (in this process and in
what :meth:`Journal.record_bundle` returns to its caller) only after an fsync that covers it
succeeded. :meth:`Journal.write_bundle` and :meth:`Journal.commit` are the two halves of
:meth:`Journal.record_bundle`: ``push`` writes a bundle's line from the worker, which goes on to
the next bundle at once, and commits it (one fsync for all the lines written meanwhile) before it
reports the bundle done. An fsync that fails leaves the journal broken: that append and every later one raise
:class:`~fhirimg.errors.JournalError`, so no work is reported done without being on disk.
Records::

    {"v": 1, "kind": "bundle", "server": "https://fhir.example/r4", "sha256": "<hex>",
     "file": "study-1.json", "entries": 3, "at": "2026-11-27T17:30:00Z"}
    {"v": 1, "kind": "binary", "server": "https://fhir.example/r4", "id": "<binary id>",
     "sha256": "<hex>", "size": 524288, "at": "..."}
    {"v": 1, "kind": "instance", "server": "https://pacs.example/dicom-web", "sop": "<uid>",
     "sha256": "<hex>", "size": 524288, "at": "..."}

A bundle is keyed by (server, sha256 of its JSON bytes): an edited bundle has another hash and is
pushed again. A Binary is keyed by (server, id, sha256 of its bytes); a DICOM instance stored with
STOW-RS (``push --dicomweb``) by (DICOMweb base URL, SOP Instance UID, sha256 of its file). The file also holds an
exclusive ``flock`` while a push runs, so two overlapping cron runs cannot race each other.

The journal names files and servers, so it is created owner-only (0600, or 0640 with
``group_readable``), and it is opened with ``O_NOFOLLOW``: a symbolic link planted at its path is
refused (:class:`~fhirimg.errors.InputError`) instead of having its target appended to.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import deque
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import orjson

from fhirimg import jsonio
from fhirimg.errors import InputError, JournalError, JournalLockedError

try:  # POSIX only; elsewhere the journal is simply not locked.
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_JOURNAL_NAME", "Journal"]

DEFAULT_JOURNAL_NAME = ".fhirimg-push-journal.jsonl"
_VERSION = 1


_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def _open(path: Path, flags: int, mode: int = 0o600) -> int:
    """``os.open`` that refuses a symbolic link at ``path`` (O_NOFOLLOW; ELOOP otherwise)."""
    try:
        return os.open(path, flags | _NOFOLLOW | getattr(os, "O_CLOEXEC", 0), mode)
    except OSError as exc:
        if path.is_symlink():
            raise InputError(
                f"refusing to use the journal {path}: it is a symbolic link (fhirimg writes "
                "its journal only as a file of its own)"
            ) from None
        raise exc


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Journal:
    """An append-only record of confirmed work.

    ``Journal(None)`` keeps its records in memory only. ``ignore_existing`` (``--force``) reads
    nothing but still appends; ``read_only`` (``--dry-run``) reads and never writes or locks.

    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "j.jsonl"
    >>> with Journal(path) as j:
    ...     j.record_bundle("http://s", "ab12", file="a.json", entries=3)
    >>> with Journal(path) as j:
    ...     j.bundle_done("http://s", "ab12"), j.bundle_done("http://other", "ab12")
    (True, False)
    """

    def __init__(
        self,
        path: Path | None,
        *,
        ignore_existing: bool = False,
        read_only: bool = False,
        mode: jsonio.Modes = jsonio.PRIVATE,
    ) -> None:
        self.path = path
        self.read_only = read_only
        self.mode = mode
        self._lock = threading.Lock()
        # Group commit (module docstring): lines written, lines an fsync confirmed, whether an
        # fsync is under way, and the error that broke the journal.
        self._synced = threading.Condition(self._lock)
        self._written_count = 0
        self._synced_count = 0
        self._syncing = False
        self._unsynced: deque[tuple[int, dict[str, Any]]] = deque()  # (ticket, record)
        self.error: OSError | None = None
        self._bundles: set[tuple[str, str]] = set()
        self._binaries: set[tuple[str, str, str]] = set()
        self._instances: set[tuple[str, str, str]] = set()
        self._fd: int | None = None
        self.torn_lines = 0
        if path is not None and (path.exists() or path.is_symlink()) and not ignore_existing:
            self._load(path)

    # --- reading ---
    def _load(self, path: Path) -> None:
        with os.fdopen(_open(path, os.O_RDONLY), "rb") as fh:
            for number, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    record = orjson.loads(line)
                except orjson.JSONDecodeError:
                    # A torn write from a crash: the work it described is done again.
                    self.torn_lines += 1
                    log.warning("journal %s line %d is incomplete; ignored", path.name, number)
                    continue
                self._add(record)

    def _add(self, record: Any) -> None:
        if not isinstance(record, dict):
            return
        kind, server, sha = record.get("kind"), record.get("server"), record.get("sha256")
        if not isinstance(server, str) or not isinstance(sha, str):
            return
        if kind == "bundle":
            self._bundles.add((server, sha))
        elif kind == "binary" and isinstance(record.get("id"), str):
            self._binaries.add((server, record["id"], sha))
        elif kind == "instance" and isinstance(record.get("sop"), str):
            self._instances.add((server, record["sop"], sha))

    def bundle_done(self, server: str, sha256: str) -> bool:
        with self._lock:
            return (server, sha256) in self._bundles

    def bundle_digests(self, server: str) -> frozenset[str]:
        """The digests of every bundle journaled as pushed to ``server`` (for tasks that check
        :meth:`bundle_done` elsewhere, such as the Dask workers that push)."""
        with self._lock:
            return frozenset(sha for where, sha in self._bundles if where == server)

    def binary_done(self, server: str, binary_id: str, sha256: str) -> bool:
        with self._lock:
            return (server, binary_id, sha256) in self._binaries

    def instance_done(self, server: str, sop_instance_uid: str, sha256: str) -> bool:
        with self._lock:
            return (server, sop_instance_uid, sha256) in self._instances

    # --- writing ---
    def open(self) -> Journal:
        """Open for appending and take the exclusive lock (raises :class:`JournalLockedError`)."""
        if self.path is None or self.read_only or self._fd is not None:
            return self
        if not self.path.parent.is_dir():
            jsonio.make_folder(self.path.parent, self.mode)
        try:
            # A new journal: created here, so it gets our mode whatever the umask.
            fd = _open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL)
            os.fchmod(fd, self.mode.file)
        except FileExistsError:
            fd = _open(self.path, os.O_WRONLY | os.O_APPEND)
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise JournalLockedError(
                    f"another fhirimg push is using the journal {self.path}; try again later"
                ) from None
        # A torn last line without its newline would glue onto the next record: end it first.
        size = os.fstat(fd).st_size
        if size:
            reader = _open(self.path, os.O_RDONLY)
            try:
                last = os.pread(reader, 1, size - 1)
            finally:
                os.close(reader)
            if last != b"\n":
                os.write(fd, b"\n")
        self._fd = fd
        return self

    def close(self) -> None:
        """Close the journal, after one last fsync of lines written but not yet committed (a
        run stopped between :meth:`write_bundle` and :meth:`commit`: they are durable then)."""
        with self._lock:
            while self._syncing:  # an fsync of another thread still uses the descriptor
                self._synced.wait()
            if self._fd is not None and self.error is None and self._unsynced:
                self._sync_locked()
            if self._fd is not None:
                os.close(self._fd)  # also releases the flock
                self._fd = None

    def __enter__(self) -> Journal:
        return self.open()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _append(self, record: dict[str, Any]) -> None:
        """Write the record's line and return once an fsync covering it succeeded (group commit,
        module docstring); only then does the record count. Raises :class:`JournalError`."""
        self.commit(self._write(record))

    def _write(self, record: dict[str, Any]) -> int:
        """Write the record's line (one ``write``, no fsync) and return its ticket for
        :meth:`commit`; the record counts only once an fsync covering it succeeded."""
        line = orjson.dumps(record) + b"\n"
        with self._lock:
            if self._fd is None:
                self._add(record)  # in memory only: nothing to wait for
                return 0
            self._raise_if_broken()
            try:
                # One write of a whole line on an O_APPEND descriptor: lines never interleave.
                os.write(self._fd, line)
            except OSError as exc:
                self.error = exc
                self._raise_if_broken()
            self._written_count += 1
            self._unsynced.append((self._written_count, record))
            return self._written_count

    def commit(self, ticket: int) -> None:
        """Return once an fsync covering line ``ticket`` (from :meth:`write_bundle`, or any
        later one) succeeded: one fsync confirms every line written before it started. Raises
        :class:`JournalError` when the journal broke before that."""
        with self._lock:
            while self._synced_count < ticket:
                self._raise_if_broken()
                if self._syncing:
                    self._synced.wait()  # an fsync is under way; it may cover this line
                    continue
                if self._fd is None:  # closed meanwhile (close() synced what it could)
                    self._raise_if_broken()
                    break
                self._sync_locked()

    def _sync_locked(self) -> None:
        """One fsync of every line written so far, without holding the lock during it; the
        records it covers count from then on. Called, and returns, with the lock held."""
        fd = self._fd
        assert fd is not None
        self._syncing = True
        covers = self._written_count  # every line written so far
        self._lock.release()
        try:
            os.fsync(fd)
        except OSError as exc:
            failed: OSError | None = exc
        else:
            failed = None
        finally:
            self._lock.acquire()
            self._syncing = False
            self._synced.notify_all()
        if failed is not None:
            self.error = failed
            return
        self._synced_count = max(self._synced_count, covers)
        while self._unsynced and self._unsynced[0][0] <= covers:
            self._add(self._unsynced.popleft()[1])

    def _raise_if_broken(self) -> None:
        if self.error is not None:
            raise JournalError(
                f"the journal {self.path} cannot be written ({self.error.strerror or self.error}); "
                "work confirmed since its last good write is not recorded and will be redone"
            )

    def record_bundle(self, server: str, sha256: str, *, file: str, entries: int) -> None:
        """Record a bundle the server confirmed; returns once the line is on disk."""
        self.commit(self.write_bundle(server, sha256, file=file, entries=entries))

    def write_bundle(self, server: str, sha256: str, *, file: str, entries: int) -> int:
        """Write a confirmed bundle's line and return its ticket without waiting for the disk:
        the bundle counts as done (here and for the caller) only once :meth:`commit` of the
        ticket returned. So a worker goes on to the next bundle while the fsync is pending."""
        return self._write(
            {
                "v": _VERSION,
                "kind": "bundle",
                "server": server,
                "sha256": sha256,
                "file": file,
                "entries": entries,
                "at": _now(),
            }
        )

    def record_binary(self, server: str, binary_id: str, sha256: str, *, size: int) -> None:
        self._append(
            {
                "v": _VERSION,
                "kind": "binary",
                "server": server,
                "id": binary_id,
                "sha256": sha256,
                "size": size,
                "at": _now(),
            }
        )

    def record_instance(
        self, server: str, sop_instance_uid: str, sha256: str, *, size: int
    ) -> None:
        """A DICOM instance the DICOMweb server at ``server`` confirmed storing (STOW-RS)."""
        self._append(
            {
                "v": _VERSION,
                "kind": "instance",
                "server": server,
                "sop": sop_instance_uid,
                "sha256": sha256,
                "size": size,
                "at": _now(),
            }
        )
