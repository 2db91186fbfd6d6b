"""``convert --engine dask``: header records shuffled by Study Instance UID on the
workers, never through the client (docs/scale-out.md).

Three stages of coarse tasks, each a barrier, joined by files in a scratch folder of the output
folder's private state (``<out>/.fhirimg/tmp/shuffle-*``, 0700, on the shared file system every
worker writes the bundles to anyway):

1. **read**: one task per :data:`READ_BATCH` input paths (the client walks the inputs and sends
   only the paths). It reads the headers (:func:`fhirimg.scan.read_file`) and writes its packed
   records into one file per *study partition* (a hash of the Study Instance UID), its unreadable
   files' problems into the partition of their path, and ``(SOP Instance UID, study, path)`` into
   one file per *SOP partition* (a hash of the SOP Instance UID). It returns two counts.
2. **SOP UIDs across studies**: one task per SOP partition finds the SOP Instance UIDs that occur
   in more than one study. Those files are in different study partitions, so the local rule
   (:meth:`fhirimg.group.StudyIndex.resolve_duplicates`: the first file by path is kept, a later
   one of another study fails as a UID conflict) is settled here: the losing paths go, with their
   reason, to their study partition. Every other duplicate is inside one study, so one partition.
3. **write**: one task per study partition groups its records by study in a SQLite index on disk
   (:class:`~fhirimg.group.StudyIndex`: memory follows the largest study), drops the losers of
   stage 2, settles the duplicates inside, writes each study's bundle (``convert._write_study``,
   the local engine's own), and writes every file's outcome, sorted by path, into an outcome file.
   It returns the studies' outcomes and counts.

The client merges the outcome files (already sorted) into ``report.json`` as a stream, so it never
holds every file name; it holds one outcome per study, as the local engine does. Every task's
output has a name fixed by its inputs and is written atomically: a task run again after a worker
was lost writes the same bytes to the same names, and the stages are barriers, so nothing reads a
half-done stage.

This module knows files, records and partitions, not bundles: what a study becomes is the
``study_task`` the driver hands it (``convert._shuffled_study``), and the report is the
driver's (``convert._convert_shuffled``, ``convert_objects``). Object-storage inputs are listed
per top-level prefix by tasks too (:func:`list_task`).
"""

from __future__ import annotations

import hashlib
import heapq
import logging
import os
import pickle
import shutil
import sqlite3
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fhirimg import jsonio
from fhirimg.folderlock import work_dir
from fhirimg.group import PackedRecord, StudyIndex
from fhirimg.model import FileProblem, FileStatus, InstanceRecord
from fhirimg.tasks import batched, bounded

log = logging.getLogger(__name__)

READ_BATCH = 1000
"""Input paths per read task: coarse, so that the client submits few tasks (each costs tens of
milliseconds of the scheduler's and client's time) and a worker reads for about a second."""
_CHUNK = 1000  # outcomes per pickle in an outcome file


