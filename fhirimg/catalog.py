"""The output folder's catalog: every input file seen, so that a re-run reads only what changed.

``convert`` into a folder it has written before should read only new or changed files, rewrite only
the bundles of the studies they touch, and still write each of those bundles whole (old instances
and new). That needs to know, per input file, what it was when it was last read and what it held.
The catalog keeps that in ``<out>/.fhirimg/catalog.sqlite`` (next to the folder's lock,
:mod:`fhirimg.folderlock`, which must be held while the catalog is open for writing):

* one row per input file: its path (as bytes, so names that are not UTF-8 survive), the stat
  signature (size, mtime_ns, ctime_ns, inode), the Study / Series / SOP Instance UIDs, the record
  read from it (the pickled :class:`~fhirimg.model.InstanceRecord` of a
  :class:`~fhirimg.group.PackedRecord`, so a study's bundle is rebuilt without re-reading its
  files), and its outcome (converted / skipped / duplicate / failed, with the bundle or reason);
* one row per study: whether its bundle must be (re)written ("dirty") and its last outcome;
* the history of runs (start, end, inputs, counts) for ``report.json``.

A file is *unchanged* when size, mtime_ns, ctime_ns and inode are all as recorded; anything else
is *changed* and read again (a ``touch`` or ``chmod`` too: a re-read costs little, a missed change
loses an instance). A file modified within two seconds of the start of the run that read it is
"racy" (a later write in the same clock tick would keep its mtime) and is read again next time,
as git does for its index. A re-read that gives an equal record leaves its study clean, so an
unchanged tree rewrites nothing.

Rows are keyed by the absolute path (``os.path.abspath``, links not resolved), so the same file is
one row whatever the working directory; the path as the run gave it is kept for display.

Crash safety: WAL journal, a commit per batch (:meth:`Catalog.record_many`) and per study written
(:meth:`Catalog.study_done`). A study is marked dirty in the same transaction that records its new
files, and marked clean only in the transaction that records its written bundle, so a run killed at
any point (``kill -9`` included) leaves a catalog whose dirty studies are exactly those a re-run
must rewrite. The file is created whole (built under a temporary name, then renamed), so a catalog
that exists but is empty, truncated, not SQLite, or of the wrong shape is corrupt:
:class:`CatalogError`, whose message says to re-run with ``--full``, which discards the catalog
and rebuilds it (:meth:`Catalog.open` with ``full=True``).

Schema versions: ``PRAGMA user_version`` (:data:`SCHEMA_VERSION`); a catalog written by a newer
fhirimg is refused rather than half understood. ``PRAGMA application_id`` marks the file as
fhirimg's. When this fhirimg reads files differently from the one that wrote the records (another
version, another :class:`~fhirimg.model.InstanceRecord`), every file is read again and every study
rewritten; when the bundle options change (:meth:`Catalog.use_options`), every study is rewritten.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import logging
import os
import pickle
import sqlite3
import stat
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple

from fhirimg import jsonio
from fhirimg._version import __version__
from fhirimg.errors import CatalogError
from fhirimg.folderlock import state_dir
from fhirimg.group import PackedRecord
from fhirimg.model import (
    Code,
    ContentItem,
    FileProblem,
    FileStatus,
    ImageReference,
    InstanceRecord,
    Issuer,
    SrContent,
)

log = logging.getLogger(__name__)

__all__ = [
    "CATALOG_NAME",
    "SCHEMA_VERSION",
    "Catalog",
    "CatalogEntry",
    "CatalogError",
    "Change",
    "RunRecord",
    "StudyEntry",
]

CATALOG_NAME = "catalog.sqlite"
"""The catalog's file name inside ``<out>/.fhirimg/`` (with ``-wal`` / ``-shm`` beside it)."""
SCHEMA_VERSION = 1
"""``PRAGMA user_version`` of the catalogs this module writes; newer ones are refused."""
APPLICATION_ID = 0x66686963  # b"fhic": PRAGMA application_id of a fhirimg catalog
RACY_NS = 2_000_000_000  # mtime granularity allowed for (FAT: 2 s)
KEEP_RUNS = 1000  # run history kept
_CHUNK = 500  # keys per query (SQLite allows 32766 parameters)

