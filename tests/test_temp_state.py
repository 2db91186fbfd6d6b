"""Temporary state stays in the output folder and is cleaned by the next run; Ctrl-C says so.

Issue 11 item 8: ``kill -9`` left ``/tmp/fhirimg-*`` behind (the grouping's spilled records: patient
data). A run's temporary files now live in ``<out>/.fhirimg/tmp/`` (fhirimg/folderlock.py
``work_dir``), and the next run into the folder removes what a killed run left there, only once it
holds the folder's lock. SIGINT exits 130 with one line saying that re-running continues.

The subprocess tests run the real ``fhirimg`` console script over a synthetic tree big enough to be
caught mid-run, with ``TMPDIR`` pointing at a folder of the test's own.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fhirimg import ConvertOptions, convert
from fhirimg.errors import FolderLockedError
from fhirimg.folderlock import STATE_DIR, WORK_DIR, FolderLock, clean_leftovers
from tests.helpers import REPO, load, synthetic_tree

STUDIES, PER_STUDY = 150, 20
FHIRIMG = [sys.executable, "-c", "from fhirimg.cli import main; main()"]


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic_tree(tmp_path_factory.mktemp("tree") / "in", STUDIES, PER_STUDY)


def start(tree: Path, out: Path, tmpdir: Path, jobs: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "TMPDIR": str(tmpdir), "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [*FHIRIMG, "convert", str(tree), "-o", str(out), "-j", str(jobs), "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        # SIGINT as a terminal would send it: a shell may have left it ignored for its children
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def wait_for_work(proc: subprocess.Popen[bytes], out: Path) -> None:
    """Wait until the run writes bundles: its spilled records are then in <out>/.fhirimg/tmp."""
    work = out / STATE_DIR / WORK_DIR
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if work.is_dir() and any(work.iterdir()):
            return
        assert proc.poll() is None, f"the run ended before it was caught: {proc.returncode}"
        time.sleep(0.005)
    raise AssertionError("the run never got to writing bundles")


def everything_under(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*"))


@pytest.mark.parametrize("jobs", [1, 2])
def test_sigkill_leaves_nothing_in_tmp_and_the_next_run_cleans_up(
    tmp_path: Path, tree: Path, jobs: int
) -> None:
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    out = tmp_path / "out"
    proc = start(tree, out, tmpdir, jobs)
    wait_for_work(proc, out)
    proc.kill()
    proc.wait()
    time.sleep(0.2)  # worker processes notice their parent is gone
    assert proc.returncode == -signal.SIGKILL
    assert everything_under(tmpdir) == []  # nothing in the system's temp folder
    leftovers = list((out / STATE_DIR / WORK_DIR).iterdir())
    assert leftovers, "the killed run's records should be in <out>/.fhirimg/tmp"
    assert all(p.stat().st_mode & 0o077 == 0 for p in leftovers)  # owner-only
    # an atomic write cut short, as kill -9 during a bundle's write leaves it
    cut = out / ".study-x.json.abcd1234.tmp"
    cut.write_bytes(b'{"resourceType": "Bun')
    mine = out / "notes.tmp"  # not fhirimg's: kept
    mine.write_bytes(b"mine")

    report = convert([tree], ConvertOptions(out_dir=out, jobs=1))
    assert report.files["converted"] == STUDIES * PER_STUDY
    assert list((out / STATE_DIR / WORK_DIR).iterdir()) == []
    assert not cut.exists()
    assert mine.read_bytes() == b"mine"
    assert len(load(out / "report.json")["files"]) == STUDIES * PER_STUDY


def test_leftovers_are_kept_while_another_run_holds_the_folder(tmp_path: Path) -> None:
    out = tmp_path / "out"
    work = out / STATE_DIR / WORK_DIR
    work.mkdir(parents=True)
    live = work / "fhirimg-live"
    live.mkdir()
    with FolderLock(out):  # a live run
        with pytest.raises(FolderLockedError):
            convert([tmp_path / "none"], ConvertOptions(out_dir=out, jobs=1))
        assert live.is_dir()
    assert clean_leftovers(out) == 1
    assert not live.exists()


def test_the_spilled_records_go_to_the_output_folder_not_tmp(
    tmp_path: Path, tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In-process too: tempfile's folder is never used by a conversion."""
    import tempfile

    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmpdir))
    seen: list[Path] = []

    def progress(stage: str, advance: int, total: int | None) -> None:
        if stage == "write":
            seen.extend((tmp_path / "out" / STATE_DIR / WORK_DIR).iterdir())
            seen.extend(tmpdir.iterdir())

    report = convert(
        [tree / "study-00000"], ConvertOptions(out_dir=tmp_path / "out", jobs=1), progress
    )
    assert report.files["converted"] == PER_STUDY
    assert seen
    assert all(p.parent.name == WORK_DIR for p in seen)


@pytest.mark.parametrize("jobs", [1, 2])
def test_sigint_exits_130_and_says_rerunning_continues(
    tmp_path: Path, tree: Path, jobs: int
) -> None:
    out = tmp_path / "out"
    proc = start(tree, out, tmp_path, jobs)
    wait_for_work(proc, out)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    lines = err.decode().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("interrupted: ")
    assert "run the same command again to continue where it stopped" in lines[0]
    assert "Traceback" not in err.decode()
    # and it does continue: the next run converts what is left, every file accounted for
    report = convert([tree], ConvertOptions(out_dir=out, jobs=1))
    assert report.files["converted"] == STUDIES * PER_STUDY
