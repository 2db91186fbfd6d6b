"""Incremental convert: a re-run reads only what changed and rewrites only the studies it touches.

Over copies of sample_data/dicom (study A is split over two folders, which makes "a late series
arrives" a folder copied in later). A file's mtime is set an hour back wherever a test needs a
re-run to find it unchanged: a file modified within two seconds of a run's start is read again
next time, like git's racy index entries (fhirimg/catalog.py).
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from typer.testing import CliRunner

from fhirimg import ConvertOptions, convert
from fhirimg.catalog import CATALOG_NAME
from fhirimg.cli import app
from fhirimg.convert import ConvertReport
from fhirimg.errors import CatalogError, FolderLockedError
from fhirimg.folderlock import STATE_DIR
from fhirimg.images.binary import BinaryMode
from tests.helpers import REPO, SAMPLE, load, pydicom_file, resources, study_by_uid

STUDY_A = "2.25.85155649098386921766494752360926339228"
STUDY_B = "2.25.199473283427071051488146072373703684864"
OLD = time.time_ns() - 3600 * 10**9  # an hour ago: outside the racy window

runner = CliRunner()


def settle(root: Path) -> None:
    """Every file under ``root`` modified an hour ago (so that a re-run may trust its stat)."""
    for path in [root, *root.rglob("*")]:
        os.utime(path, ns=(OLD, OLD), follow_symlinks=False)


def sample_copy(dest: Path, *, without: tuple[str, ...] = ()) -> Path:
    """A copy of sample_data/dicom at ``dest`` (leaving out the folders ``without``)."""
    shutil.copytree(SAMPLE, dest, ignore=lambda d, names: [n for n in names if n in without])
    settle(dest)
    return dest


def run(src: Path, out: Path, **options: Any) -> ConvertReport:
    return convert([src], ConvertOptions(out_dir=out, jobs=options.pop("jobs", 1), **options))


def bundle_files(out: Path) -> dict[str, tuple[int, int, bytes]]:
    """Each bundle file of a folder: (mtime_ns, inode, bytes)."""
    out_files = sorted(out.glob("study-*.json"))
    return {p.name: (p.stat().st_mtime_ns, p.stat().st_ino, p.read_bytes()) for p in out_files}


def contents(out: Path) -> dict[str, bytes]:
    return {name: data for name, (_, _, data) in bundle_files(out).items()}


def report(out: Path) -> dict[str, Any]:
    doc: dict[str, Any] = load(out / "report.json")
    return doc


def files_of(out: Path) -> dict[str, dict[str, Any]]:
    return {f["path"]: f for f in report(out)["files"]}


def instances(out: Path, study_uid: str) -> int:
    (study,) = resources(study_by_uid(out, study_uid), "ImagingStudy")
    return int(study["numberOfInstances"])


@pytest.fixture
def src(tmp_path: Path) -> Path:
    return sample_copy(tmp_path / "in")


# --------------------------------------------------------------------------- re-runs


def test_unchanged_tree_rewrites_nothing(tmp_path: Path, src: Path) -> None:
    out = tmp_path / "out"
    first = run(src, out)
    assert first.run is not None
    assert (first.run.new, first.run.written) == (23, 5)
    before = bundle_files(out)
    time.sleep(0.01)  # a rewrite would show in mtime_ns
    again = run(src, out, jobs=2)
    assert bundle_files(out) == before  # not touched: same mtime, inode, bytes
    assert again.run is not None
    assert again.run.as_json() == {
        "full": False,
        "files": {"new": 0, "changed": 0, "unchanged": 23, "missing": 0, "pruned": 0},
        "studies": {"written": 0, "failed": 0, "removed": 0, "unchanged": 5},
    }
    # the report still describes the whole folder, as the first did
    assert again.summary()["files"] == first.summary()["files"]
    assert again.summary()["studies"] == first.summary()["studies"]
    assert [s.as_json() for s in again.studies] == [s.as_json() for s in first.studies]
    assert int(again.exit_code) == 1  # the folder holds the truncated file, failed
    doc = report(out)
    assert len(doc["history"]) == 2
    assert [h["counts"]["new"] for h in doc["history"]] == [23, 0]
    assert all(h["ended"] for h in doc["history"])
    # byte-identical to a full run into a fresh folder
    fresh = tmp_path / "fresh"
    run(src, fresh, full=True)
    assert contents(out) == contents(fresh)
    without_run = {k: v for k, v in doc.items() if k not in ("summary", "history")}
    fresh_doc = report(fresh)
    assert without_run == {k: v for k, v in fresh_doc.items() if k not in ("summary", "history")}


def test_late_series_rewrites_only_its_study(tmp_path: Path) -> None:
    src = sample_copy(tmp_path / "in", without=("study_a_ct_localizer",))
    out = tmp_path / "out"
    run(src, out)
    assert instances(out, STUDY_A) == 5
    before = bundle_files(out)
    time.sleep(0.01)
    shutil.copytree(SAMPLE / "study_a_ct_localizer", src / "study_a_ct_localizer")
    settle(src / "study_a_ct_localizer")
    grown = run(src, out)
    assert grown.run is not None
    assert (grown.run.new, grown.run.unchanged, grown.run.written) == (1, 22, 1)
    after = bundle_files(out)
    rewritten = {name for name in after if after[name] != before.get(name)}
    (study_a,) = rewritten
    assert study_a == study_by_uid_name(out, STUDY_A)
    # the rewritten bundle holds the study's earlier instances and the late one
    bundle = study_by_uid(out, STUDY_A)
    (study,) = resources(bundle, "ImagingStudy")
    assert (study["numberOfSeries"], study["numberOfInstances"]) == (2, 6)
    # the same bundles as one full run over the grown tree
    fresh = tmp_path / "fresh"
    run(src, fresh)
    assert contents(out) == contents(fresh)
    assert files_of(out) == files_of(fresh)


def study_by_uid_name(out: Path, uid: str) -> str:
    names = [
        p.name
        for p in out.glob("study-*.json")
        if any(
            r["identifier"][0]["value"] == "urn:oid:" + uid
            for r in resources(load(p), "ImagingStudy")
        )
    ]
    (name,) = names
    return name


def test_changed_file_is_read_again(tmp_path: Path, src: Path) -> None:
    out = tmp_path / "out"
    run(src, out)
    target = src / "study_b_mr" / "mr_0002.dcm"
    ds = pydicom.dcmread(target)
    old_uid = str(ds.SOPInstanceUID)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.UID("2.25.4242")
    ds.save_as(target)  # same path, new content
    os.utime(target, ns=(OLD + 10**9, OLD + 10**9))
    before = bundle_files(out)
    changed = run(src, out)
    assert changed.run is not None
    assert (changed.run.changed, changed.run.unchanged, changed.run.written) == (1, 22, 1)
    (study,) = resources(study_by_uid(out, STUDY_B), "ImagingStudy")
    uids = {i["uid"] for s in study["series"] for i in s["instance"]}
    assert "2.25.4242" in uids
    assert old_uid not in uids  # the file's old content is gone from its study
    assert study["numberOfInstances"] == 4
    after = bundle_files(out)
    assert sum(1 for name in after if after[name] != before[name]) == 1


def test_deleted_file_is_kept_and_reported_then_pruned(tmp_path: Path, src: Path) -> None:
    out = tmp_path / "out"
    run(src, out)
    gone = src / "study_a_ct" / "ct_0005.dcm"
    gone.unlink()
    before = bundle_files(out)
    kept = run(src, out)
    assert kept.run is not None
    assert (kept.run.missing, kept.run.written) == (1, 0)
    assert bundle_files(out) == before  # still in its bundle: nothing to rewrite
    assert instances(out, STUDY_A) == 6
    entry = files_of(out)[str(gone)]
    assert entry["missing"] is True
    assert entry["status"] == "converted"
    assert report(out)["summary"]["run"]["files"]["missing"] == 1
    assert int(kept.exit_code) == 1  # missing is information, not failure (1: truncated file)
    # CLI: --prune-missing drops it; the study's bundle is rewritten without it
    result = runner.invoke(app, ["convert", str(src), "-o", str(out), "-j", "1", "--prune-missing"])
    assert result.exit_code == 1, result.output
    assert "1 pruned" in " ".join(result.output.split())
    assert instances(out, STUDY_A) == 5
    assert str(gone) not in files_of(out)
    assert report(out)["summary"]["run"]["files"]["pruned"] == 1
    # a study with no file left: its bundle goes too
    name = study_by_uid_name(out, STUDY_B)
    shutil.rmtree(src / "study_b_mr")
    pruned = run(src, out, prune_missing=True)
    assert pruned.run is not None
    assert (pruned.run.pruned, pruned.run.removed) == (4, 1)
    assert not (out / name).exists()
    assert STUDY_B not in {s.study_instance_uid for s in pruned.studies}
    assert STUDY_B not in {s["studyInstanceUid"] for s in report(out)["studies"]}


def test_full_reads_everything_again(tmp_path: Path, src: Path) -> None:
    out = tmp_path / "out"
    run(src, out)
    before = contents(out)
    result = runner.invoke(app, ["convert", str(src), "-o", str(out), "-j", "1", "--full"])
    assert result.exit_code == 1, result.output
    doc = report(out)
    assert doc["summary"]["run"]["full"] is True
    assert doc["summary"]["run"]["files"]["new"] == 23
    assert doc["summary"]["run"]["studies"]["written"] == 5
    assert len(doc["history"]) == 1  # the catalog, and its history, were rebuilt
    assert contents(out) == before


def test_other_options_rewrite_every_study_and_a_deleted_bundle_comes_back(
    tmp_path: Path, src: Path
) -> None:
    out = tmp_path / "out"
    run(src, out)
    r5 = run(src, out, fhir_version="r5")
    assert r5.run is not None
    assert (r5.run.unchanged, r5.run.written) == (23, 5)
    assert report(out)["fhirVersion"] == "5.0.0"
    name = study_by_uid_name(out, STUDY_A)
    (out / name).unlink()
    again = run(src, out, fhir_version="r5")
    assert again.run is not None
    assert again.run.written == 1
    assert (out / name).is_file()


def test_pixels_with_a_missing_file_fail_the_study_and_keep_its_bundle(
    tmp_path: Path, src: Path
) -> None:
    """--binary needs the bytes of every instance it rebuilds a study with: a gone file fails
    the study (the reason says what to do), and the earlier bundle stays as it was."""
    out = tmp_path / "out"
    run(src, out, binary=BinaryMode.BESIDE)
    (src / "study_a_ct" / "ct_0005.dcm").unlink()
    shutil.copy(src / "study_a_ct" / "ct_0001.dcm", src / "study_a_ct" / "ct_0001-copy.dcm")
    name = study_by_uid_name(out, STUDY_A)
    before = (out / name).read_bytes()
    failed = run(src, out, binary=BinaryMode.BESIDE)  # the copy makes study A dirty
    (outcome,) = [s for s in failed.written if s.study_instance_uid == STUDY_A]
    assert not outcome.ok
    assert "ct_0005.dcm is missing" in outcome.errors[0]
    assert "--prune-missing" in outcome.errors[0]
    assert (out / name).read_bytes() == before
    pruned = run(src, out, binary=BinaryMode.BESIDE, prune_missing=True)
    assert all(s.ok for s in pruned.written), [s.errors for s in pruned.written]
    assert instances(out, STUDY_A) == 5


# --------------------------------------------------------------------------- bad catalogs


def _catalog(out: Path) -> Path:
    return out / STATE_DIR / CATALOG_NAME


def test_corrupt_catalog_says_full_and_full_rebuilds_it(tmp_path: Path, src: Path) -> None:
    out = tmp_path / "out"
    run(src, out)
    path = _catalog(out)
    for suffix in ("-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    path.write_bytes(b"this is not SQLite" * 100)
    result = runner.invoke(app, ["convert", str(src), "-o", str(out), "-j", "1"])
    assert result.exit_code == 3, result.output
    assert "--full" in result.output
    assert "catalog" in result.output
    with pytest.raises(CatalogError):
        run(src, out)
    result = runner.invoke(app, ["convert", str(src), "-o", str(out), "-j", "1", "--full"])
    assert result.exit_code == 1, result.output
    again = run(src, out)
    assert again.run is not None
    assert again.run.unchanged == 23


def test_catalog_of_a_newer_fhirimg_is_refused(tmp_path: Path, src: Path) -> None:
    out = tmp_path / "out"
    run(src, out)
    db = sqlite3.connect(_catalog(out))
    db.execute("PRAGMA user_version = 99")
    db.commit()
    db.close()
    result = runner.invoke(app, ["convert", str(src), "-o", str(out), "-j", "1"])
    assert result.exit_code == 3, result.output
    assert "newer fhirimg" in result.output
    assert "--full" in result.output
    result = runner.invoke(app, ["convert", str(src), "-o", str(out), "-j", "1", "--full"])
    assert result.exit_code == 1, result.output


# --------------------------------------------------------------------------- one writer

_HOLDER = textwrap.dedent(
    """
    import sys, time
    from fhirimg.folderlock import FolderLock
    with FolderLock(sys.argv[1]):
        print("locked", flush=True)
        time.sleep(float(sys.argv[2]))
    """
)


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[tuple[Path, subprocess.Popen[str]]]:
    """Another process holding the output folder's lock for 60 s."""
    out = tmp_path / "out"
    proc = _hold(out, 60)
    try:
        yield out, proc
    finally:
        proc.kill()
        proc.wait()


