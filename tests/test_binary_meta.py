"""A Part 10 file whose File Meta names another instance than its dataset (issue 11 fuzz find).

UID-remapping tools that forget group 0002 write such files. The ImagingStudy names the dataset's
SOP Instance UID (0008,0018); the Binary linked from that instance must hold that instance
(validate's img-binary-sop-instance), so it gets a File Meta group saying so, with the dataset
bytes unchanged, and the file's report entry says what was done.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import pydicom
from typer.testing import CliRunner

from fhirimg.cli import app
from fhirimg.images.binary import dicom_source
from tests.helpers import SAMPLE, bundles, load, resources


def _contradicting(tmp_path: Path) -> tuple[Path, str]:
    """A copy of a sample CT file whose (0002,0003) differs from its (0008,0018) in one digit
    (pydicom would mend the File Meta on writing, so the bytes are edited)."""
    src = sorted((SAMPLE / "study_a_ct").glob("*.dcm"))[0]
    uid = str(pydicom.dcmread(src, stop_before_pixels=True).SOPInstanceUID)
    raw = bytearray(src.read_bytes())
    at = raw.index(b"\x02\x00\x03\x00UI") + 8  # Explicit VR: tag, VR, 2-byte length
    assert raw[at : at + len(uid)] == uid.encode()
    last = at + len(uid) - 1
    raw[last] = ord("1") if raw[last] != ord("1") else ord("2")
    folder = tmp_path / "in"
    folder.mkdir()
    path = folder / "remapped.dcm"
    path.write_bytes(bytes(raw))
    return path, uid


def test_the_binary_names_the_datasets_instance_and_validates(tmp_path: Path) -> None:
    path, uid = _contradicting(tmp_path)
    out = tmp_path / "out"
    runner = CliRunner()
    result = runner.invoke(
        app, ["convert", str(path.parent), "--out", str(out), "--binary", "inline", "-q"]
    )
    assert result.exit_code == 0, result.output
    (bundle,) = bundles(out).values()
    (binary,) = resources(bundle, "Binary")
    data = base64.b64decode(binary["data"])
    fixed = pydicom.dcmread(io.BytesIO(data))
    assert fixed.file_meta.MediaStorageSOPInstanceUID == uid
    assert str(fixed.SOPInstanceUID) == uid
    # the dataset bytes are the file's, unchanged, after the new File Meta group
    source = dicom_source(str(path), str(fixed.SOPClassUID), uid)
    assert source.mended
    raw = path.read_bytes()
    assert data.endswith(raw[source.skip :])
    report = load(out / "report.json")
    (entry,) = report["files"]
    assert any("File Meta" in w for w in entry.get("warnings", [])) or any(
        "File Meta" in w for s in report["studies"] for w in s.get("warnings", [])
    )
    checked = runner.invoke(
        app, ["validate", *map(str, out.glob("study-*.json")), "--layers", "all", "--strict", "-q"]
    )
    assert checked.exit_code == 0, checked.output


def test_a_file_that_agrees_with_itself_is_sent_as_it_is(tmp_path: Path) -> None:
    src = sorted((SAMPLE / "study_a_ct").glob("*.dcm"))[0]
    ds = pydicom.dcmread(src, stop_before_pixels=True)
    source = dicom_source(str(src), str(ds.SOPClassUID), str(ds.SOPInstanceUID))
    assert source.exact
    assert not source.mended
    assert b"".join(source.chunks()) == src.read_bytes()
