"""catalog: what an output folder knows of its input files, so that a re-run reads only changes."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from fhirimg.catalog import (
    CATALOG_NAME,
    SCHEMA_VERSION,
    Catalog,
    CatalogError,
    Change,
)
from fhirimg.folderlock import STATE_DIR
from fhirimg.group import PackedRecord, StudyIndex
from fhirimg.model import Code, FileProblem, FileStatus, InstanceRecord, Issuer

CT = "1.2.840.10008.5.1.4.1.1.2"
OLD = time.time_ns() - 3600 * 10**9  # an hour ago: well outside the racy window


def write(path: Path, data: bytes, mtime_ns: int = OLD) -> Path:
    """A file with a settled mtime (files modified around the run's start are read again)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, ns=(mtime_ns, mtime_ns))
    return path


def rec(
    path: Path | str, study: str = "1.1", series: str = "1.1.1", sop: str = "1.1.1.1"
) -> InstanceRecord:
    return InstanceRecord(
        path=os.fspath(path),
        size=1,
        sop_class_uid=CT,
        sop_instance_uid=sop,
        study_instance_uid=study,
        series_instance_uid=series,
        patient_name="Doe^Jane",
    )


def seen(catalog: Catalog, *items: tuple[Path, InstanceRecord | FileProblem]) -> list[Change]:
    """One batch as convert runs it: stat, classify, (read), record."""
    changes, batch = [], []
    for path, result in items:
        st = os.stat(path)
        changes.append(catalog.classify(path, st))
        batch.append((path, st, result))
    catalog.record_many(batch)
    return changes


def done(catalog: Catalog, uid: str, ok: bool = True) -> None:
    """The study's bundle was written: its files converted."""
    files = [
        (p.path, FileStatus.CONVERTED, f"study-{uid}.json") for p in catalog.packed_of_study(uid)
    ]
    catalog.study_done(uid, ok=ok, outcome={"studyInstanceUid": uid}, files=files)


@pytest.fixture
def out(tmp_path: Path) -> Path:
    return tmp_path / "out"


def test_new_unchanged_changed(tmp_path: Path, out: Path) -> None:
    a = write(tmp_path / "in" / "a.dcm", b"first")
    with Catalog.open(out) as catalog:
        catalog.begin_run([tmp_path / "in"])
        assert seen(catalog, (a, rec(a))) == [Change.NEW]
        assert catalog.studies_changed() == ["1.1"]
        done(catalog, "1.1")
        assert catalog.studies_changed() == []
        catalog.end_run()

        catalog.begin_run([tmp_path / "in"])
        assert catalog.classify(a, os.stat(a)) == Change.UNCHANGED
        # Same path, new content and mtime: changed.
        write(a, b"second!", OLD + 10**9)
        assert catalog.classify(a, os.stat(a)) == Change.CHANGED
        # Same size, another mtime (a touch): changed too (re-reading is cheap, a miss is not).
        write(a, b"second?", OLD + 2 * 10**9)
        assert catalog.classify(a, os.stat(a)) == Change.CHANGED
        assert catalog.run_counts() == {"new": 0, "changed": 2, "unchanged": 1}


def test_same_size_and_mtime_but_replaced_file_is_changed(tmp_path: Path, out: Path) -> None:
    """An rsync-like replacement (new inode, same size and mtime) is caught by inode and ctime."""
    a = write(tmp_path / "a.dcm", b"aaaa")
    with Catalog.open(out) as catalog:
        catalog.begin_run([tmp_path])
        seen(catalog, (a, rec(a)))
        tmp = write(tmp_path / ".a.tmp", b"bbbb")
        os.replace(tmp, a)
        assert catalog.classify(a, os.stat(a)) == Change.CHANGED


def test_racy_file_is_read_again(tmp_path: Path, out: Path) -> None:
    """A file modified around the run's start could change again within the same mtime tick:
    it is read again next run even when its stat looks the same."""
    a = write(tmp_path / "a.dcm", b"x", mtime_ns=time.time_ns())
    with Catalog.open(out) as catalog:
        catalog.begin_run([tmp_path])
        seen(catalog, (a, rec(a)))
        catalog.end_run()
        catalog.begin_run([tmp_path])
        assert catalog.classify(a, os.stat(a)) == Change.CHANGED


def test_equal_record_leaves_the_study_clean(tmp_path: Path, out: Path) -> None:
    a = write(tmp_path / "a.dcm", b"x")
    b = write(tmp_path / "b.dcm", b"y")
    with Catalog.open(out) as catalog:
        catalog.begin_run([tmp_path])
        seen(catalog, (a, rec(a, sop="1")), (b, rec(b, study="2.2", sop="2")))
        done(catalog, "1.1")
        done(catalog, "2.2")
        catalog.end_run()
        catalog.begin_run([tmp_path])
        write(a, b"x", OLD + 10**9)  # touched: re-read, same record
        write(b, b"z", OLD + 10**9)  # rewritten: its record moves to study 3.3
        assert seen(catalog, (a, rec(a, sop="1")), (b, rec(b, study="3.3", sop="2"))) == [
            Change.CHANGED,
            Change.CHANGED,
        ]
        # 2.2 lost its file (bundle to delete), 3.3 gained it; 1.1 is untouched.
        assert catalog.studies_changed() == ["2.2", "3.3"]
        entries = {Path(e.path).name: e for e in catalog.entries()}
        assert entries["a.dcm"].status == FileStatus.CONVERTED
        assert entries["b.dcm"].status is None  # pending until its study is written
        assert catalog.records_of_study("2.2") == []


def test_records_round_trip(tmp_path: Path, out: Path) -> None:
    a = write(tmp_path / "a.dcm", b"x")
    full = InstanceRecord(
        path=str(a),
        size=1234,
        sop_class_uid=CT,
        sop_instance_uid="1.2.3.4.5",
        study_instance_uid="1.2.3",
        series_instance_uid="1.2.3.4",
        image_type=("ORIGINAL", "PRIMARY"),
        patient_id_issuer=Issuer("HOSP", "1.2.3.99", "ISO"),
        patient_name="Müller^Zoë=ミュラー^ゾエ",
        procedure_codes=(Code("CT123", "99LOCAL", "CT chest"),),
        warnings=("odd value in (0008,0020)",),
        rows=512,
        has_pixels=True,
    )
    with Catalog.open(out) as catalog:
        catalog.begin_run([tmp_path])
        seen(catalog, (a, full))
        assert catalog.records_of_study("1.2.3") == [full]
        catalog.end_run()
    with Catalog.open(out) as catalog:  # and from disk
        assert catalog.records_of_study("1.2.3") == [full]
        packed = catalog.packed_of_study("1.2.3")
        assert packed == [PackedRecord.of(full)]
        with StudyIndex() as index:  # what convert does with them
            index.add_many(packed)
            assert index.records("1.2.3") == [full]


def test_problems_and_outcomes(tmp_path: Path, out: Path) -> None:
    a = write(tmp_path / "a.dcm", b"x")
    b = write(tmp_path / "b.dcm", b"x")
    notes = write(tmp_path / "notes.txt", b"hello")
    with Catalog.open(out) as catalog:
        catalog.begin_run([tmp_path])
        seen(
            catalog,
            (a, rec(a)),
            (b, rec(b)),  # the same instance again
            (notes, FileProblem(str(notes), FileStatus.SKIPPED, "not DICOM")),
        )
        catalog.set_outcomes([(str(b), FileStatus.DUPLICATE, f"same as {a}")])
        catalog.study_done(
            "1.1",
            ok=True,
            outcome={"studyInstanceUid": "1.1", "instances": 1},
            files=[(str(a), FileStatus.CONVERTED, "study-1.json")],
        )
        catalog.end_run({"studies": 1})
        got = [(Path(e.path).name, e.status, e.detail) for e in catalog.entries()]
        assert got == [
            ("a.dcm", FileStatus.CONVERTED, "study-1.json"),
            ("b.dcm", FileStatus.DUPLICATE, f"same as {a}"),
            ("notes.txt", FileStatus.SKIPPED, "not DICOM"),
        ]
        assert catalog.counts() == {"converted": 1, "skipped": 1, "duplicate": 1, "failed": 0}
        [study] = catalog.studies()
        assert (study.study_instance_uid, study.dirty) == ("1.1", False)
        assert study.outcome == {"studyInstanceUid": "1.1", "instances": 1}
        # Both files' records are kept: if a goes, b takes its place.
        assert [Path(p.path).name for p in catalog.packed_of_study("1.1")] == ["a.dcm", "b.dcm"]
        [run] = catalog.runs()
        assert run.ended is not None
        assert run.counts == {"new": 3, "changed": 0, "unchanged": 0, "studies": 1}
        assert run.inputs == (str(tmp_path),)


def test_failed_study_stays_dirty(tmp_path: Path, out: Path) -> None:
    a = write(tmp_path / "a.dcm", b"x")
    with Catalog.open(out) as catalog:
        catalog.begin_run([tmp_path])
        seen(catalog, (a, rec(a)))
        done(catalog, "1.1", ok=False)
        assert catalog.studies_changed() == ["1.1"]


def test_studies_sharing_an_instance_are_rebuilt_together(tmp_path: Path, out: Path) -> None:
    """Which file of a repeated SOP Instance UID wins depends on every file holding it."""
    a = write(tmp_path / "a.dcm", b"x")
    b = write(tmp_path / "b.dcm", b"y")
    c = write(tmp_path / "c.dcm", b"z")
    with Catalog.open(out) as catalog:
        catalog.begin_run([tmp_path])
        seen(
            catalog,
            (a, rec(a, study="1", sop="9.1")),
            (b, rec(b, study="2", sop="9.1")),  # conflicts with a
            (c, rec(c, study="3", sop="9.3")),
        )
        for uid in ("1", "2", "3"):
            done(catalog, uid)
        catalog.end_run()
        catalog.begin_run([tmp_path])
        write(a, b"xx")
        seen(catalog, (a, rec(a, study="1", sop="9.1", series="other")))
        assert catalog.studies_changed() == ["1", "2"]


def test_missing_and_prune(tmp_path: Path, out: Path) -> None:
    inputs = tmp_path / "in"
    a = write(inputs / "a.dcm", b"x")
    b = write(inputs / "b.dcm", b"y")
    elsewhere = write(tmp_path / "other" / "c.dcm", b"z")
    with Catalog.open(out) as catalog:
        catalog.begin_run([inputs, elsewhere.parent])
        seen(
            catalog,
            (a, rec(a, sop="1")),
            (b, rec(b, sop="2")),
            (elsewhere, rec(elsewhere, sop="3")),
        )
        done(catalog, "1.1")
        catalog.end_run()

        b.unlink()
        catalog.begin_run([inputs])  # a run over part of what the folder holds
        assert seen(catalog, (a, rec(a, sop="1"))) == [Change.UNCHANGED]
        # c.dcm was not looked at but still exists: not missing.
        assert [Path(e.path).name for e in catalog.missing()] == ["b.dcm"]
        # By default a missing file stays in its study.
        assert len(catalog.records_of_study("1.1")) == 3
        assert catalog.studies_changed() == []

        assert catalog.prune([e.path for e in catalog.missing()]) == {"1.1"}
        assert catalog.missing() == []
        assert catalog.studies_changed() == ["1.1"]
        assert sorted(Path(r.path).name for r in catalog.records_of_study("1.1")) == [
            "a.dcm",
            "c.dcm",
        ]
        assert catalog.prune([tmp_path / "never-seen.dcm"]) == set()


def test_non_utf8_file_names(tmp_path: Path, out: Path) -> None:
    raw = os.fsencode(tmp_path) + b"/caf\xe9-\xff.dcm"  # Latin-1 bytes: not UTF-8
    a = write(Path(os.fsdecode(raw)), b"x")
    record = rec(a)
    with Catalog.open(out) as catalog:
        catalog.begin_run([tmp_path])
        assert seen(catalog, (a, record)) == [Change.NEW]
        reason = f"study not converted: {a} is odd"
        catalog.study_done(
            "1.1", ok=False, outcome=None, files=[(str(a), FileStatus.FAILED, reason)]
        )
        catalog.end_run()
    with Catalog.open(out) as catalog:
        catalog.begin_run([tmp_path])
        assert catalog.classify(a, os.stat(a)) == Change.UNCHANGED
        assert catalog.records_of_study("1.1") == [record]
        [entry] = catalog.entries()
        assert os.fsencode(entry.path) == raw
        assert entry.detail == reason
        catalog.end_run()
        os.unlink(raw)
        catalog.begin_run([tmp_path])  # the file is gone: not seen this time
        assert [os.fsencode(e.path) for e in catalog.missing()] == [raw]
        assert catalog.prune([a]) == {"1.1"}


def test_relative_paths_from_another_working_directory(
    tmp_path: Path, out: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = write(tmp_path / "in" / "a.dcm", b"x")
    monkeypatch.chdir(tmp_path)
    with Catalog.open(out) as catalog:
        catalog.begin_run(["in"])
        seen(catalog, (Path("in/a.dcm"), rec("in/a.dcm")))
        assert [e.path for e in catalog.entries()] == ["in/a.dcm"]
        catalog.end_run()
    monkeypatch.chdir(tmp_path / "in")
    with Catalog.open(out) as catalog:
        catalog.begin_run(["."])
        assert catalog.classify("a.dcm", os.stat("a.dcm")) == Change.UNCHANGED
        # The old relative path would name nothing from here: the record says where it is.
        assert [r.path for r in catalog.records_of_study("1.1")] == [str(a)]
        assert [e.path for e in catalog.entries()] == [str(a)]


def test_options_change_rewrites_every_study(tmp_path: Path, out: Path) -> None:
    a = write(tmp_path / "a.dcm", b"x")
    with Catalog.open(out) as catalog:
        assert catalog.use_options("r4")
        catalog.begin_run([tmp_path])
        seen(catalog, (a, rec(a)))
        done(catalog, "1.1")
        assert not catalog.use_options("r4")
        assert catalog.studies_changed() == []
        assert catalog.use_options("r5")
        assert catalog.studies_changed() == ["1.1"]


def test_another_fhirimg_reads_every_file_again(tmp_path: Path, out: Path) -> None:
    a = write(tmp_path / "a.dcm", b"x")
    with Catalog.open(out) as catalog:
        catalog.begin_run([tmp_path])
        seen(catalog, (a, rec(a)))
        done(catalog, "1.1")
    with sqlite3.connect(out / STATE_DIR / CATALOG_NAME) as db:
        db.execute("UPDATE meta SET value = 'older' WHERE name = 'reader'")
    db.close()
    with Catalog.open(out) as catalog:
        catalog.begin_run([tmp_path])
        assert catalog.classify(a, os.stat(a)) == Change.CHANGED
        assert catalog.studies_changed() == ["1.1"]


def test_files_are_private(tmp_path: Path, out: Path) -> None:
    with Catalog.open(out) as catalog:
        catalog.begin_run([tmp_path])
        state = out / STATE_DIR
        assert stat.S_IMODE(state.stat().st_mode) == 0o700
        for name in os.listdir(state):  # the catalog, its -wal and -shm
            assert stat.S_IMODE((state / name).stat().st_mode) == 0o600, name


def test_symlinked_state_folder_is_refused(tmp_path: Path, out: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out.mkdir()
    (out / STATE_DIR).symlink_to(elsewhere)
    with pytest.raises(OSError, match="symbolic link"):
        Catalog.open(out)
    assert list(elsewhere.iterdir()) == []


def _catalog_file(out: Path, tmp_path: Path) -> Path:
    a = write(tmp_path / "a.dcm", b"x")
    with Catalog.open(out) as catalog:
        catalog.begin_run([tmp_path])
        seen(catalog, *[(a, rec(a, study=f"1.{i}", sop=f"1.{i}.1")) for i in range(1)])
        items = []
        for i in range(300):  # enough pages for a cut to matter
            p = write(tmp_path / "in" / f"{i}.dcm", b"y" * i)
            items.append((p, os.stat(p), rec(p, study=f"2.{i % 7}", sop=f"2.{i}")))
        catalog.record_many(items)
        catalog.end_run()
    return out / STATE_DIR / CATALOG_NAME


def _corrupt_garbage(path: Path) -> None:
    path.write_bytes(b"this is not SQLite at all\n" * 500)


def _corrupt_truncated(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _corrupt_empty(path: Path) -> None:
    path.write_bytes(b"")


def _corrupt_newer(path: Path) -> None:
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()


def _corrupt_tables(path: Path) -> None:
    with sqlite3.connect(path) as db:
        db.execute("DROP TABLE study")
    db.close()


def _corrupt_other_sqlite(path: Path) -> None:
    path.unlink()
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE notes (x)")
    db.close()


@pytest.mark.parametrize(
    ("damage", "words"),
    [
        (_corrupt_garbage, "not a database"),
        (_corrupt_truncated, "malformed|truncated"),
        (_corrupt_empty, "not a fhirimg catalog"),
        (_corrupt_newer, "newer fhirimg"),
        (_corrupt_tables, "table 'study'"),
        (_corrupt_other_sqlite, "not a fhirimg catalog"),
    ],
)
def test_unusable_catalog_says_to_rebuild(
    tmp_path: Path, out: Path, damage: object, words: str
) -> None:
    path = _catalog_file(out, tmp_path)
    assert callable(damage)
    damage(path)
    with pytest.raises(CatalogError, match=words) as info:
        Catalog.open(out)
    assert "re-run with --full" in str(info.value)
    assert str(path) in str(info.value)
    assert info.value.rebuild
    # --full discards it and starts again.
    with Catalog.open(out, full=True) as catalog:
        assert catalog.studies() == []
        assert list(catalog.entries()) == []
        catalog.begin_run([tmp_path])
        a = tmp_path / "a.dcm"
        assert catalog.classify(a, os.stat(a)) == Change.NEW


_KILLED_RUN = textwrap.dedent(
    """
    import os, signal, sys
    from fhirimg.catalog import Catalog
    from fhirimg.model import InstanceRecord

    out, src = sys.argv[1], sys.argv[2]

    def item(i, study):
        path = os.path.join(src, f"{i}.dcm")
        rec = InstanceRecord(path, 1, "1.2", f"9.{i}", study, study + ".1")
        return path, os.stat(path), rec

    catalog = Catalog.open(out)
    catalog.begin_run([src])
    catalog.record_many([item(0, "1"), item(1, "2")])
    catalog.study_done("1", ok=True, outcome=None, files=[(item(0, "1")[0], "converted", "b1")])

    def batch():  # killed half way through a batch: nothing of it may stay
        yield item(2, "3")
        os.kill(os.getpid(), signal.SIGKILL)
        yield item(3, "3")

    catalog.record_many(batch())
    """
)


def test_survives_kill_9(tmp_path: Path, out: Path) -> None:
    src = tmp_path / "src"
    for i in range(4):
        write(src / f"{i}.dcm", b"x")
    proc = subprocess.run(
        [sys.executable, "-c", _KILLED_RUN, str(out), str(src)], capture_output=True, timeout=120
    )
    assert proc.returncode == -9, proc.stderr.decode()
    with Catalog.open(out) as catalog:
        with sqlite3.connect(catalog.path) as db:
            assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        db.close()
        # Study 1 was written; study 2's file was recorded but its bundle never written: dirty.
        assert catalog.studies_changed() == ["2"]
        assert [Path(e.path).name for e in catalog.entries()] == ["0.dcm", "1.dcm"]
        [run] = catalog.runs()
        assert run.ended is None  # interrupted
        catalog.begin_run([src])
        changes = {p.name: catalog.classify(p, os.stat(p)) for p in sorted(src.iterdir())}
        assert changes == {
            "0.dcm": Change.UNCHANGED,
            "1.dcm": Change.UNCHANGED,
            "2.dcm": Change.NEW,
            "3.dcm": Change.NEW,
        }


def test_run_history(tmp_path: Path, out: Path) -> None:
    with Catalog.open(out) as catalog:
        first = catalog.begin_run([tmp_path], full=True)
        catalog.end_run({"studies": 0})
        second = catalog.begin_run([tmp_path])
        runs = catalog.runs()
    assert [(r.id, r.full) for r in runs] == [(first, True), (second, False)]
    assert runs[0].ended is not None
    assert runs[1].ended is None
    assert runs[0].counts == {"new": 0, "changed": 0, "unchanged": 0, "studies": 0}


def test_run_must_begin_first(tmp_path: Path, out: Path) -> None:
    a = write(tmp_path / "a.dcm", b"x")
    with Catalog.open(out) as catalog, pytest.raises(RuntimeError, match="begin_run"):
        catalog.classify(a, os.stat(a))
