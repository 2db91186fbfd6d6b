"""Shared test helpers (plain functions; fixtures live in conftest.py)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NoReturn

import orjson
import pytest
from pydicom.data import get_testdata_file

from tests.servers.orthanc_server import OrthancServer, start_orthanc, why_unavailable

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "sample_data" / "dicom"
GOLDEN = Path(__file__).resolve().parent / "golden"


def load(path: Path) -> Any:
    return orjson.loads(path.read_bytes())


def require_or_skip(reason: str) -> NoReturn:
    """Skip the test for ``reason``, or fail it when the run requires the real servers
    (``FHIRIMG_REQUIRE_DICOMWEB=1``, as CI sets it): a missing server never passes silently."""
    if os.environ.get("FHIRIMG_REQUIRE_DICOMWEB") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


def orthanc_or_skip(
    workdir: Path, username: str | None = None, password: str | None = None
) -> OrthancServer:
    """A started Orthanc (DICOMweb and DIMSE) for a test, or skip/fail as :func:`require_or_skip`."""
    reason = why_unavailable()
    if reason is not None:
        require_or_skip(reason)
    return start_orthanc(workdir, username, password)


def pydicom_file(name: str) -> Path:
    """A file of the test data pydicom ships (``CT_small.dcm``, ...), never downloaded.

    ``get_testdata_file`` is typed ``str | Dataset | None`` (``read=True`` gives a Dataset, a
    missing file None); this narrows it for mypy and names the file when it is missing.
    """
    path = get_testdata_file(name, download=False)
    assert isinstance(path, str), f"pydicom test file {name} not available"
    return Path(path)


def report_bytes(out_dir: Path) -> bytes:
    """``report.json`` of a convert output folder as the golden files pin it: the folder's path
    replaced by ``OUT``, and its ``history`` (the run history: timestamps and fhirimg versions,
    the one part that differs between two runs over the same input, docs/incremental.md)
    replaced by the number of runs. Everything else is compared byte for byte."""
    doc = load(out_dir / "report.json")
    if "history" in doc:
        doc["history"] = f"<{len(doc['history'])} run(s): not compared>"
    if "audit" in doc:  # times and the version (fhirimg.audit): tested in test_cli_audit
        doc["audit"] = "<not compared>"
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE).replace(
        str(out_dir).encode(), b"OUT"
    )


def bundles(out_dir: Path) -> dict[str, dict[str, Any]]:
    """The bundles in a convert output folder, by file name."""
    return {p.name: load(p) for p in sorted(out_dir.glob("study-*.json"))}


def resources(bundle: dict[str, Any], resource_type: str) -> list[dict[str, Any]]:
    return [
        e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == resource_type
    ]


def study_by_uid(out_dir: Path, uid: str) -> dict[str, Any]:
    for bundle in bundles(out_dir).values():
        for study in resources(bundle, "ImagingStudy"):
            if study["identifier"][0]["value"] == "urn:oid:" + uid:
                return bundle
    raise AssertionError(f"no bundle for study {uid}")


def synthetic_tree(root: Path, studies: int, per_study: int, name: str = "Test^Patient") -> Path:
    """``studies`` x ``per_study`` small DICOM files (CT, no pixel data) under ``root``, one folder
    per study, written fast: one template file, its fixed-width UIDs replaced byte for byte.

    Each study has its own Patient ID and ``name`` followed by the study's number (same length
    for every study).
    """
    import pydicom
    from pydicom.dataset import FileMetaDataset

    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = pydicom.uid.UID("1.2.840.10008.5.1.4.1.1.2")
    ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.UID("2.25.900000000000.111111")
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = "2.25.900000000000.111111"
    ds.StudyInstanceUID = "2.25.900000000000"
    ds.SeriesInstanceUID = "2.25.900000000000.1"
    ds.PatientID = "PID900000000000"
    ds.PatientName = f"{name}900000000000"
    ds.Modality = "CT"
    ds.StudyDate = "20240102"
    ds.InstanceNumber = "1"
    template = root / ".template.dcm"
    root.mkdir(parents=True, exist_ok=True)
    ds.save_as(template, enforce_file_format=True)
    data = template.read_bytes()
    template.unlink()
    for s in range(studies):
        study = f"1{s:011d}"  # no leading zero: a valid UID component
        folder = root / f"study-{s:05d}"
        folder.mkdir()
        by_study = data.replace(b"900000000000", study.encode())
        for i in range(per_study):
            (folder / f"{i:05d}.dcm").write_bytes(by_study.replace(b"111111", b"1%05d" % i))
    return root