_SCHEMA = {
    "file": (
        "id INTEGER PRIMARY KEY",
        "key BLOB NOT NULL UNIQUE",  # os.fsencode(os.path.abspath(path))
        "given BLOB NOT NULL",  # os.fsencode(path as the run gave it)
        "size INTEGER",
        "mtime_ns INTEGER",
        "ctime_ns INTEGER",
        "ino INTEGER",
        "racy INTEGER NOT NULL",  # 1: read again next run whatever the signature says
        "study TEXT",
        "series TEXT",
        "sop TEXT",
        "sop_class TEXT",
        "status TEXT",  # FileStatus value; NULL: read, its study not written yet
        "detail BLOB",  # bundle name or reason, UTF-8 with surrogateescape
        "first_run INTEGER NOT NULL",
        "seen_run INTEGER NOT NULL",  # the last run that recorded it (unchanged: not written)
        "changed_run INTEGER NOT NULL",
        # Last: the large column. Reading the ones before it (a report, the stat check) then
        # never has to step through its overflow pages.
        "rec BLOB",  # PackedRecord.blob; NULL for a file that gave no record
    ),
    "study": ("uid TEXT PRIMARY KEY", "dirty INTEGER NOT NULL", "outcome BLOB"),
    "run": (
        "id INTEGER PRIMARY KEY",
        "started TEXT NOT NULL",
        "ended TEXT",
        "version TEXT NOT NULL",
        "full INTEGER NOT NULL",
        "inputs BLOB NOT NULL",
        "counts BLOB",
    ),
    "meta": ("name TEXT PRIMARY KEY", "value TEXT NOT NULL"),
}
_ENTRY_COLUMNS = "key, given, status, detail, study, series, sop, size, mtime_ns"
_INDEXES = (
    "CREATE INDEX file_study ON file (study)",
    "CREATE INDEX file_sop ON file (sop)",
    # Covering indexes: a re-run over an unchanged tree reads these, never the table's rows
    # (each holds a pickled record): the stat check by key, the report and missing() by path.
    "CREATE INDEX file_stat ON file (key, size, mtime_ns, ctime_ns, ino, racy)",
    f"CREATE INDEX file_entry ON file (given, {_ENTRY_COLUMNS}, seen_run)",
)
_CORRUPT = {"SQLITE_CORRUPT", "SQLITE_NOTADB", "SQLITE_ERROR", "SQLITE_SCHEMA", "SQLITE_MISMATCH"}

Result = InstanceRecord | PackedRecord | FileProblem
"""What reading one file gives."""


class Change(StrEnum):
    """How an input file compares with the catalog."""

    NEW = "new"
    CHANGED = "changed"
    UNCHANGED = "unchanged"


class CatalogEntry(NamedTuple):
    """One input file as the catalog knows it (a named tuple: a report streams tens of
    thousands of them).

    ``status`` is None for a file read whose study has not been written yet (a run was
    interrupted: the study is dirty and the next run writes it).
    """

    path: str
    status: FileStatus | None
    detail: str | None
    study_instance_uid: str | None
    series_instance_uid: str | None
    sop_instance_uid: str | None
    size: int | None
    mtime_ns: int | None


@dataclass(frozen=True)
class StudyEntry:
    """One study: its last outcome (what :meth:`Catalog.study_done` was given) and whether its
    bundle must be written again."""

    study_instance_uid: str
    outcome: dict[str, Any] | None
    dirty: bool


@dataclass(frozen=True)
class RunRecord:
    """One run of the history; ``ended`` None: interrupted (or still running)."""

    id: int
    started: str
    ended: str | None
    version: str
    full: bool
    inputs: tuple[str, ...]
    counts: dict[str, int]


def _key(path: str | os.PathLike[str], cwd: str | None = None) -> bytes:
    """The catalog key of a path: its absolute, normalised form, as bytes.

    ``cwd`` (``os.getcwd()``, given by a caller doing many) spares ``os.path.abspath`` for the
    paths a walk yields: joined from a folder name, they are already normal unless they hold
    ``//``, a ``.`` or ``..`` segment (any ``/.``) or end in ``/``; those still go through
    ``normpath``. About a third of an unchanged re-run's own time was ``abspath``.

    >>> _key("/a/b/../c"), _key("x/y.dcm", "/w"), _key("/w/.hidden/z", "/w")
    (b'/a/c', b'/w/x/y.dcm', b'/w/.hidden/z')
    """
    text = os.fspath(path)
    if cwd is None or not isinstance(text, str):
        return os.fsencode(os.path.abspath(text))
    full = text if text.startswith("/") else f"{cwd}/{text}"
    if "//" in full or "/." in full or full.endswith("/"):
        full = os.path.normpath(full)
    return os.fsencode(full)


