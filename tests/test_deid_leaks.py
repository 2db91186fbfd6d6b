"""The leak scan of de-identification (issue 14), independent of the implementation.

Every identifying value of every input is collected with pydicom alone (names by component, ids,
dates, UIDs, accession, institution, device serial, addresses, phone numbers), then searched for
in every byte of the output: bundle JSON, the decoded base64 payloads (Binary DICOM bytes,
rendered PNG/JPEG with their metadata), files beside the bundles, report.json, the de-identified
DICOM files of ``fhirimg deidentify``. The count must be 0, on sample_data and on pydicom's own
test files (character sets, SR, RT, overlays, private sequences, big endian, deflate...).
"""

from __future__ import annotations

import base64
import io
import re
import struct
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pydicom
import pydicom.data
import pytest
from pydicom.dataset import Dataset
from typer.testing import CliRunner

from fhirimg.cli import app
from tests.helpers import SAMPLE

PYDICOM_FILES = Path(pydicom.data.__file__).parent / "test_files"
KEY = "leak-scan-key-0123456789abcdef"
INPUTS = [SAMPLE, SAMPLE.parent / "sr", PYDICOM_FILES]  # sr: the measurement corpus (issue 20)

# Attributes whose values identify (by keyword), beside every PN anywhere and the UIDs below.
IDENTIFYING = {
    "PatientID", "OtherPatientIDs", "AccessionNumber", "InstitutionName", "InstitutionAddress",
    "InstitutionalDepartmentName", "DeviceSerialNumber", "PatientAddress",
    "PatientTelephoneNumbers", "PersonTelephoneNumbers", "PersonAddress", "StationName",
    "ReferringPhysicianAddress", "ReferringPhysicianTelephoneNumbers", "StudyID",
    "MedicalRecordLocator", "PatientBirthName", "PatientMotherBirthName", "OtherPatientNames",
}  # fmt: skip
DATES = {
    "PatientBirthDate", "StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate",
    "InstanceCreationDate",
}  # fmt: skip
# Values of attributes that do not identify and are kept by design (a manufacturer, a code): an
# identifying value that is also one of these (an institution named like its scanner's maker, a
# Study ID "1234" that is also a code value elsewhere) is no leak when it shows.
NOT_IDENTIFYING = {"Manufacturer", "ManufacturerModelName", "CodeValue", "CodeMeaning"}
UIDS = re.compile(r"(SOPInstanceUID|StudyInstanceUID|SeriesInstanceUID|FrameOfReferenceUID)$")
MIN_TEXT = 4  # shorter name parts and ids ("Dr", "1") are everywhere in any output


def _elements(ds: Dataset) -> Iterator[Any]:
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value or ():
                yield from _elements(item)
        else:
            yield elem


def identifying_values(paths: list[Path]) -> set[str]:
    """Every identifying value of every DICOM file under ``paths``, as text."""
    found: set[str] = set()
    kept: set[str] = set()
    for root in paths:
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    ds = pydicom.dcmread(path, force=True)
                    elements = list(_elements(ds))
            except Exception:
                continue  # not DICOM, or nothing pydicom can read: nothing to find either
            for elem in elements:
                try:
                    values = elem.value if elem.VM > 1 else [elem.value]
                    texts = [str(v) for v in values if v not in (None, "", b"")]
                except Exception:
                    continue
                keyword = elem.keyword or ""
                if keyword in NOT_IDENTIFYING:
                    kept.update(texts)
                elif elem.VR == "PN":
                    for text in texts:
                        found.update(re.split(r"[\^=]", text))
                elif keyword in IDENTIFYING:
                    found.update(t.strip() for t in texts)
                elif keyword in DATES:
                    for text in texts:
                        text = text.strip()
                        if re.fullmatch(r"\d{8}", text) and text != "00000000":
                            found.update({text, f"{text[:4]}-{text[4:6]}-{text[6:]}"})
                elif UIDS.search(keyword) and elem.VR == "UI":
                    found.update(t.strip("\0 ") for t in texts)
    values = {v.strip() for v in found if len(v.strip()) >= MIN_TEXT}
    return {v for v in values if not any(v in k for k in kept)}


def _decoded(doc: Any) -> Iterator[bytes]:
    """The JSON with each base64 ``data`` replaced by its decoded bytes (also yielded)."""
    if isinstance(doc, dict):
        for key, value in doc.items():
            if key == "data" and isinstance(value, str):
                yield base64.b64decode(value)
            else:
                yield from _decoded(value)
    elif isinstance(doc, list):
        for value in doc:
            yield from _decoded(value)


def _without_data(doc: Any) -> Any:
    """The JSON without base64 payloads and without the input files' paths (``report.json``
    names each input file, by the path the user gave: docs/deidentify.md says so)."""
    if isinstance(doc, dict):
        return {k: ("" if k in ("data", "path") else _without_data(v)) for k, v in doc.items()}
    if isinstance(doc, list):
        return [_without_data(v) for v in doc]
    return doc


