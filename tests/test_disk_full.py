"""Disk full while writing bundles: the report stays in step with what is on disk.

Issue 11 item 6: ENOSPC (also EDQUOT, EIO) while writing left bundles and no report.json, and exited
3 ("nothing could be done") although work was done. Now the study whose write failed is reported
failed with "disk full writing <file>", the studies written before stay written, the run takes no
further study (each reported "not written", and still to do for the next run), and report.json is
written: fhirimg/convert.py sets space aside for it (``jsonio.SpaceReserve`` in
``<out>/.fhirimg/tmp/``) while bundles are written, and frees it when the disk fills up. Exit 1
when some study was written, 3 when none.

Fault injection first (the bundle writer raising ENOSPC once N bundles are on disk, in worker
processes too), then for real on a small tmpfs mounted in a private mount namespace.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from fhirimg import ConvertOptions, convert, jsonio
from fhirimg.cli import app
from fhirimg.folderlock import STATE_DIR, WORK_DIR
from tests.helpers import REPO, load, synthetic_tree

STUDIES, PER_STUDY = 10, 3
runner = CliRunner()


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic_tree(tmp_path_factory.mktemp("tree") / "in", STUDIES, PER_STUDY)


def disk_holds(monkeypatch: pytest.MonkeyPatch, bundles: int, err: int = errno.ENOSPC) -> None:
    """Bundle writes fail with ``err`` once ``bundles`` bundle files are in their folder.

    The count and the write hold an flock beside the output folder, as one step: with ``-j 2``
    two workers could otherwise both see three bundles and both write (a disk holds what it
    holds, whoever asks first)."""
    real = jsonio.atomic_write

    def atomic_write(path: Path, data: bytes, *args: Any, **kwargs: Any) -> None:
        if not path.name.startswith("study-"):
            real(path, data, *args, **kwargs)
            return
        with open(path.parent.parent / "disk-holds.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if len(list(path.parent.glob("study-*.json"))) >= bundles:
                raise OSError(err, os.strerror(err))
            real(path, data, *args, **kwargs)

    monkeypatch.setattr(jsonio, "atomic_write", atomic_write)


def check_in_step(out: Path) -> dict[str, Any]:
    """report.json accounts for every file, and its written studies are exactly the bundles."""
    doc: dict[str, Any] = load(out / "report.json")
    assert len(doc["files"]) == STUDIES * PER_STUDY
    on_disk = sorted(p.name for p in out.glob("study-*.json"))
    written = sorted(s["bundle"] for s in doc["studies"] if s["status"] == "written")
    assert written == on_disk
    converted = {f["bundle"] for f in doc["files"] if f["status"] == "converted"}
    assert converted == set(on_disk)
    assert not list((out / STATE_DIR / WORK_DIR).glob("reserve"))  # given back
    return doc


@pytest.mark.parametrize("jobs", [1, 2])
@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EDQUOT, errno.EIO])
def test_disk_full_half_way(
    tmp_path: Path, tree: Path, monkeypatch: pytest.MonkeyPatch, jobs: int, err: int
) -> None:
    out = tmp_path / "out"
    disk_holds(monkeypatch, 4, err)
    report = convert([tree], ConvertOptions(out_dir=out, jobs=jobs))
    words = {errno.ENOSPC: "disk full", errno.EDQUOT: "disk quota exceeded", errno.EIO: "I/O error"}
    assert report.stopped is not None
    assert report.stopped.startswith(f"{words[err]} writing {out}/study-")
    assert int(report.exit_code) == 1
    doc = check_in_step(out)
    assert doc["summary"]["stopped"] == report.stopped
    assert doc["summary"]["exitCode"] == 1
    written = [s for s in doc["studies"] if s["status"] == "written"]
    failed = [s for s in doc["studies"] if s["status"] == "failed"]
    assert len(written) == 4  # with -j2 too: the disk held four
    assert len(failed) == STUDIES - 4
    assert any(s["errors"] == [report.stopped] for s in failed)
    for study in failed:
        (error,) = study["errors"]
        assert error.startswith(f"{words[err]} writing ") or error == (
            f"not written: the run stopped writing studies ({report.stopped})"
        )
    reasons = {f["reason"] for f in doc["files"] if f["status"] == "failed"}
    assert all(words[err] in r for r in reasons)

    # space again: the next run writes exactly the studies that were not written
    monkeypatch.undo()
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("study-*.json")}
    again = convert([tree], ConvertOptions(out_dir=out, jobs=jobs))
    assert again.stopped is None
    assert int(again.exit_code) == 0
    assert again.run is not None
    assert again.run.written == STUDIES - 4
    assert len(list(out.glob("study-*.json"))) == STUDIES
    assert all(out.joinpath(n).stat().st_mtime_ns == t for n, t in before.items())


def test_disk_full_from_the_start_exits_3_with_a_report(
    tmp_path: Path, tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    disk_holds(monkeypatch, 0)
    result = runner.invoke(app, ["convert", str(tree), "-o", str(out), "-j", "1", "--quiet"])
    assert result.exit_code == 3, result.output
    assert "disk full writing" in result.output
    assert "run the same command again" in result.output
    doc = check_in_step(out)
    assert doc["summary"]["studies"]["written"] == 0
    assert doc["summary"]["exitCode"] == 3


def test_cli_says_which_file_and_exits_1(
    tmp_path: Path, tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    disk_holds(monkeypatch, 2)
    result = runner.invoke(app, ["convert", str(tree), "-o", str(out), "-j", "1"])
    assert result.exit_code == 1, result.output
    assert f"disk full writing {out}/study-" in result.output.replace("\n", "")
    check_in_step(out)


def _can_mount_tmpfs(where: Path) -> str | None:
    """None when a tmpfs can be mounted in a private mount namespace here, else why not."""
    if shutil.which("unshare") is None:
        return "no unshare"
    probe = subprocess.run(
        ["unshare", "--mount", "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs '{where}'"],
        capture_output=True,
        text=True,
        check=False,
    )
    return None if probe.returncode == 0 else f"cannot mount a tmpfs: {probe.stderr.strip()}"


def test_a_real_full_file_system(tmp_path: Path, tree: Path) -> None:
    """A tmpfs too small for every bundle, mounted over the output folder in a private mount
    namespace (``unshare --mount``, root: tools/run-in-netns.sh runs the suite so); what the run
    left there is copied out before the namespace, and the tmpfs with it, goes away."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    why = _can_mount_tmpfs(mnt)
    if why is not None:
        pytest.skip(f"{why} (the fault-injection tests above cover the logic)")
    # how much a whole run takes, measured on the real disk
    sized = tmp_path / "sized"
    convert([tree], ConvertOptions(out_dir=sized, jobs=1))
    bundle = max(p.stat().st_size for p in sized.glob("study-*.json"))
    state = sum(p.stat().st_size for p in (sized / STATE_DIR).rglob("*") if p.is_file())
    # room for the catalog, its WAL and the grouping spill, the reserve, and about half the
    # bundles: tmpfs counts whole 4 KiB pages per file
    pages = -(-bundle // 4096) * 4096
    size = 3 * state + (1 << 20) + 64 * 1024 + (STUDIES // 2) * pages
    script = (
        f"mount -t tmpfs -o size={size} tmpfs '{mnt}' || exit 99\n"
        f"'{sys.executable}' -c 'from fhirimg.cli import main; main()' convert '{tree}' "
        f"-o '{mnt}/out' -j 1 --quiet 2> '{tmp_path}/stderr'\n"
        f"echo $? > '{tmp_path}/rc'\n"
        f"cp -a '{mnt}/out' '{tmp_path}/out'\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run(["unshare", "--mount", "sh", "-c", script], env=env, check=True, timeout=300)
    rc = int((tmp_path / "rc").read_text())
    stderr = (tmp_path / "stderr").read_text()
    out = tmp_path / "out"
    doc = check_in_step(out)
    written = doc["summary"]["studies"]["written"]
    assert 0 < written < STUDIES, (size, doc["summary"])
    assert rc == 1, stderr
    assert doc["summary"]["stopped"].startswith(f"disk full writing {mnt}/out/")
    assert "disk full writing" in stderr