def _display(key: bytes, given: bytes, cwd: bytes | None = None) -> str:
    """The path as the run gave it when it still names the file from here, else the absolute one.

    ``cwd`` (``os.fsencode(os.getcwd())``, given by a caller doing many) spares ``abspath`` in
    the two common cases: an absolute path as given, a plain relative one below ``cwd``.
    """
    if given == key or (cwd is not None and key == cwd + b"/" + given):
        return given.decode(_FS_ENCODING, "surrogateescape")  # os.fsdecode, without its checks
    text = os.fsdecode(given)
    return text if _key(text) == key else os.fsdecode(key)


_FS_ENCODING = sys.getfilesystemencoding()


def _text(value: str | None) -> bytes | None:
    return None if value is None else value.encode("utf-8", "surrogateescape")


def _untext(value: bytes | None) -> str | None:
    return None if value is None else bytes(value).decode("utf-8", "surrogateescape")


def _printable(path: str | os.PathLike[str]) -> str:
    """A path as JSON-safe text: bytes that are not UTF-8 shown as ``\\xNN``."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _version() -> str:
    return __version__  # not importlib.metadata: ~25 ms to import and a search of the path


def _reader_fingerprint() -> str:
    """Changes when records read now could differ from stored ones: another fhirimg version or
    another shape of the record classes."""
    shape = [
        (cls.__name__, [(f.name, str(f.type)) for f in dataclasses.fields(cls)])
        for cls in (InstanceRecord, Issuer, Code, SrContent, ContentItem, ImageReference)
    ]
    return hashlib.sha256(repr((_version(), shape)).encode()).hexdigest()[:16]


def _error(path: Path, exc: BaseException) -> CatalogError:
    """SQLite's error as a :class:`CatalogError`: damage (rebuild with ``--full``) or not (a full
    disk, a read-only folder: rebuilding would not help)."""
    name = str(getattr(exc, "sqlite_errorname", ""))
    if name.startswith("SQLITE_CORRUPT") or name in _CORRUPT:
        return _corrupt(path, str(exc))
    return CatalogError(f"cannot use the catalog {path}: {exc}", path, rebuild=False)


def _corrupt(path: Path, why: str) -> CatalogError:
    return CatalogError(
        f"the catalog {path} is unusable ({why}); re-run with --full to rebuild it "
        "(every input file is read again)",
        path,
    )


class Catalog:
    """The catalog of one output folder. Open it with :meth:`open`, while holding the folder's
    :class:`~fhirimg.folderlock.FolderLock`.

    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> (folder / "a.dcm").write_bytes(b"x")
    1
    >>> record = InstanceRecord(str(folder / "a.dcm"), 1, "1.2.840.10008.5.1.4.1.1.2",
    ...     "1.2.3.4", "1.2.3", "1.2.3.1")
    >>> with Catalog.open(folder / "out") as catalog:
    ...     _ = catalog.begin_run([folder])
    ...     st = os.stat(folder / "a.dcm")
    ...     print(catalog.classify(record.path, st))
    ...     catalog.record_many([(record.path, st, record)])
    ...     print(catalog.studies_changed(), catalog.records_of_study("1.2.3") == [record])
    ...     catalog.end_run({})
    new
    ['1.2.3'] True
    """

    def __init__(self, db: sqlite3.Connection, path: Path) -> None:
        self._db = db
        self.path = path
        self._run: int | None = None
        self._run_started_ns = 0
        self._counts = dict.fromkeys(Change, 0)

    # --- opening ---

    @classmethod
    def open(cls, out_dir: str | os.PathLike[str], *, full: bool = False) -> Catalog:
        """Open (creating it when missing) the catalog of ``out_dir``; ``full`` discards it first.

        Raises :class:`CatalogError` for a corrupt catalog or one written by a newer fhirimg,
        ``OSError`` when the state folder cannot be made or is a symbolic link.
        """
        path = state_dir(out_dir) / CATALOG_NAME
        if full:
            for name in (path, *(path.with_name(path.name + s) for s in ("-wal", "-shm"))):
                name.unlink(missing_ok=True)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            _create(path)
        else:
            if stat.S_ISLNK(st.st_mode):
                raise OSError(errno.ELOOP, "refusing to open a symbolic link as the catalog", path)
            if not stat.S_ISREG(st.st_mode):
                raise _corrupt(path, "not a regular file")
        try:
            db = sqlite3.connect(path, timeout=30)
        except sqlite3.Error as exc:
            raise _error(path, exc) from exc
        catalog = cls(db, path)
        try:
            with catalog._guard():
                catalog._check()
                db.execute("PRAGMA journal_mode = WAL")
                db.execute("PRAGMA synchronous = NORMAL")
                catalog._check_reader()
        except BaseException:
            db.close()
            raise
        return catalog

    def _check(self) -> None:
        """Refuse a file that is not a complete catalog this version understands."""
        db, path = self._db, self.path
        if db.execute("PRAGMA application_id").fetchone()[0] != APPLICATION_ID:
            raise _corrupt(path, "not a fhirimg catalog")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise CatalogError(
                f"the catalog {path} was written by a newer fhirimg (catalog version {version}; "
                f"this one reads up to {SCHEMA_VERSION}): upgrade fhirimg, or re-run with --full "
                "to rebuild it (every input file is read again)",
                path,
            )
        if version != SCHEMA_VERSION:
            raise _corrupt(path, f"unknown catalog version {version}")
        for table, columns in _SCHEMA.items():
            have = [r[1] for r in db.execute(f"PRAGMA table_info({table})")]
            if have != [c.split()[0] for c in columns]:
                raise _corrupt(path, f"table {table!r} is missing or has other columns")
        # A cut file: the header says more pages than the file holds. Only checkable without a
        # WAL, which may legitimately hold the last pages (after a kill -9).
        wal = path.with_name(path.name + "-wal")
        if not wal.exists() or wal.stat().st_size == 0:
            pages = db.execute("PRAGMA page_count").fetchone()[0]
            page_size = db.execute("PRAGMA page_size").fetchone()[0]
            if path.stat().st_size < pages * page_size:
                raise _corrupt(path, "the file is truncated")

    def _check_reader(self) -> None:
        fingerprint = _reader_fingerprint()
        if self._meta("reader") == fingerprint:
            return
        with self._db:
            if self._meta("reader") is not None:
                log.info("fhirimg changed since the catalog was written: reading every file again")
                self._db.execute("UPDATE file SET racy = 1")
                self._db.execute("UPDATE study SET dirty = 1")
            self._set_meta("reader", fingerprint)

    def _meta(self, name: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return None if row is None else str(row[0])

    def _set_meta(self, name: str, value: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (name, value))

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        """SQLite's errors as :class:`CatalogError` (corrupt: with the ``--full`` hint)."""
        try:
            yield
        except sqlite3.Error as exc:
            raise _error(self.path, exc) from exc

    def close(self) -> None:
        """Commit what is pending (marks of files seen) and close."""
        with contextlib.suppress(sqlite3.Error):
            self._db.commit()
        self._db.close()

    def __enter__(self) -> Catalog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- runs ---

    def begin_run(self, inputs: Iterable[str | os.PathLike[str]], *, full: bool = False) -> int:
        """Start a run (needed before :meth:`classify` and :meth:`record_many`); returns its id.

        ``full`` only goes into the history (a ``--full`` run); the discarding is :meth:`open`'s.
        """
        doc = jsonio.dumps([_printable(p) for p in inputs])
        with self._guard(), self._db:
            cur = self._db.execute(
                "INSERT INTO run (started, version, full, inputs) VALUES (?, ?, ?, ?)",
                (_now(), _version(), int(full), doc),
            )
            run = int(cur.lastrowid or 0)
            self._db.execute("DELETE FROM run WHERE id <= ?", (run - KEEP_RUNS,))
        self._run, self._run_started_ns = run, time.time_ns()
        self._counts = dict.fromkeys(Change, 0)
        with self._guard():
            # Files classified in this run, in the connection's own temporary table: marking
            # them in the file table would rewrite every row of the catalog on every run.
            self._db.execute("CREATE TEMP TABLE IF NOT EXISTS seen (key BLOB PRIMARY KEY)")
            self._db.execute("DELETE FROM temp.seen")
        return run

    def run_counts(self) -> dict[str, int]:
        """How many files :meth:`classify` found new, changed, unchanged in this run."""
        return {c.value: n for c, n in self._counts.items()}

    def end_run(self, counts: Mapping[str, int] | None = None) -> None:
        """End the run: its counts (:meth:`run_counts` and ``counts``) go into the history."""
        run = self._need_run()
        merged = {**self.run_counts(), **(counts or {})}
        with self._guard(), self._db:
            self._db.execute(
                "UPDATE run SET ended = ?, counts = ? WHERE id = ?",
                (_now(), jsonio.dumps(merged), run),
            )
        self._run = None

    def runs(self) -> list[RunRecord]:
        """The history of runs, oldest first (the last :data:`KEEP_RUNS`)."""
        with self._guard():
            rows = self._db.execute(
                "SELECT id, started, ended, version, full, inputs, counts FROM run ORDER BY id"
            ).fetchall()
        return [
            RunRecord(
                id=r[0],
                started=r[1],
                ended=r[2],
                version=r[3],
                full=bool(r[4]),
                inputs=tuple(jsonio.loads(r[5])),
                counts=jsonio.loads(r[6]) if r[6] is not None else {},
            )
            for r in rows
        ]

    def _need_run(self) -> int:
        if self._run is None:
            raise RuntimeError("Catalog.begin_run() must come first")
        return self._run

    # --- files ---

    def classify(self, path: str | os.PathLike[str], st: os.stat_result) -> Change:
        """Compare a file's stat with what was recorded; marks the file as seen in this run.

        The mark lives in this connection for this run (:meth:`missing` reads it); nothing is
        written to the catalog for a file found unchanged.
        """
        return self.classify_many([(path, st)])[0]

    def classify_many(
        self, items: Sequence[tuple[str | os.PathLike[str], os.stat_result]]
    ) -> list[Change]:
        """:meth:`classify` for many files at once (one query per few hundred files: what makes
        a re-run over an unchanged tree cheap)."""
        self._need_run()
        cwd = os.getcwd()
        keys = [_key(path, cwd) for path, _ in items]
        # (size, mtime_ns, ctime_ns, ino) of each known file; None: racy, read it again
        known: dict[bytes, tuple[int, int, int, int] | None] = {}
        with self._guard():
            for at in range(0, len(keys), _CHUNK):
                chunk = keys[at : at + _CHUNK]
                marks = ", ".join("?" * len(chunk))
                query = (
                    "SELECT key, size, mtime_ns, ctime_ns, ino, racy FROM file "
                    f"INDEXED BY file_stat WHERE key IN ({marks})"
                )
                for key, size, mtime_ns, ctime_ns, ino, racy in self._db.execute(query, chunk):
                    known[key] = None if racy else (size, mtime_ns, ctime_ns, ino)
            self._db.executemany(
                "INSERT OR IGNORE INTO temp.seen VALUES (?)", ((k,) for k in keys if k in known)
            )
        new, changed, unchanged = Change.NEW, Change.CHANGED, Change.UNCHANGED
        out = [
            new
            if key not in known
            else unchanged
            if known[key] == (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
            else changed
            for key, (_, st) in zip(keys, items, strict=True)
        ]
        for change in out:
            self._counts[change] += 1
        return out

    def commit(self) -> None:
        """Make pending changes durable (one batch)."""
        with self._guard():
            self._db.commit()

    def record(
        self, path: str | os.PathLike[str], st: os.stat_result | None, result: Result
    ) -> None:
        """:meth:`record_many` for one file (one commit: prefer batches)."""
        self.record_many([(path, st, result)])

    def record_many(
        self, items: Iterable[tuple[str | os.PathLike[str], os.stat_result | None, Result]]
    ) -> None:
        """Record what reading files gave, in one transaction.

        ``st`` is the stat taken *before* the file was read (None when it could not be taken: the
        file is then read again next run). A record equal to the stored one leaves the file's
        outcome and its study alone; any other record marks its study (and the study the file
        was in before) dirty, its outcome unknown until :meth:`study_done`. A problem (skipped,
        failed) is the file's outcome at once.
        """
        run = self._need_run()
        racy_before = self._run_started_ns - RACY_NS
        with self._guard(), self._db:
            for path, st, result in items:
                self._record_one(run, racy_before, path, st, result)

    def _record_one(
        self,
        run: int,
        racy_before: int,
        path: str | os.PathLike[str],
        st: os.stat_result | None,
        result: Result,
    ) -> None:
        db = self._db
        key = _key(path)
        old = db.execute(
            "SELECT study, rec, status, detail, first_run, changed_run FROM file WHERE key = ?",
            (key,),
        ).fetchone()
        if isinstance(result, FileProblem):
            uids: tuple[str | None, ...] = (None, None, None, None)
            blob = None
            status: str | None = result.status.value
            detail = _text(result.reason)
            same = old is not None and old[1] is None and (old[2], old[3]) == (status, detail)
        else:
            packed = result if isinstance(result, PackedRecord) else PackedRecord.of(result)
            uids, blob = (packed.study, packed.series, packed.sop, packed.sop_class), packed.blob
            same = old is not None and old[1] is not None and _same_record(old[1], blob)
            status, detail = (old[2], old[3]) if same else (None, None)
            if not same or self._shares_sop(key, packed.sop):
                # Another file with this SOP Instance UID: which of them is kept, and whether they
                # are the same content, depends on the bytes (a pixel edit leaves the header
                # record equal), so their studies are resolved again.
                self._dirty(packed.study)
        if old is not None and old[0] is not None and old[0] != uids[0]:
            self._dirty(old[0])
        if st is None:
            signature: tuple[int | None, ...] = (None, None, None, None)
            racy = 1
        else:
            signature = (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
            racy = int(st.st_mtime_ns >= racy_before)
        first_run = run if old is None else old[4]
        changed_run = old[5] if same else run
        db.execute(
            "INSERT OR REPLACE INTO file (key, given, size, mtime_ns, ctime_ns, ino, racy, study, "
            "series, sop, sop_class, rec, status, detail, first_run, seen_run, changed_run) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (key, os.fsencode(path), *signature, racy, *uids, blob, status, detail)
            + (first_run, run, changed_run),
        )

    def _shares_sop(self, key: bytes, sop: str) -> bool:
        row = self._db.execute(
            "SELECT 1 FROM file WHERE sop = ? AND key != ? LIMIT 1", (sop, key)
        ).fetchone()
        return row is not None

    def _dirty(self, study: str) -> None:
        self._db.execute(
            "INSERT INTO study (uid, dirty) VALUES (?, 1) ON CONFLICT (uid) DO UPDATE SET dirty = 1",
            (study,),
        )

    def set_outcomes(self, files: Iterable[tuple[str, FileStatus | str, str]]) -> None:
        """Set the outcome (status, bundle name or reason) of files already recorded, e.g. the
        duplicates :meth:`fhirimg.group.StudyIndex.resolve_duplicates` found. One transaction."""
        with self._guard(), self._db:
            self._set_outcomes(files)

    def _set_outcomes(self, files: Iterable[tuple[str, FileStatus | str, str]]) -> None:
        self._db.executemany(
            "UPDATE file SET status = ?, detail = ? WHERE key = ?",
            ((FileStatus(s).value, _text(d), _key(p)) for p, s, d in files),
        )

    def missing(self) -> list[CatalogEntry]:
        """Files recorded before, not seen in this run, that no longer exist, sorted by path.

        A file not seen because it is outside this run's inputs but still exists is not missing:
        it is simply not looked at this time, and keeps its place.
        """
        run = self._need_run()
        with self._guard():
            rows = self._db.execute(
                f"SELECT {_ENTRY_COLUMNS} FROM file WHERE seen_run != ? "
                "AND key NOT IN (SELECT key FROM temp.seen) ORDER BY given, key",
                (run,),
            ).fetchall()
        out = []
        for row in rows:
            try:
                os.lstat(os.fsdecode(row[0]))
            except (FileNotFoundError, NotADirectoryError):
                out.append(_entry(row))
        return out

    def prune(self, paths: Iterable[str | os.PathLike[str]]) -> set[str]:
        """Forget files (``--prune-missing``); returns the studies they were in, now dirty."""
        studies: set[str] = set()
        with self._guard(), self._db:
            for path in paths:
                key = _key(path)
                row = self._db.execute("SELECT study FROM file WHERE key = ?", (key,)).fetchone()
                if row is None:
                    continue
                self._db.execute("DELETE FROM file WHERE key = ?", (key,))
                if row[0] is not None:
                    studies.add(row[0])
                    self._dirty(row[0])
        return studies

    def entries(self) -> Iterator[CatalogEntry]:
        """Every file of the catalog, sorted by path (for ``report.json``; streamed)."""
        cwd = os.fsencode(os.getcwd())
        with self._guard():
            cursor = self._db.execute(f"SELECT {_ENTRY_COLUMNS} FROM file ORDER BY given, key")
            for row in cursor:
                yield _entry(row, cwd)

    def failures(self, limit: int) -> list[CatalogEntry]:
        """Up to ``limit`` failed files, sorted by path."""
        cwd = os.fsencode(os.getcwd())
        with self._guard():
            rows = self._db.execute(
                f"SELECT {_ENTRY_COLUMNS} FROM file WHERE status = ? ORDER BY given, key LIMIT ?",
                (FileStatus.FAILED.value, limit),
            ).fetchall()
        return [_entry(row, cwd) for row in rows]

    def counts(self) -> dict[str, int]:
        """Files per outcome over the whole folder; "pending": read, study not yet written."""
        out = {s.value: 0 for s in FileStatus}
        with self._guard():
            for status, n in self._db.execute("SELECT status, COUNT(*) FROM file GROUP BY 1"):
                out[status or "pending"] = n
        return out

    # --- studies ---

    def studies_changed(self) -> list[str]:
        """The studies whose bundles must be written, sorted.

        The dirty ones, plus every study sharing a SOP Instance UID with one of those (closed
        over): which file of a repeated instance wins (:meth:`fhirimg.group.StudyIndex.
        resolve_duplicates`) depends on all of them, so they are grouped together. A study here
        with no records left (its files pruned or moved) has a bundle to delete and
        :meth:`forget_study`.
        """
        db = self._db
        with self._guard():
            db.execute("CREATE TEMP TABLE IF NOT EXISTS want (uid TEXT PRIMARY KEY)")
            db.execute("DELETE FROM want")
            db.execute("INSERT INTO want SELECT uid FROM study WHERE dirty")
            while True:
                cur = db.execute(
                    """
                    INSERT OR IGNORE INTO want
                    SELECT DISTINCT other.study FROM file AS mine
                    JOIN file AS other ON other.sop = mine.sop AND other.study != mine.study
                    WHERE mine.study IN (SELECT uid FROM want)
                      AND other.study NOT IN (SELECT uid FROM want)
                    """
                )
                if cur.rowcount <= 0:
                    break
            uids = [r[0] for r in db.execute("SELECT uid FROM want ORDER BY uid")]
            db.commit()
        return uids

    def packed_of_study(self, study_uid: str) -> list[PackedRecord]:
        """The records of every file of a study (missing ones and duplicates too), packed, sorted
        by path: what :meth:`fhirimg.group.StudyIndex.add_many` takes.

        A record whose path no longer names its file from the current folder (a relative path
        given from another working directory) comes back with the absolute path.
        """
        with self._guard():
            rows = self._db.execute(
                "SELECT key, given, study, series, sop, sop_class, rec FROM file "
                "WHERE study = ? AND rec IS NOT NULL ORDER BY given, key",
                (study_uid,),
            ).fetchall()
        out = []
        for key, given, study, series, sop, sop_class, blob in rows:
            packed = PackedRecord(study, series, sop, sop_class, os.fsdecode(given), blob)
            if _key(packed.path) != key:
                record = dataclasses.replace(self._unpickle(blob), path=os.fsdecode(key))
                packed = PackedRecord.of(record)
            out.append(packed)
        return out

    def records_of_study(self, study_uid: str) -> list[InstanceRecord]:
        """The records of a study (see :meth:`packed_of_study`), unpickled."""
        return [self._unpickle(p.blob) for p in self.packed_of_study(study_uid)]

    def _unpickle(self, blob: bytes) -> InstanceRecord:
        try:
            record = pickle.loads(blob)
        except Exception as exc:  # a record this fhirimg cannot read back
            raise _corrupt(self.path, f"a stored record cannot be read: {exc}") from exc
        if not isinstance(record, InstanceRecord):
            raise _corrupt(self.path, "a stored record is not an instance record")
        return record

    def study_done(
        self,
        study_uid: str,
        *,
        ok: bool,
        outcome: Mapping[str, Any] | None,
        files: Iterable[tuple[str, FileStatus | str, str]],
    ) -> None:
        """A study's bundle was written (``ok``) or could not be: in one transaction, the outcome
        of its files, its own ``outcome`` (JSON, for the report) and its dirty mark, cleared when
        ``ok`` (a failed study stays dirty: the next run tries it again)."""
        doc = None if outcome is None else jsonio.dumps(dict(outcome))
        with self._guard(), self._db:
            self._set_outcomes(files)
            self._db.execute(
                "INSERT OR REPLACE INTO study (uid, dirty, outcome) VALUES (?, ?, ?)",
                (study_uid, int(not ok), doc),
            )

    def mark_dirty(self, study_uids: Iterable[str]) -> None:
        """Have these studies written again although no file of theirs changed (their bundle
        files were deleted, say). One transaction."""
        with self._guard(), self._db:
            for uid in study_uids:
                self._dirty(uid)

    def forget_study(self, study_uid: str) -> None:
        """Drop a study that has no files left (after its bundle is deleted)."""
        with self._guard(), self._db:
            self._db.execute("DELETE FROM study WHERE uid = ?", (study_uid,))

    def studies(self) -> list[StudyEntry]:
        """Every study of the folder, sorted by UID, with its last outcome."""
        with self._guard():
            rows = self._db.execute("SELECT uid, dirty, outcome FROM study ORDER BY uid").fetchall()
        return [
            StudyEntry(uid, None if doc is None else jsonio.loads(doc), bool(dirty))
            for uid, dirty, doc in rows
        ]

    def use_options(self, fingerprint: str) -> bool:
        """Tell the catalog what the bundles are built with (a digest of the conversion options).
        When it differs from last time, every study is dirty: returns True."""
        with self._guard(), self._db:
            if self._meta("options") == fingerprint:
                return False
            self._db.execute("UPDATE study SET dirty = 1")
            self._set_meta("options", fingerprint)
        return True


_STATUS: dict[str | None, FileStatus | None] = {None: None, **{s.value: s for s in FileStatus}}


def _entry(row: Sequence[Any], cwd: bytes | None = None) -> CatalogEntry:
    key, given, status, detail, study, series, sop, size, mtime_ns = row
    return CatalogEntry(
        _display(key, given, cwd),
        _STATUS[status],
        _untext(detail),
        study,
        series,
        sop,
        size,
        mtime_ns,
    )


def _same_record(old: bytes, new: bytes) -> bool:
    """Equal records (compared as values: equal records may pickle to other bytes)."""
    if old == new:
        return True
    try:
        return bool(pickle.loads(old) == pickle.loads(new))
    except Exception:  # an old record this fhirimg cannot read: not the same
        return False


def _create(path: Path) -> None:
    """A new, empty catalog at ``path``: built under a temporary name and renamed, so a catalog
    file is either absent or whole."""
    tmp = path.with_name(f".{path.name}.new")
    for name in (tmp, tmp.with_name(tmp.name + "-journal")):
        name.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    os.close(fd)
    try:
        db = sqlite3.connect(tmp)
        try:
            for table, columns in _SCHEMA.items():
                db.execute(f"CREATE TABLE {table} ({', '.join(columns)})")
            for index in _INDEXES:
                db.execute(index)
            db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            db.execute("INSERT INTO meta VALUES ('reader', ?)", (_reader_fingerprint(),))
            db.commit()
        finally:
            db.close()
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except sqlite3.Error as exc:
        tmp.unlink(missing_ok=True)
        raise _error(path, exc) from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
