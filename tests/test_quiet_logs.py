"""pydicom's complaints never reach stderr at the default level or with --quiet; they go to the report.

Issue 11 item 19: ``--quiet`` printed hundreds of pydicom log lines, some quoting patient names from
raw header bytes. pydicom both logs ("pydicom" logger) and warns (``warnings.warn``) about odd
input, in the reading process and in worker processes (``-j2``). fhirimg/scan.py collects what it
says while a file is read; the file's entry in report.json carries it as a warning, with the
quoted values left out and the element named; ``-v`` shows that, ``-vv`` pydicom's own words.

Run through the real console script in a subprocess: stderr is the process's own, and worker
processes write to it directly.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian

from tests.helpers import REPO, load

NAME = "Zzyzx^Quincy"
FHIRIMG = [sys.executable, "-c", "from fhirimg.cli import main; main()"]


def dataset(i: int) -> pydicom.Dataset:
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.2")
    ds.file_meta.MediaStorageSOPInstanceUID = UID(f"1.2.826.0.1.3680043.9.7704.9.{i}")
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = f"1.2.826.0.1.3680043.9.7704.9.{i}"
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.9.7704.9"
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.9.7704.9.100"
    ds.Modality = "CT"
    ds.PatientID = "MRN0042"
    return ds


@pytest.fixture(scope="module")
def noisy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Files pydicom complains about, quoting the patient's name from the header's bytes."""
    src = tmp_path_factory.mktemp("noisy")
    with warnings.catch_warnings():  # pydicom objects to these values here too
        warnings.simplefilter("ignore")
        _write_noisy(src)
    return src


def _write_noisy(src: Path) -> None:
    # (0008,0005) holding the name (a field shifted by a broken writer): "Unknown encoding '<it>'"
    ds = dataset(1)
    ds.add_new(0x00080005, "CS", NAME)
    ds.add_new(0x00100010, "PN", NAME.encode() + b"\xe9")  # not ASCII: decoded with (0008,0005)
    ds.save_as(src / "charset-is-a-name.dcm", enforce_file_format=True)
    # a code extension that is the name: "... does not allow code extensions, ignoring: <it>"
    ds = dataset(2)
    ds.add_new(0x00080005, "CS", ["ISO_IR 192", NAME])
    ds.add_new(0x00100010, "PN", NAME.encode() + b"\xff\xfe")  # not UTF-8 either
    ds.save_as(src / "extension-is-a-name.dcm", enforce_file_format=True)


def run(src: Path, out: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [*FHIRIMG, "convert", str(src), "-o", str(out), *flags],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )


@pytest.mark.parametrize("jobs", ["1", "2"])
@pytest.mark.parametrize("level", [[], ["--quiet"]])
def test_no_pydicom_line_and_no_name_on_stderr(
    tmp_path: Path, noisy: Path, jobs: str, level: list[str]
) -> None:
    done = run(noisy, tmp_path / "out", "-j", jobs, *level)
    assert done.returncode == 0, done.stderr
    assert NAME not in done.stderr
    assert "Zzyzx" not in done.stderr
    assert "pydicom:" not in done.stderr  # neither its log lines nor our notes
    assert "Warning:" not in done.stderr  # nor a warnings.warn (UserWarning: ...)
    if level:
        assert done.stderr == ""
    # what pydicom complained about is in each file's entry, without the name
    files = {Path(f["path"]).name: f for f in load(tmp_path / "out" / "report.json")["files"]}
    for name in ("charset-is-a-name.dcm", "extension-is-a-name.dcm"):
        warnings = files[name]["warnings"]
        assert any(w.startswith("pydicom: (0008,0005) ") for w in warnings), warnings
        assert not any("Zzyzx" in w for w in warnings), warnings
    assert any(
        w.startswith("pydicom: (0010,0010) ") for w in files["extension-is-a-name.dcm"]["warnings"]
    )


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_verbose_shows_the_complaints_without_the_name(
    tmp_path: Path, noisy: Path, jobs: str
) -> None:
    done = run(noisy, tmp_path / "out", "-j", jobs, "-v")
    assert done.returncode == 0, done.stderr
    assert "charset-is-a-name.dcm: pydicom: (0008,0005) Unknown encoding '…'" in done.stderr
    assert "Zzyzx" not in done.stderr
    # -vv: pydicom's own words, for whoever debugs a file (docs/cli.md says they may quote values)
    debug = run(noisy, tmp_path / "out-vv", "-j", jobs, "-vv")
    assert f"pydicom said: Unknown encoding '{NAME}'" in debug.stderr


def test_the_complaints_survive_an_incremental_run(tmp_path: Path, noisy: Path) -> None:
    """A re-run that reads nothing keeps each file's warnings (from the catalog)."""
    out = tmp_path / "out"
    for _ in range(2):
        assert run(noisy, out, "-q").returncode == 0
        files = {Path(f["path"]).name: f for f in load(out / "report.json")["files"]}
        assert files["charset-is-a-name.dcm"]["warnings"]
