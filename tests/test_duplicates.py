"""Files sharing a SOP Instance UID: same bytes are a duplicate, other bytes a conflict.

Issue 11 item 20: two files with one SOP Instance UID but different content were reported as
"same content". fhirimg/group.py compares the size, then (only on a tie) a SHA-256 of the bytes;
the file kept is the first by path, whatever ``--jobs`` and the walk order, and an incremental
run (the catalog) resolves them again when either file's bytes change.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

from fhirimg import ConvertOptions, convert
from tests.helpers import load, pydicom_file

OLD = time.time_ns() - 3600 * 10**9  # outside the catalog's racy window: a re-run trusts stat


def settle(root: Path) -> None:
    for path in [root, *root.rglob("*")]:
        os.utime(path, ns=(OLD, OLD), follow_symlinks=False)


def flip_last_byte(path: Path) -> None:
    """Other content, same size, same header (the last byte is pixel data in CT_small.dcm)."""
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def files(out: Path) -> dict[str, dict[str, Any]]:
    return {Path(f["path"]).name: f for f in load(out / "report.json")["files"]}


def test_same_bytes_are_a_duplicate_other_bytes_a_conflict(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    ct = pydicom_file("CT_small.dcm")
    shutil.copy(ct, src / "a.dcm")
    shutil.copy(ct, src / "b-copy.dcm")  # the same bytes
    shutil.copy(ct, src / "c-edited.dcm")
    flip_last_byte(src / "c-edited.dcm")  # same UIDs and size, other pixels: hashed
    with (src / "d-longer.dcm").open("wb") as fh:  # same UIDs, other size: not hashed
        fh.write(ct.read_bytes() + b"\0\0")
    report = convert([src], ConvertOptions(out_dir=tmp_path / "out", jobs=1))
    assert report.files["converted"] == 1
    assert report.files["duplicate"] == 1
    assert report.files["failed"] == 2
    by_name = files(tmp_path / "out")
    assert by_name["a.dcm"]["status"] == "converted"
    assert by_name["b-copy.dcm"]["status"] == "duplicate"
    assert by_name["b-copy.dcm"]["reason"] == f"same SOP Instance UID and content as {src}/a.dcm"
    for name in ("c-edited.dcm", "d-longer.dcm"):
        reason = by_name[name]["reason"]
        assert by_name[name]["status"] == "failed"
        assert "different content" in reason
        assert f"{src}/{name}" in reason
        assert f"{src}/a.dcm is kept" in reason


def test_the_file_kept_is_the_first_by_path_whatever_jobs(tmp_path: Path) -> None:
    """The edited copy sorts first, so it is kept; the same with 1 and 2 worker processes."""
    src = tmp_path / "in"
    (src / "z").mkdir(parents=True)
    (src / "a").mkdir()
    ct = pydicom_file("CT_small.dcm")
    shutil.copy(ct, src / "z" / "ct.dcm")
    shutil.copy(ct, src / "a" / "ct.dcm")
    flip_last_byte(src / "a" / "ct.dcm")
    reports = []
    for jobs in (1, 2):
        out = tmp_path / f"out{jobs}"
        convert([src / "z", src / "a"], ConvertOptions(out_dir=out, jobs=jobs))
        by_path = {f["path"]: f for f in load(out / "report.json")["files"]}
        assert by_path[f"{src}/a/ct.dcm"]["status"] == "converted"
        assert by_path[f"{src}/z/ct.dcm"]["status"] == "failed"
        assert f"{src}/a/ct.dcm is kept" in by_path[f"{src}/z/ct.dcm"]["reason"]
        reports.append(by_path)
    assert reports[0] == reports[1]


def test_incremental_run_sees_a_copy_change_and_change_back(tmp_path: Path) -> None:
    """A pixel edit leaves the header record equal; the catalog still resolves the pair again."""
    src = tmp_path / "in"
    src.mkdir()
    ct = pydicom_file("CT_small.dcm")
    shutil.copy(ct, src / "a.dcm")
    shutil.copy(ct, src / "b.dcm")
    settle(src)
    out = tmp_path / "out"
    opts = ConvertOptions(out_dir=out, jobs=1)
    convert([src], opts)
    assert files(out)["b.dcm"]["status"] == "duplicate"

    flip_last_byte(src / "b.dcm")
    settle(src)
    report = convert([src], opts)
    assert files(out)["b.dcm"]["status"] == "failed"
    assert "different content" in files(out)["b.dcm"]["reason"]
    assert report.files["failed"] == 1

    flip_last_byte(src / "a.dcm")  # now the kept file changes: the same bytes again
    settle(src)
    report = convert([src], opts)
    assert files(out)["b.dcm"]["status"] == "duplicate"
    assert files(out)["a.dcm"]["status"] == "converted"
    assert report.files["failed"] == 0
