"""``--binary inline`` on every core: a study's Binary entries written by the run's pool, in place.

Base64 of every instance file is most of the work of ``--binary inline`` once the head of the
bundle (Patient, Endpoint, ImagingStudy) is checked, and checking the head is most of the rest
(the validator's first use in a process loads the FHIR models). Both wait on one process when a
run has fewer studies than processes. The layout of the bundle file is known before a byte of
base64 is made: the head entries come first, and each Binary entry's size follows from its
file's length (:attr:`fhirimg.bundle.EncodedEntry.size`). So, while this process checks the head,
the pool's processes write the Binary entries into the study's temporary bundle file at their
offsets (``os.pwrite``), contiguous runs of entries per task, one file at a time each: memory
follows one chunk of one file per process, as in the one-process path.

It is a bet on the head being valid as built: when the check leaves instances out, fails the
study, or the head written differs from the one the offsets were computed from, the file written
ahead is thrown away (it was never visible: temporary file + rename) and the study is written
the one-process way. The bytes are the same either way (tests/test_binary_inline_pool.py).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field

from fhirimg.bundle import EncodedEntry, SplitWriter, offsets_after
from fhirimg.images.binary import DicomSource

TASKS_PER_PROCESS = 2
"""Runs of entries per pool process: a few, so that a slow file does not leave a core idle."""


def write_entries(tmp: str, placed: Sequence[tuple[int, EncodedEntry]]) -> None:
    """Pool task: write ``placed`` entries into the temporary bundle file ``tmp`` at their
    offsets. An ``OSError`` (a file gone or changed while read) fails the study, as it does
    when one process writes it."""
    fd = os.open(tmp, os.O_WRONLY | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0))
    try:
        for offset, item in placed:
            item.write_at(fd, offset)
    finally:
        os.close(fd)


@dataclass
class WrittenAhead:
    """Binary entries being written by the pool into ``writer``'s first file, at ``offsets``,
    after a head whose encoded entries are ``head``."""

    writer: SplitWriter
    head: list[bytes]
    entries: list[EncodedEntry]
    sources: list[DicomSource]
    """The entries' data sources (the instance files), in order."""
    offsets: list[int]
    futures: list[Future[None]] = field(default_factory=list)

    def take(self, head: Sequence[EncodedEntry]) -> bool:
        """Put the checked ``head`` into the file and wait for the entries written ahead:
        True when the file then holds head and entries as the one-process writer writes them
        (the writer goes on after the entries); False when ``head`` is not the head the offsets
        were computed from (the caller writes the study anew, after :meth:`discard`)."""
        if [e.head for e in head] != self.head:
            return False
        for item in head:
            self.writer.add_head(item)
        placed = self.writer.parts[0].reserve(self.entries)
        if (
            placed != self.offsets
        ):  # a layout bug: never publish a file written at the wrong offsets
            return False
        self.wait()
        return True

    def wait(self) -> None:
        """Every task done; the first error (in entry order) raised."""
        futures, self.futures = self.futures, []
        errors = [f.exception() for f in futures if not f.cancelled()]
        for error in errors:
            if error is not None:
                raise error

    def discard(self) -> None:
        """Nothing of this goes out: the tasks are waited for and the file removed."""
        for f in self.futures:
            f.cancel()
        try:
            self.wait()
        except Exception:  # the file goes anyway; the one-process path meets the error again
            pass
        finally:
            self.writer.abort()


def write_ahead(
    writer: SplitWriter,
    head: Sequence[EncodedEntry],
    entries: list[EncodedEntry],
    sources: list[DicomSource],
    pool: Executor,
    jobs: int,
) -> WrittenAhead:
    """Start writing ``entries`` (Binary entries streaming ``sources``) after ``head`` into
    ``writer``'s first file, which has nothing written yet, in ``pool`` (``jobs`` processes)."""
    offsets = offsets_after(head, entries)
    ahead = WrittenAhead(writer, [e.head for e in head], entries, sources, offsets)
    tmp = str(writer.parts[0].tmp)
    placed = list(zip(offsets, entries, strict=True))
    for run in _runs(placed, max(1, jobs) * TASKS_PER_PROCESS):
        ahead.futures.append(pool.submit(write_entries, tmp, run))
    return ahead


def _runs(
    placed: list[tuple[int, EncodedEntry]], count: int
) -> list[list[tuple[int, EncodedEntry]]]:
    """``placed`` cut into at most ``count`` contiguous runs of about equal bytes.

    >>> e = EncodedEntry(b"x" * 10)
    >>> [len(r) for r in _runs([(0, e)] * 5, 2)]
    [3, 2]
    """
    total = sum(item.size for _, item in placed)
    share = total / max(1, count)
    runs: list[list[tuple[int, EncodedEntry]]] = [[]]
    done = 0
    for pair in placed:
        if runs[-1] and done >= share * len(runs):
            runs.append([])
        runs[-1].append(pair)
        done += pair[1].size
    return runs