_BULK_VRS = {"OB", "OW", "OF", "OD", "OL", "OV"}
_BULK = 1024


def _text_of_dicom(data: bytes) -> bytes:
    """A DICOM file's bytes without its bulk binary values (pixels, waveform samples, larger than
    1 KiB): those are measurements, whose bytes match short values by chance; that the pixels are
    the input's is checked by hash (tests/test_deidentify.py)."""

    def strip(ds: Dataset) -> None:
        for elem in list(ds):
            if elem.VR == "SQ":
                for item in elem.value or ():
                    strip(item)
            elif elem.VR in _BULK_VRS and len(elem.value or b"") > _BULK:
                del ds[elem.tag]

    ds = pydicom.dcmread(io.BytesIO(data), force=True)
    strip(ds)
    buf = io.BytesIO()
    ds.save_as(buf)
    return buf.getvalue()


def _metadata_of_image(data: bytes) -> bytes:
    """A PNG's chunks but the pixel data (IDAT); a JPEG's bytes before its scan (SOS): where
    text metadata would be."""
    if data.startswith(b"\x89PNG"):
        out, at = [data[:8]], 8
        while at + 8 <= len(data):
            (length,) = struct.unpack(">I", data[at : at + 4])
            kind = data[at + 4 : at + 8]
            if kind != b"IDAT":
                out.append(data[at : at + 12 + length])
            at += 12 + length
        return b"".join(out)
    sos = data.find(b"\xff\xda")
    return data[: sos if sos >= 0 else len(data)]


def _searchable(data: bytes) -> bytes:
    if data[128:132] == b"DICM":
        return _text_of_dicom(data)
    if data.startswith((b"\x89PNG", b"\xff\xd8")):
        return _metadata_of_image(data)
    return data


def output_bytes(out: Path) -> list[tuple[str, bytes]]:
    """Every output file's bytes; a JSON file as its text (base64 left out) and each decoded
    payload (random base64 text would match short values by chance)."""
    found: list[tuple[str, bytes]] = []
    # .fhirimg/ is the run's private state (the catalog names input files by path), not output
    files = [p for p in out.rglob("*") if p.is_file() and ".fhirimg" not in p.parts]
    for path in sorted(files):
        data = path.read_bytes()
        if path.suffix == ".json":
            doc = orjson.loads(data)
            found.append((str(path), orjson.dumps(_without_data(doc))))
            found += [(f"{path} (base64)", _searchable(raw)) for raw in _decoded(doc)]
        else:
            found.append((str(path), _searchable(data)))
    return found


def leaks(values: set[str], out: Path) -> list[str]:
    """``value in file`` for each identifying value found, as a whole (not inside a longer number
    or UID). One pass per file: every value in one alternation, longest first."""
    ordered = sorted(values, key=lambda v: (-len(v), v))
    alternatives = b"|".join(re.escape(v.encode()) for v in ordered)
    pattern = re.compile(rb"(?<![0-9.])(?:" + alternatives + rb")(?![0-9.])")
    hits = []
    for name, data in output_bytes(out):
        for found in sorted({m.group().decode(errors="replace") for m in pattern.finditer(data)}):
            hits.append(f"{found!r} in {name}")
    return hits


@pytest.fixture(scope="module")
def identities() -> set[str]:
    values = identifying_values(INPUTS)
    assert len(values) > 200  # names, ids, dates and UIDs of ~200 files: the scan sees them
    return values


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("deid-convert")
    args = ["convert", *map(str, INPUTS), "--out", str(out), "--deidentify", "--quiet"]
    args += ["--binary", "inline", "--media", "--media-content", "binary", "--jobs", "2"]
    result = CliRunner().invoke(app, args, env={"FHIRIMG_DEID_KEY": KEY})
    assert result.exit_code == 1, result.output  # pydicom's files hold broken ones on purpose
    assert len(list(out.glob("study-*.json"))) > 30
    return out


def test_convert_output_holds_no_identifying_value(identities: set[str], converted: Path) -> None:
    assert leaks(identities, converted) == []


def test_deidentify_files_hold_no_identifying_value(identities: set[str], tmp_path: Path) -> None:
    out = tmp_path / "files"
    result = CliRunner().invoke(
        app,
        ["deidentify", *map(str, INPUTS), "--out", str(out), "--quiet", "--allow-burned-in"],
        env={"FHIRIMG_DEID_KEY": KEY},
    )
    assert result.exit_code == 1, result.output
    assert len(list(out.rglob("*.dcm"))) > 50
    assert leaks(identities, out) == []


def test_the_scan_finds_a_leak(identities: set[str], tmp_path: Path) -> None:
    """The scan itself works: a plain conversion of the same inputs is full of identities."""
    out = tmp_path / "plain"
    result = CliRunner().invoke(app, ["convert", str(SAMPLE), "--out", str(out), "--quiet"])
    assert result.exit_code == 1, result.output
    assert len(leaks(identities, out)) > 20
