"""Group instance records by study: a keyed reduce that spills to disk.

Records are appended to a temporary SQLite file keyed by Study Instance UID, then read back one study
at a time, so memory follows the largest study, never the size of the corpus. On a cluster the same
step is a ``groupby(study_instance_uid)`` of the engine; nothing else changes.

Paths and reasons are stored as bytes (UTF-8 with ``surrogateescape``), not SQLite text: a file
name that is not UTF-8 (``os.fsdecode`` gives it lone surrogates) cannot be encoded as text, and
must not end the run. Bytes sort like UTF-8 text (``memcmp``), so the order is the same.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import sqlite3
import stat
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

from fhirimg.model import FileProblem, FileStatus, InstanceRecord


def _b(text: str) -> bytes:
    """Text as stored: UTF-8, undecodable file-name bytes (surrogates) restored."""
    return text.encode("utf-8", "surrogateescape")


def _t(data: bytes) -> str:
    return bytes(data).decode("utf-8", "surrogateescape")


class PackedRecord(NamedTuple):
    """An :class:`InstanceRecord` already pickled, with the keys the index sorts by.

    Reading workers pack their records so that the process that groups them never unpickles
    them: it stores the bytes and hands them on to the worker that builds the study.
    """

    study: str
    series: str
    sop: str
    sop_class: str
    path: str
    blob: bytes

    @classmethod
    def of(cls, record: InstanceRecord) -> PackedRecord:
        return cls(
            record.study_instance_uid,
            record.series_instance_uid,
            record.sop_instance_uid,
            record.sop_class_uid,
            record.path,
            pickle.dumps(record, protocol=pickle.HIGHEST_PROTOCOL),
        )


def unpack(blobs: Iterable[bytes]) -> list[InstanceRecord]:
    """The records of :class:`PackedRecord` blobs."""
    return [pickle.loads(b) for b in blobs]


class StudyIndex:
    """Instance records and file outcomes of one run, spilled to a temporary SQLite database.

    ``workdir``: where the temporary folder holding it goes. The records hold patient data, so
    ``convert`` puts it in the output folder's private state (:func:`fhirimg.folderlock.work_dir`),
    where a run killed before it could remove it leaves it for the next run to clean; None is the
    system's temp folder (tests, one-off use).
    """

    def __init__(self, workdir: str | Path | None = None) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="fhirimg-", dir=workdir)
        self._db = sqlite3.connect(Path(self._dir.name) / "index.sqlite")
        self._db.executescript(
            """
            PRAGMA journal_mode = OFF;
            PRAGMA synchronous = OFF;
            CREATE TABLE inst (study TEXT, series TEXT, sop TEXT, sop_class TEXT, path BLOB, rec BLOB);
            CREATE TABLE problem (path BLOB PRIMARY KEY, status TEXT, reason BLOB);
            CREATE TABLE outcome (path BLOB PRIMARY KEY, status TEXT, detail BLOB);
            """
        )

    def close(self) -> None:
        self._db.close()
        self._dir.cleanup()

    def __enter__(self) -> StudyIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add(self, item: InstanceRecord | PackedRecord | FileProblem) -> None:
        """Add one reading result."""
        self.add_many([item])

    def add_many(self, items: Iterable[InstanceRecord | PackedRecord | FileProblem]) -> None:
        """Add reading results (one statement per batch)."""
        rows: list[tuple[str, str, str, str, bytes, bytes]] = []
        for item in items:
            if isinstance(item, FileProblem):
                self.add_problem(item)
                continue
            packed = item if isinstance(item, PackedRecord) else PackedRecord.of(item)
            rows.append((*packed[:4], _b(packed.path), packed.blob))
        self._db.executemany("INSERT INTO inst VALUES (?, ?, ?, ?, ?, ?)", rows)

    def add_problem(self, problem: FileProblem) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO problem VALUES (?, ?, ?)",
            (_b(problem.path), problem.status.value, _b(problem.reason)),
        )

    def resolve_duplicates(self) -> int:
        """Keep one record per SOP Instance UID; the others become problems. Returns their count.

        The first file by path wins, whatever the order the files were read in (``--jobs``, the
        walk): the rows are sorted by path here. Each later file with the same SOP Instance UID
        is compared with the one kept, cheapest test first (:func:`_compare`):

        * other study, series or SOP class: FAILED, a UID conflict;
        * same UIDs, other size, or same size and other SHA-256 of the bytes: FAILED, a
          conflicting duplicate (two different objects under one SOP Instance UID; the reason
          names both paths and which one is kept);
        * same UIDs and the same bytes: DUPLICATE ("same content"), counted once.

        Files are hashed only when two of them collide on the UID and the size, so the common
        run (no duplicates) reads no file again. A file that cannot be read now (gone since it
        was recorded, or not a file: a DICOMweb URL) is compared by UIDs only, and the reason
        says so.
        """
        db = self._db
        # Indexes are built once, after all inserts: cheaper than maintaining them per row.
        db.execute("CREATE INDEX IF NOT EXISTS inst_sop ON inst (sop, path)")
        db.execute("CREATE INDEX IF NOT EXISTS inst_study ON inst (study, path)")
        rows = db.execute(
            """
            SELECT i.sop, i.study, i.series, i.sop_class, i.path, i.rec
            FROM (SELECT sop FROM inst GROUP BY sop HAVING COUNT(*) > 1) AS d
            JOIN inst AS i ON i.sop = d.sop
            ORDER BY i.sop, i.path
            """
        ).fetchall()
        dropped = 0
        keep: _Kept | None = None
        for sop, study, series, sop_class, raw_path, blob in rows:
            path = _t(raw_path)
            size = _size_of(blob)
            if keep is None or keep.uids[0] != sop:
                keep = _Kept((sop, study, series, sop_class), path, size)
                continue
            problem = _compare(keep, (sop, study, series, sop_class), path, size)
            db.execute("DELETE FROM inst WHERE path = ?", (raw_path,))
            self.add_problem(problem)
            dropped += 1
        return dropped

    def study_uids(self) -> list[str]:
        """All Study Instance UIDs, sorted (a list of strings: small next to the records)."""
        return [r[0] for r in self._db.execute("SELECT DISTINCT study FROM inst ORDER BY study")]

    def records(self, study_uid: str) -> list[InstanceRecord]:
        """The records of one study (unsorted; the mapping sorts them)."""
        return unpack(self.blobs(study_uid))

    def blobs(self, study_uid: str) -> list[bytes]:
        """The pickled records of one study, for a worker to :func:`unpack`."""
        query = "SELECT rec FROM inst WHERE study = ? ORDER BY path"
        return [r[0] for r in self._db.execute(query, (study_uid,))]

    def study_paths(self, study_uid: str) -> list[str]:
        """The paths of one study's files, sorted."""
        query = "SELECT path FROM inst WHERE study = ? ORDER BY path"
        return [_t(r[0]) for r in self._db.execute(query, (study_uid,))]

    def set_outcome(self, paths: list[str], status: FileStatus, detail: str) -> None:
        self._db.executemany(
            "INSERT OR REPLACE INTO outcome VALUES (?, ?, ?)",
            [(_b(p), status.value, _b(detail)) for p in paths],
        )

    def file_outcomes(self) -> Iterator[tuple[str, str, str]]:
        """Every input file with its status and detail (bundle name or reason), sorted by path."""
        for path, status, detail in self._db.execute(
            """
            SELECT path, status, detail FROM outcome
            UNION ALL SELECT path, status, reason FROM problem
            ORDER BY 1
            """
        ):
            yield _t(path), status, _t(detail)

    def failures(self, limit: int) -> list[tuple[str, str]]:
        """Up to ``limit`` failed files (path, reason), sorted by path."""
        rows = self._db.execute(
            "SELECT path, detail FROM (SELECT path, status, detail FROM outcome UNION ALL "
            "SELECT path, status, reason FROM problem) WHERE status = ? ORDER BY path LIMIT ?",
            (FileStatus.FAILED.value, limit),
        )
        return [(_t(path), _t(detail)) for path, detail in rows]

    def counts(self) -> dict[str, int]:
        out = {s.value: 0 for s in FileStatus}
        for status, n in self._db.execute(
            "SELECT status, COUNT(*) FROM (SELECT status FROM outcome UNION ALL "
            "SELECT status FROM problem) GROUP BY status"
        ):
            out[status] = n
        return out