def partition_of(key: str, partitions: int) -> int:
    """The partition of a UID or path: a stable hash (the same on every worker and run).

    >>> partition_of("1.2.3", 8) == partition_of("1.2.3", 8), 0 <= partition_of("x", 3) < 3
    (True, True)
    """
    digest = hashlib.blake2b(key.encode("utf-8", "surrogateescape"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % partitions


def sort_key(path: str) -> bytes:
    """A path as the index sorts it (UTF-8 bytes, undecodable file-name bytes restored)."""
    return path.encode("utf-8", "surrogateescape")


def _dump(path: Path, items: Any) -> None:
    jsonio.atomic_write(path, pickle.dumps(items, protocol=pickle.HIGHEST_PROTOCOL))


def _load(path: Path) -> Any:
    return pickle.loads(path.read_bytes())


def _files(folder: Path) -> list[Path]:
    """The finished files of a stage in ``folder`` (not an atomic write's temporary file)."""
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


# --- the tasks (run on the workers) ---


def read_task(
    task: int,
    paths: list[str] | str,
    scratch: str,
    partitions: int,
    storage: dict[str, str] | None = None,
) -> tuple[int, int]:
    """Stage 1: read ``paths`` (or the URLs of a listing's chunk file, :func:`list_task`): files,
    or with ``storage`` objects (:func:`fhirimg.objects.read_object`); records and problems into
    the study partitions' files, SOP Instance UIDs into the SOP partitions' files. Returns
    (files read, files not stat-able)."""
    from fhirimg.objects import read_many
    from fhirimg.scan import read_file  # pydicom: only in the workers that read

    if isinstance(paths, str):
        paths = list(_load(Path(paths)))
    studies: list[list[PackedRecord | FileProblem]] = [[] for _ in range(partitions)]
    sops: list[list[tuple[str, str, str]]] = [[] for _ in range(partitions)]
    unstatable = 0

    def local(path: str) -> InstanceRecord | FileProblem:
        nonlocal unstatable
        try:
            os.stat(path)  # as the local engine counts: read all the same, to say why
        except OSError:
            unstatable += 1
        return read_file(path)

    items = read_many(paths, storage) if storage is not None else map(local, paths)
    for path, item in zip(paths, items, strict=True):
        if isinstance(item, FileProblem):
            studies[partition_of(path, partitions)].append(item)
            continue
        packed = PackedRecord.of(item)
        studies[partition_of(packed.study, partitions)].append(packed)
        sops[partition_of(packed.sop, partitions)].append((packed.sop, packed.study, packed.path))
    root = Path(scratch)
    for k in range(partitions):
        if studies[k]:
            _dump(root / f"p{k:05d}" / f"r{task:08d}", studies[k])
        if sops[k]:
            _dump(root / f"s{k:05d}" / f"r{task:08d}", sops[k])
    return len(paths), unstatable


def sop_task(part: int, scratch: str, partitions: int) -> int:
    """Stage 2: the files of this SOP partition whose SOP Instance UID the first file by path
    holds in another study: each goes, failed with the local engine's reason, to its study
    partition (``x<study partition>/s<part>``). Returns how many."""
    root = Path(scratch)
    with tempfile.TemporaryDirectory(prefix=f"sop{part}-", dir=root) as tmp:
        db = sqlite3.connect(Path(tmp) / "sop.sqlite")  # on disk: flat in the corpus size
        try:
            db.executescript(
                "PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF;"
                "CREATE TABLE t (sop TEXT, study TEXT, path BLOB);"
            )
            for name in _files(root / f"s{part:05d}"):
                rows = _load(name)
                db.executemany(
                    "INSERT INTO t VALUES (?, ?, ?)", [(s, st, sort_key(p)) for s, st, p in rows]
                )
            found = db.execute(
                """
                SELECT sop, study, path FROM t WHERE sop IN
                  (SELECT sop FROM t GROUP BY sop HAVING COUNT(DISTINCT study) > 1)
                ORDER BY sop, path
                """
            ).fetchall()
        finally:
            db.close()
    losers: dict[int, list[tuple[str, str]]] = {}
    kept: tuple[str, str, str] | None = None  # sop, study, path of the file kept
    for sop, study, raw in found:
        path = bytes(raw).decode("utf-8", "surrogateescape")
        if kept is None or kept[0] != sop:
            kept = (sop, study, path)
            continue
        if study != kept[1]:  # the same study: settled in its own partition (stage 3)
            why = (
                f"SOP Instance UID conflict: also in {kept[2]} with a different study, series "
                f"or SOP class; {kept[2]} is kept (the first by path)"
            )
            losers.setdefault(partition_of(study, partitions), []).append((path, why))
    for k, items in losers.items():
        _dump(root / f"x{k:05d}" / f"s{part:08d}", items)
    return sum(len(v) for v in losers.values())


def list_task(prefix: int, url: str, storage: dict[str, str], scratch: str) -> list[str]:
    """Listing task: the objects under ``url`` (:func:`fhirimg.objects.list_objects`), sorted,
    into chunk files of :data:`READ_BATCH` URLs; returns the chunk files' paths."""
    from fhirimg.objects import list_objects

    chunks = []
    for i, chunk in enumerate(batched(list_objects([url], storage), READ_BATCH)):
        name = Path(scratch) / "l" / f"{prefix:06d}-{i:08d}"
        _dump(name, chunk)
        chunks.append(str(name))
    return chunks


StudyTask = Callable[..., "tuple[Any, list[tuple[str, FileStatus, str]], str | None]"]
"""``study_task(blobs, paths, stopped, *args)``: one study's packed records (sorted by path) and
paths, and why the partition stopped writing (None: it did not) -> (the study's outcome, each
file's (path, status, detail), why to stop now or None)."""


@dataclass(frozen=True)
class PartitionResult:
    """What a write task sends back: small, one outcome per study (whatever ``study_task``
    returns), the partition's counts per file status and first failed files."""

    studies: list[Any]
    counts: dict[str, int]
    failures: list[tuple[str, str]]
    stopped: str | None
    outcome_file: str


def write_task(
    part: int, scratch: str, study_task: StudyTask, args: tuple[Any, ...]
) -> PartitionResult:
    """Stage 3: group the partition's records by study, settle its duplicates, run
    ``study_task`` on each study, and write its files' outcomes (sorted by path) into
    ``o<part>``."""
    root = Path(scratch)
    losers: dict[str, str] = {}
    for name in _files(root / f"x{part:05d}"):
        losers.update(_load(name))
    outcomes: list[Any] = []
    stopped: str | None = None  # e.g. the disk is full: no further study of the partition
    with StudyIndex(root) as index:
        for name in _files(root / f"p{part:05d}"):
            items = _load(name)
            index.add_many(i for i in items if isinstance(i, FileProblem) or i.path not in losers)
        for path, why in losers.items():
            index.add_problem(FileProblem(path, FileStatus.FAILED, why))
        index.resolve_duplicates()
        for uid in index.study_uids():
            outcome, files, stop = study_task(
                index.blobs(uid), index.study_paths(uid), stopped, *args
            )
            stopped = stopped or stop
            for path, status, detail in files:
                index.set_outcome([path], status, detail)
            outcomes.append(outcome)
        outcome_file = root / f"o{part:05d}"
        with jsonio.atomic_writer(outcome_file) as fh:
            for chunk in batched(index.file_outcomes(), _CHUNK):
                pickle.dump(chunk, fh, protocol=pickle.HIGHEST_PROTOCOL)
        return PartitionResult(
            outcomes, index.counts(), index.failures(100), stopped, str(outcome_file)
        )


def merged_outcomes(results: list[PartitionResult]) -> Iterator[tuple[str, str, str]]:
    """Every file's (path, status, detail) of the partitions, sorted by path: a k-way merge of
    the sorted outcome files, read a chunk at a time."""
    return heapq.merge(*(_outcomes(r.outcome_file) for r in results), key=lambda o: sort_key(o[0]))


def merged_failures(results: list[PartitionResult], limit: int) -> list[tuple[str, str]]:
    """The first ``limit`` failed files of the partitions, by path."""
    merged = heapq.merge(*(r.failures for r in results), key=lambda f: sort_key(f[0]))
    return [f for _, f in zip(range(limit), merged, strict=False)]


# --- the client ---


def top_level(urls: list[str], storage: dict[str, str]) -> tuple[list[str], list[str]]:
    """The objects at the top of ``urls`` and the prefixes (folders) under them, each listed by
    a task of its own. Raises :class:`~fhirimg.errors.StorageError` when a listing fails."""
    from fhirimg.errors import StorageError
    from fhirimg.objects import filesystem
    from fhirimg.safetext import redact_url

    objects: list[str] = []
    prefixes: list[str] = []
    for url in urls:
        fs, root = filesystem(url, storage)
        protocol = url.partition("://")[0]
        try:
            if fs.isfile(root):
                entries = [{"name": root, "type": "file"}]
            else:
                entries = fs.ls(root, detail=True)
                if not entries and not fs.isdir(root):
                    raise FileNotFoundError(root)
        except Exception as exc:  # botocore, aiohttp, OSError: the backend decides the type
            why = f"{type(exc).__name__}: {exc}".replace(url, redact_url(url))
            raise StorageError(f"cannot list {redact_url(url)}: {why}") from None
        for entry in sorted(entries, key=lambda e: str(e["name"])):
            full = f"{protocol}://{entry['name']}"  # as list_objects names them
            (prefixes if entry.get("type") == "directory" else objects).append(full)
    return objects, prefixes


def _outcomes(path: str) -> Iterator[tuple[str, str, str]]:
    """The (path, status, detail) of an outcome file, in its order (by path)."""
    with open(path, "rb") as fh:
        while True:
            try:
                chunk: list[tuple[str, str, str]] = pickle.load(fh)
            except EOFError:
                return
            yield from chunk


class Shuffle:
    """One run's scratch folder, partitions and stages on the cluster (module docstring)."""

    def __init__(self, cluster: Any, out_dir: Path) -> None:
        self.cluster = cluster
        self.scratch = Path(tempfile.mkdtemp(prefix="shuffle-", dir=work_dir(out_dir)))
        self.threads: int = cluster.threads
        self.partitions = max(4, 4 * self.threads)
        for stage in "psx":
            for k in range(self.partitions):
                (self.scratch / f"{stage}{k:05d}").mkdir(mode=0o700)
        (self.scratch / "l").mkdir(mode=0o700)

    def read(
        self,
        batches: Iterator[list[str] | str],
        storage: dict[str, str] | None,
        progress: Callable[[str, int, int | None], None] | None,
        total: int | None,
    ) -> tuple[int, int]:
        """Stage 1 over ``batches`` (paths, or a listing's chunk file); (files, unstatable)."""
        jobs = (
            (i, batch, str(self.scratch), self.partitions, storage)
            for i, batch in enumerate(batches)
        )
        read = unstatable = 0
        for n, bad in bounded(self.cluster, read_task, jobs, 2 * self.threads + 2):
            read, unstatable = read + n, unstatable + bad
            if progress:
                progress("read", n, total)
        return read, unstatable

    def write(self, study_task: StudyTask, args: tuple[Any, ...]) -> Iterator[PartitionResult]:
        """Stages 2 and 3: each partition's result as it comes back (in partition order)."""
        root, partitions = str(self.scratch), self.partitions
        sop_jobs = ((k, root, partitions) for k in range(partitions))
        conflicts = sum(bounded(self.cluster, sop_task, sop_jobs, partitions))
        log.debug("%d files hold a SOP Instance UID of another study", conflicts)
        jobs = ((k, root, study_task, args) for k in range(partitions))
        yield from bounded(self.cluster, write_task, jobs, partitions)

    def close(self) -> None:
        shutil.rmtree(self.scratch, ignore_errors=True)


@contextmanager
def shuffled_on(cluster: Any, out_dir: Path) -> Iterator[Shuffle]:
    """A :class:`Shuffle` of one run on ``cluster`` (started by the caller); on leaving, however
    the run ends (a :class:`Shuffle` that could not be made too), the cluster is shut down and the
    scratch folder removed: the teardown of every Dask run, files or objects."""
    shuffle: Shuffle | None = None
    try:
        shuffle = Shuffle(cluster, out_dir)
        yield shuffle
    finally:
        cluster.shutdown(cancel_futures=True)
        if shuffle is not None:
            shuffle.close()
