"""Push at the floor (issue 19): the journal's group commit keeps push's guarantees: a bundle is
done only once its journal line is on disk, and a push killed midway resumes without duplicates
on the real server."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from fhirimg import jsonio
from fhirimg.errors import JournalError
from fhirimg.http import RetryPolicy
from fhirimg.push import BundleResult, Journal, PushObserver, PushOptions, push_paths
from tests.conftest import MakeFolder, count, search
from tests.servers.faultproxy import FaultProxy

ROOT = Path(__file__).resolve().parent.parent
REAL_FSYNC = os.fsync


def _journal_files(path: Path) -> list[str]:
    """The ``file`` of each bundle line of a journal (torn lines left out)."""
    names = []
    for line in path.read_bytes().splitlines():
        try:
            record = jsonio.loads(line)
        except ValueError:
            continue
        if record.get("kind") == "bundle":
            names.append(record["file"])
    return names


# --------------------------------------------------------------------------- group commit


def test_one_fsync_covers_the_lines_written_while_another_ran(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No lock is held during an fsync: others append (and look up) meanwhile, none of them
    returns before an fsync covering its line, and one more fsync covers all of theirs."""
    path = tmp_path / "j.jsonl"
    release = threading.Event()
    calls: list[int] = []

    def slow_first_fsync(fd: int) -> None:
        calls.append(fd)
        if len(calls) == 1:
            assert release.wait(10)
        REAL_FSYNC(fd)

    monkeypatch.setattr(os, "fsync", slow_first_fsync)
    with Journal(path) as journal:
        returned: list[str] = []

        def record(sha: str) -> None:
            journal.record_bundle("http://s", sha, file=f"{sha}.json", entries=3)
            returned.append(sha)

        first = threading.Thread(target=record, args=("a",))
        first.start()
        while not calls:  # "a" is in its fsync
            time.sleep(0.005)
        others = [threading.Thread(target=record, args=(sha,)) for sha in ("b", "c", "d")]
        for thread in others:
            thread.start()
        deadline = time.monotonic() + 10
        while path.read_bytes().count(b"\n") < 4 and time.monotonic() < deadline:
            time.sleep(0.005)
        assert path.read_bytes().count(b"\n") == 4  # written while the fsync ran: no lock held
        time.sleep(0.05)
        assert returned == []  # and nobody is done before an fsync covered their line
        assert not journal.bundle_done("http://s", "a")  # a lookup does not wait on the fsync
        release.set()
        for thread in [first, *others]:
            thread.join(10)
        assert sorted(returned) == ["a", "b", "c", "d"]
        assert all(journal.bundle_done("http://s", sha) for sha in "abcd")
    assert len(calls) == 2  # "a"'s own, then one for the three lines written meanwhile