class _Kept:
    """The file kept for one SOP Instance UID, and its digest once computed."""

    def __init__(self, uids: tuple[str, ...], path: str, size: int | None) -> None:
        self.uids = uids
        self.path = path
        self.size = size
        self._digest: bytes | str | None = None

    def digest(self) -> bytes | str:
        if self._digest is None:
            self._digest = content_digest(self.path)
        return self._digest


def _size_of(blob: bytes) -> int | None:
    """The file size a packed record holds (its ``size``), None when not known."""
    size = getattr(pickle.loads(blob), "size", None)
    return size if isinstance(size, int) and size >= 0 else None


def _compare(keep: _Kept, uids: tuple[str, ...], path: str, size: int | None) -> FileProblem:
    """What becomes of ``path``, a later file with the SOP Instance UID of ``keep.path``."""
    if uids != keep.uids:
        return FileProblem(
            path,
            FileStatus.FAILED,
            f"SOP Instance UID conflict: also in {keep.path} with a different study, series or "
            f"SOP class; {keep.path} is kept (the first by path)",
        )
    conflict = FileProblem(
        path,
        FileStatus.FAILED,
        f"SOP Instance UID conflict: {path} and {keep.path} have the same UIDs but different "
        f"content; {keep.path} is kept (the first by path)",
    )
    if size is not None and keep.size is not None and size != keep.size:
        return conflict
    theirs, mine = keep.digest(), content_digest(path)
    if isinstance(theirs, str) or isinstance(mine, str):
        why = next(d for d in (theirs, mine) if isinstance(d, str))
        return FileProblem(
            path,
            FileStatus.DUPLICATE,
            f"same SOP Instance UID, study, series and SOP class as {keep.path} (content not "
            f"compared: {why})",
        )
    if theirs != mine:
        return conflict
    return FileProblem(
        path, FileStatus.DUPLICATE, f"same SOP Instance UID and content as {keep.path}"
    )


def content_digest(path: str) -> bytes | str:
    """SHA-256 of a regular file's bytes, or why it cannot be computed (text).

    Opened without following a FIFO's writer (``O_NONBLOCK``) and refused unless regular, so a
    path that became a pipe cannot hang the run.

    >>> import tempfile, os
    >>> fd, name = tempfile.mkstemp(); os.write(fd, b"abc"); os.close(fd)
    3
    >>> content_digest(name).hex()[:12], content_digest(name + ".gone").startswith("cannot read")
    ('ba7816bf8f01', True)
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except (OSError, ValueError) as exc:
        return f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}"
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return f"{path} is not a regular file"
        try:
            return hashlib.file_digest(fh, "sha256").digest()
        except OSError as exc:
            return f"cannot read {path}: {exc.strerror or exc}"
