"""Reading headers: content sniffing, the fast parser against pydicom, bad input never raising."""

from __future__ import annotations

import os
from pathlib import Path

import pydicom
import pydicom.data
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fhirimg import scan
from fhirimg.model import FileProblem, FileStatus, InstanceRecord
from tests.helpers import SAMPLE, pydicom_file

PYDICOM_DATA = Path(pydicom.data.__file__).parent


def _corpus() -> list[Path]:
    files = [p for p in sorted(PYDICOM_DATA.rglob("*")) if p.is_file()]
    return files + [p for p in sorted(SAMPLE.rglob("*")) if p.is_file()]


def _both_paths(path: Path) -> tuple[object, object] | None:
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        buf = fh.read(scan._FIRST_READ)
        kind = scan.sniff(buf[:132])
        if kind is None:
            return None
        fast = scan._fast(fh, buf, size, kind)
        fh.seek(0)
        slow = scan._slow(fh, size, kind)

    def record(x: object) -> object:
        if isinstance(x, tuple):
            meta, header = x
            return scan._record(str(path), size, header, meta, kind)
        return x

    return (None if fast is None else record(fast)), record(slow)


def test_fast_parser_agrees_with_pydicom() -> None:
    """Over pydicom's own test files and the sample data, whatever the fast parser reads it reads
    exactly as the pydicom path does; it leaves the rest (big endian, deflate, ...) to pydicom."""
    compared = fell_back = 0
    for path in _corpus():
        try:
            pair = _both_paths(path)
        except Exception:  # pydicom itself cannot read it: the fast path must not be the only one
            continue
        if pair is None:
            continue
        fast, slow = pair
        if fast is None:
            fell_back += 1
            continue
        compared += 1
        assert fast == slow, path
    assert compared > 150
    assert fell_back > 0  # big endian / deflate samples exist and go through pydicom


def test_sniff_by_content_not_extension(tmp_path: Path) -> None:
    ct = pydicom_file("CT_small.dcm")
    (tmp_path / "noext").write_bytes(ct.read_bytes())
    (tmp_path / "image.dcm").write_bytes(b"this is not DICOM at all, despite the name" * 10)
    assert isinstance(scan.read_file(str(tmp_path / "noext")), InstanceRecord)
    problem = scan.read_file(str(tmp_path / "image.dcm"))
    assert isinstance(problem, FileProblem)
    assert problem.status is FileStatus.SKIPPED


def test_bare_dataset_without_preamble() -> None:
    record = scan.read_file(str(SAMPLE / "study_c_mixed" / "legacy_no_meta.dcm"))
    assert isinstance(record, InstanceRecord)
    # implicit VR: US values unpacked, not read as text
    assert (record.rows, record.columns) == (32, 32)
    assert any("preamble" in w for w in record.warnings)


def test_dicomdir_skipped() -> None:
    problem = scan.read_file(str(SAMPLE / "dicomdir" / "DICOMDIR"))
    assert isinstance(problem, FileProblem)
    assert "DICOMDIR" in problem.reason


def test_missing_uids_named(tmp_path: Path) -> None:
    ds = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    del ds.SeriesInstanceUID
    ds.save_as(tmp_path / "x.dcm")
    problem = scan.read_file(str(tmp_path / "x.dcm"))
    assert isinstance(problem, FileProblem)
    assert problem.reason == "missing Series Instance UID (0020,000E)"


_CT = pydicom_file("CT_small.dcm").read_bytes()


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(0, 4000), junk=st.binary(max_size=64))
def test_cut_or_damaged_files_never_raise(tmp_path: Path, cut: int, junk: bytes) -> None:
    path = tmp_path / "damaged.dcm"
    path.write_bytes(_CT[:cut] + junk)
    result = scan.read_file(str(path))
    assert isinstance(result, InstanceRecord | FileProblem)
    if isinstance(result, FileProblem):
        assert result.reason
        assert result.path == str(path)


@pytest.mark.parametrize("name", ["missing", "folder"])
def test_unreadable_paths(tmp_path: Path, name: str) -> None:
    target = tmp_path / name
    if name == "folder":
        target.mkdir()
    result = scan.read_file(str(target))
    assert isinstance(result, FileProblem)
    assert result.status is FileStatus.FAILED


def test_common_charsets_are_pydicoms_answer() -> None:
    """The single-term (0008,0005) values the fast parser knows without pydicom give the codecs
    pydicom's ``convert_encodings`` gives them, and pydicom says nothing about them."""
    import warnings

    from pydicom.charset import convert_encodings

    for term, codec in scan._COMMON_CHARSETS.items():
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert convert_encodings([term]) == [codec], term


def test_header_of_a_common_charset_file_is_read_as_pydicom_would(tmp_path: Path) -> None:
    """A Latin-1 name in an ISO_IR 100 file decodes through the table's codec like pydicom's."""
    ds = pydicom.dcmread(SAMPLE / "study_a_ct" / "ct_0001.dcm")
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = "Müller^Jürgen"
    ds.save_as(tmp_path / "latin.dcm", enforce_file_format=True)
    record = scan.read_file(str(tmp_path / "latin.dcm"))
    assert isinstance(record, InstanceRecord)
    assert record.patient_name == "Müller^Jürgen"
    assert record.warnings == ()