def _hold(out: Path, seconds: float) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(out), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_second_writer_exits_3_naming_folder_and_holder(
    src: Path, holder: tuple[Path, subprocess.Popen[str]]
) -> None:
    out, proc = holder
    result = runner.invoke(app, ["convert", str(src), "-o", str(out), "-j", "1"])
    assert result.exit_code == 3, result.output
    assert str(out) in result.output
    assert f"PID {proc.pid}" in result.output
    assert not (out / "report.json").exists()
    with pytest.raises(FolderLockedError):
        run(src, out)
    assert not list(out.glob("study-*.json"))


def test_second_writer_waits_with_wait(tmp_path: Path, src: Path) -> None:
    out = tmp_path / "out"
    proc = _hold(out, 1.0)
    try:
        start = time.monotonic()
        result = runner.invoke(
            app, ["convert", str(src), "-o", str(out), "-j", "1", "--wait", "60"]
        )
        assert result.exit_code == 1, result.output
        assert time.monotonic() - start >= 0.5
    finally:
        proc.kill()
        proc.wait()
    assert len(list(out.glob("study-*.json"))) == 5


def test_two_converts_at_once_one_after_the_other(tmp_path: Path, src: Path) -> None:
    """Two real processes into one folder: with --wait both finish, one after the other, and the
    folder is whole; without, one of them exits 3 or both finish (the first was already done)."""
    out = tmp_path / "out"
    command = [sys.executable, "-m", "fhirimg", "convert", str(src), "-o", str(out), "-q"]
    procs = [
        subprocess.Popen([*command, "-j", "2", "--wait", "120"], cwd=REPO, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    codes = [p.wait(timeout=300) for p in procs]
    assert codes == [1, 1], [p.stderr.read() if p.stderr else b"" for p in procs]
    doc = report(out)
    assert [h["counts"]["new"] for h in doc["history"]] == [23, 0]
    assert all(h["ended"] for h in doc["history"])
    assert len(list(out.glob("study-*.json"))) == 5
    procs = [
        subprocess.Popen([*command, "-j", "1"], cwd=REPO, stderr=subprocess.PIPE) for _ in "ab"
    ]
    results = [(p.wait(timeout=300), p.stderr.read() if p.stderr else b"") for p in procs]
    assert sorted(code for code, _ in results) in ([1, 1], [1, 3]), results
    for code, err in results:
        if code == 3:
            assert b"is in use by another fhirimg process (PID " in err


# --------------------------------------------------------------------------- odd outputs


def _read_only_run(src: Path, out: Path) -> subprocess.CompletedProcess[str]:
    """``convert`` into ``out`` made read-only. Root writes through file modes, so as root
    ``out`` is bind-mounted read-only in a private mount namespace of the run (EROFS);
    otherwise its mode is 0555 for the run."""
    command = [sys.executable, "-m", "fhirimg", "convert", str(src), "-o", str(out), "-j", "1"]
    if os.geteuid() != 0:
        out.chmod(0o555)
        try:
            return subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
        finally:
            out.chmod(0o755)
    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1) to make a read-only mount as root")
    script = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" "$0" && exec "$@"'
    return subprocess.run(
        ["unshare", "--mount", "sh", "-c", script, str(out), *command],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.mark.parametrize("converted_before", [False, True])
def test_read_only_output_folder_exits_3(tmp_path: Path, converted_before: bool) -> None:
    out = tmp_path / "out"
    out.mkdir()
    if converted_before:
        run(SAMPLE, out)
    before = bundle_files(out)
    result = _read_only_run(SAMPLE, out)
    assert result.returncode == 3, result.stderr
    assert f"cannot write to {out}" in result.stderr
    assert "Traceback" not in result.stderr
    assert bundle_files(out) == before


def test_non_utf8_file_name_end_to_end(tmp_path: Path) -> None:
    """A file name that is not UTF-8 is read, catalogued and reported (as \\xNN), twice."""
    src = sample_copy(tmp_path / "in")
    odd = os.fsencode(src) + b"/a-\xfe-ct.dcm"  # sorts first: the duplicate's reason names it
    shutil.copy(src / "study_a_ct" / "ct_0001.dcm", os.fsdecode(odd))
    other = os.fsencode(src) + b"/\xff-small.dcm"
    shutil.copy(pydicom_file("CT_small.dcm"), os.fsdecode(other))
    settle(src)
    out = tmp_path / "out"
    for n in range(2):
        result = runner.invoke(app, ["convert", str(src), "-o", str(out), "-j", "2", "--json"])
        assert result.exit_code == 1, result.output  # 1: the truncated file; not 70
        summary = json.loads(result.stdout)["summary"]
        assert summary["files"]["total"] == 25
        assert summary["run"]["files"]["unchanged"] == (0 if n == 0 else 25)
        by_path = files_of(out)
        shown = str(src) + "/a-\\xfe-ct.dcm"
        assert by_path[shown]["status"] == "converted"
        assert by_path[str(src) + "/\\xff-small.dcm"]["status"] == "converted"
        duplicate = by_path[str(src / "study_a_ct" / "ct_0001.dcm")]
        assert duplicate["status"] == "duplicate"
        assert shown in duplicate["reason"]
    raw = (out / "report.json").read_bytes()
    raw.decode("utf-8")  # valid UTF-8 JSON throughout
    assert b"\\\\xfe" in raw  # the escaped form, a backslash written as JSON's \\