def test_a_failed_fsync_breaks_the_journal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_fsync(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    with Journal(tmp_path / "j.jsonl") as journal:
        journal.record_bundle("http://s", "a", file="a.json", entries=1)
        monkeypatch.setattr(os, "fsync", failing_fsync)
        with pytest.raises(JournalError, match="Input/output error"):
            journal.record_bundle("http://s", "b", file="b.json", entries=1)
        assert not journal.bundle_done("http://s", "b")  # written, but not known to be on disk
        monkeypatch.setattr(os, "fsync", REAL_FSYNC)
        with pytest.raises(JournalError):  # broken for good: nothing more counts as recorded
            journal.record_binary("http://s", "x", "c", size=1)
        assert journal.bundle_done("http://s", "a")


class _Recorder(PushObserver):
    def __init__(self) -> None:
        self.started_with: list[tuple[int, int]] = []
        self.finished_results: list[BundleResult] = []
        self.early: list[str] = []
        self.durable: set[str] = set()
        self.lock = threading.Lock()

    def started(self, bundles: int, total_bytes: int) -> None:
        self.started_with.append((bundles, total_bytes))

    def finished(self, result: BundleResult) -> None:
        with self.lock:
            self.finished_results.append(result)
            if result.status == "pushed" and result.file not in self.durable:
                self.early.append(result.file)


@pytest.mark.server
def test_a_bundle_is_done_only_after_its_fsync_and_a_failure_stops_the_run(
    make_folder: MakeFolder, clean_fhir: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    n = 20
    folder = make_folder(n, patients=3, instances=3)
    journal = tmp_path / "j.jsonl"
    observer = _Recorder()
    failed_once = [False]

    def fsync_failing_once_a_bundle_is_on_disk(fd: int) -> None:
        # The first fsync after a bundle's line is on disk fails: some bundles are confirmed,
        # and (each request held 50 ms by the proxy, fsyncs at most every 50 ms: run.SYNC_INTERVAL)
        # most are still to come, however the fsyncs group the lines.
        with observer.lock:
            on_disk = bool(observer.durable)
        if on_disk and not failed_once[0]:
            failed_once[0] = True
            raise OSError(errno.EIO, "Input/output error")
        REAL_FSYNC(fd)
        with observer.lock:  # what is on disk now
            observer.durable.update(_journal_files(journal))

    monkeypatch.setattr(os, "fsync", fsync_failing_once_a_bundle_is_on_disk)
    # The journal names the server by its URL: both runs go through the same proxy.
    with FaultProxy(clean_fhir.base_url) as proxy:
        proxy.delay_all = 0.05
        options = PushOptions(server=proxy.base_url, journal=journal, jobs=4)
        report = push_paths([folder], options, observer)

        assert observer.early == []  # "pushed" was never reported before the line was on disk
        assert report.aborted is not None
        assert "journal" in report.aborted
        assert 0 < report.pushed < n
        failed = [r for r in report.results if r.status == "failed"]
        assert any("the server confirmed it, but the journal" in (r.error or "") for r in failed)
        assert len(report.results) == n  # every bundle accounted for
        assert report.ignored == [(str(folder / "report.json"), report.ignored[0][1])]

        # Resume with a working disk: the rest is pushed, nothing twice.
        monkeypatch.setattr(os, "fsync", REAL_FSYNC)
        proxy.delay_all = 0
        again = push_paths([folder], options)
    assert again.ok, again.to_json()
    assert again.pushed + again.skipped == n
    assert again.skipped >= report.pushed
    assert count(clean_fhir.base_url, "ImagingStudy") == n
    assert count(clean_fhir.base_url, "Patient") == 3
    assert count(clean_fhir.base_url, "Endpoint") == 1


def _confirmed(journal: Path) -> int:
    return len(_journal_files(journal)) if journal.exists() else 0


@pytest.mark.server
def test_sigkill_midway_then_resume_without_duplicates(
    make_folder: MakeFolder, clean_fhir: Any, tmp_path: Path
) -> None:
    """A real ``fhirimg push --jobs 4`` killed with SIGKILL: every bundle its journal names is on
    the server, and the re-run pushes the rest, skips those, and duplicates nothing."""
    n = 24
    folder = make_folder(n, patients=6, instances=20)
    journal = tmp_path / "j.jsonl"
    with FaultProxy(clean_fhir.base_url) as proxy:
        proxy.delay_all = 0.05  # slow enough to kill it midway
        run = subprocess.Popen(
            [sys.executable, "-m", "fhirimg", "push", str(folder), "--server", proxy.base_url,
             "--journal", str(journal), "--jobs", "4", "--quiet"],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while _confirmed(journal) < 4 and time.monotonic() < deadline and run.poll() is None:
            time.sleep(0.01)
        run.send_signal(signal.SIGKILL)
        assert run.wait(30) == -9, run.stderr.read() if run.stderr else ""
        if run.stderr:
            run.stderr.close()
        named = _journal_files(journal)
        assert 4 <= len(named) < n
        on_server = {
            s["identifier"][0]["value"].rsplit(".", 1)[-1]
            for s in search(clean_fhir.base_url, "ImagingStudy?_count=1000")
        }
        for name in named:  # a journaled bundle is one the server confirmed
            i = int(name.removeprefix("study-").removesuffix(".json"))
            assert str(1000 + i) in on_server, name

        proxy.delay_all = 0.0  # the journal is per server URL: resume through the same one
        again = push_paths(
            [folder],
            PushOptions(
                server=proxy.base_url, journal=journal, retry=RetryPolicy(backoff_base=0.01)
            ),
        )
    assert again.ok, again.to_json()
    assert again.skipped == len(set(named))
    assert again.pushed == n - len(set(named))
    assert count(clean_fhir.base_url, "ImagingStudy") == n
    assert count(clean_fhir.base_url, "Patient") == 6
    assert count(clean_fhir.base_url, "Endpoint") == 1
    for study in search(clean_fhir.base_url, "ImagingStudy?_count=1000"):
        assert study["numberOfInstances"] == 20


# --------------------------------------------------------------------------- streaming discovery


def _garbage_after_head(head: dict[str, Any], size: int = 64 * 1024) -> bytes:
    """JSON whose first HEAD_BYTES say what it is and whose rest is not JSON at all: parsing
    the whole file would fail, so a reason other than "not readable JSON" proves it was not."""
    start = jsonio.dumps(head).rstrip().removesuffix(b"}") + b', "more": ['
    return start + b"\x00 not json " * (size // 11)
