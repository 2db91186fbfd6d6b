"""The private Orthanc test server speaks DICOMweb: STOW-RS, QIDO-RS, WADO-RS, basic auth.

Run inside a private network namespace:
    tools/run-in-netns.sh .venv/bin/python -m pytest tests/servers/test_orthanc_server.py -q
Outside one (or without Orthanc installed) these tests are skipped, unless
FHIRIMG_REQUIRE_DICOMWEB=1 is set, in which case they fail.
"""

from __future__ import annotations

import io
import re
import secrets
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from tests.helpers import orthanc_or_skip
from tests.servers.orthanc_server import OrthancServer, in_private_netns, start_orthanc

pytestmark = pytest.mark.dicomweb

DICOM_JSON = "application/dicom+json"
MULTIPART_DICOM = 'multipart/related; type="application/dicom"'


# ---------------------------------------------------------------- multipart helpers


def encode_multipart_related(
    parts: list[bytes], content_type: str = "application/dicom"
) -> tuple[bytes, str]:
    """Body and Content-Type header of a multipart/related message with ``parts``."""
    boundary = "fhirimg-" + secrets.token_hex(16)
    delim = b"--" + boundary.encode("ascii")
    for part in parts:
        if delim in part:  # astronomically unlikely with a random boundary
            raise ValueError("boundary occurs in a part")
    out = io.BytesIO()
    for part in parts:
        out.write(delim + b"\r\n")
        out.write(f"Content-Type: {content_type}\r\n\r\n".encode("ascii"))
        out.write(part)
        out.write(b"\r\n")
    out.write(delim + b"--\r\n")
    header = f'multipart/related; type="{content_type}"; boundary={boundary}'
    return out.getvalue(), header


def _boundary_of(content_type: str) -> str:
    m = re.search(r'boundary\s*=\s*(?:"([^"]+)"|([^;\s]+))', content_type, re.IGNORECASE)
    if not m:
        raise ValueError(f"no boundary in Content-Type: {content_type!r}")
    return m.group(1) or m.group(2)


def decode_multipart_related(body: bytes, content_type: str) -> list[tuple[dict[str, str], bytes]]:
    """Split a multipart body into (headers with lower-case names, content) pairs."""
    delim = b"--" + _boundary_of(content_type).encode("ascii")
    parts: list[tuple[dict[str, str], bytes]] = []
    pos = body.find(delim)
    if pos < 0:
        raise ValueError("first boundary not found")
    while True:
        pos += len(delim)
        if body[pos : pos + 2] == b"--":  # close delimiter
            return parts
        eol = body.find(b"\r\n", pos)  # skip transport padding
        if eol < 0:
            raise ValueError("truncated multipart body")
        start = eol + 2
        end = body.find(b"\r\n" + delim, start)
        if end < 0:
            raise ValueError("close delimiter not found")
        raw_headers, sep, content = body[start:end].partition(b"\r\n\r\n")
        if not sep:  # a part without headers starts with the empty line
            if body[start:end].startswith(b"\r\n"):
                raw_headers, content = b"", body[start + 2 : end]
            else:
                raise ValueError("part without header/body separator")
        headers: dict[str, str] = {}
        for line in raw_headers.decode("latin-1").split("\r\n"):
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        parts.append((headers, content))
        pos = end + 2


def test_multipart_round_trip() -> None:
    parts = [b"\x00\x01--x\r\n", b"", b"plain"]
    body, ctype = encode_multipart_related(parts)
    decoded = decode_multipart_related(body, ctype)
    assert [c for _, c in decoded] == parts
    assert all(h["content-type"] == "application/dicom" for h, _ in decoded)


# ---------------------------------------------------------------- DICOM inputs


def _tiny_secondary_capture() -> bytes:
    """A minimal valid 4x4 8-bit Secondary Capture file, in a study of its own."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = "Test^Tiny"
    ds.PatientID = "FHIRIMG-TINY"
    ds.Modality = "OT"
    ds.ConversionType = "WSD"
    ds.StudyDate = "20240101"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = 4
    ds.Columns = 4
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = bytes(range(16))
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _testdata_bytes(name: str) -> bytes:
    path = get_testdata_file(name)
    assert isinstance(path, str), f"pydicom test file {name} not available"
    return Path(path).read_bytes()


def _input_files() -> list[bytes]:
    files = [_testdata_bytes(n) for n in ("CT_small.dcm", "MR_small.dcm")]
    files.append(_tiny_secondary_capture())
    return files


def _uids(data: bytes) -> tuple[str, str, str]:
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    return str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    with orthanc_or_skip(tmp_path_factory.mktemp("orthanc")) as server:
        yield server


@pytest.fixture(scope="module")
def orthanc_auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    password = secrets.token_urlsafe(12)
    with orthanc_or_skip(tmp_path_factory.mktemp("orthanc-auth"), "fhirimg", password) as server:
        yield server


@pytest.fixture(scope="module")
def stored(orthanc: OrthancServer) -> tuple[list[bytes], httpx.Response]:
    """STOW-RS of three instances in one request; returns the inputs and the response."""
    files = _input_files()
    body, ctype = encode_multipart_related(files)
    response = httpx.post(
        f"{orthanc.dicomweb_url}/studies",
        content=body,
        headers={"Content-Type": ctype, "Accept": DICOM_JSON},
        timeout=30.0,
    )
    return files, response


# ---------------------------------------------------------------- tests


def test_runs_in_private_netns() -> None:
    if not in_private_netns():
        pytest.skip("not in a private network namespace")
    assert [n for _, n in socket.if_nameindex()] == ["lo"]


def test_start_refuses_outside_private_netns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(socket, "if_nameindex", lambda: [(1, "lo"), (2, "eth0")])
    assert not in_private_netns()
    with pytest.raises(RuntimeError, match="private network namespace") as info:
        start_orthanc(tmp_path)
    assert "run-in-netns.sh" in str(info.value)
    assert not (tmp_path / "orthanc.json").exists()


def test_server_basics(orthanc: OrthancServer) -> None:
    assert orthanc.base_url.startswith("http://127.0.0.1:")
    assert orthanc.dicomweb_url == orthanc.base_url + "/dicom-web"
    system = httpx.get(f"{orthanc.base_url}/system").json()
    assert system["Version"] == "1.10.1" or system["Version"].startswith("1.")
    plugins = httpx.get(f"{orthanc.base_url}/plugins").json()
    assert "dicom-web" in plugins
    assert "gdcm" not in plugins


def test_stow_rs_stores_all(
    orthanc: OrthancServer, stored: tuple[list[bytes], httpx.Response]
) -> None:
    files, response = stored
    assert response.status_code == 200, response.text
    result = response.json()
    # Orthanc 1.10 / plugin 1.7 always sends FailedSOPSequence, empty on success.
    failed = result.get("00081198", {}).get("Value", [])
    assert failed == [], f"failed SOP instances: {failed}"
    refs = result["00081199"]["Value"]
    assert len(refs) == len(files)
    stored_sops = {r["00081155"]["Value"][0] for r in refs}
    assert stored_sops == {_uids(f)[2] for f in files}
    for ref in refs:  # RetrieveURLs use our configured base (DicomWeb.Host / Ssl)
        assert ref["00081190"]["Value"][0].startswith(orthanc.dicomweb_url + "/studies/")


def test_qido_rs_finds_study(
    orthanc: OrthancServer, stored: tuple[list[bytes], httpx.Response]
) -> None:
    files, response = stored
    assert response.status_code == 200
    for data in files:
        study_uid = _uids(data)[0]
        r = httpx.get(
            f"{orthanc.dicomweb_url}/studies",
            params={"StudyInstanceUID": study_uid},
            headers={"Accept": DICOM_JSON},
        )
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith(DICOM_JSON)
        found = r.json()
        assert len(found) == 1
        assert found[0]["0020000D"]["Value"] == [study_uid]
    unknown = httpx.get(
        f"{orthanc.dicomweb_url}/studies",
        params={"StudyInstanceUID": "1.2.3.4.5.6.7.8.9"},
        headers={"Accept": DICOM_JSON},
    )
    assert unknown.status_code in (200, 204)
    assert unknown.status_code == 204 or unknown.json() == []


@pytest.mark.parametrize("index", [0, 2])
def test_wado_rs_instance_is_byte_identical(
    orthanc: OrthancServer, stored: tuple[list[bytes], httpx.Response], index: int
) -> None:
    files, response = stored
    assert response.status_code == 200
    original = files[index]
    study, series, sop = _uids(original)
    r = httpx.get(
        f"{orthanc.dicomweb_url}/studies/{study}/series/{series}/instances/{sop}",
        headers={"Accept": MULTIPART_DICOM},
        timeout=30.0,
    )
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("multipart/related")
    parts = decode_multipart_related(r.content, r.headers["content-type"])
    assert len(parts) == 1
    headers, content = parts[0]
    assert headers.get("content-type", "").startswith("application/dicom")
    assert content == original


def test_wado_rs_single_part_accept_is_refused(
    orthanc: OrthancServer, stored: tuple[list[bytes], httpx.Response]
) -> None:
    """Documents the 1.7 plugin quirk: plain `Accept: application/dicom` gets 400."""
    study, series, sop = _uids(stored[0][0])
    r = httpx.get(
        f"{orthanc.dicomweb_url}/studies/{study}/series/{series}/instances/{sop}",
        headers={"Accept": "application/dicom"},
    )
    assert r.status_code == 400


def test_wado_rs_metadata_is_dicom_json(
    orthanc: OrthancServer, stored: tuple[list[bytes], httpx.Response]
) -> None:
    files, response = stored
    assert response.status_code == 200
    study, series, sop = _uids(files[1])
    r = httpx.get(
        f"{orthanc.dicomweb_url}/studies/{study}/series/{series}/instances/{sop}/metadata",
        headers={"Accept": DICOM_JSON},
    )
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith(DICOM_JSON)
    meta = r.json()
    assert isinstance(meta, list)
    assert len(meta) == 1
    item = meta[0]
    assert item["00080018"] == {"vr": "UI", "Value": [sop]}
    assert item["0020000D"]["Value"] == [study]
    assert item["00080060"]["Value"] == ["MR"]
    # Study-level metadata lists every instance of the study.
    r2 = httpx.get(
        f"{orthanc.dicomweb_url}/studies/{study}/metadata", headers={"Accept": DICOM_JSON}
    )
    assert r2.status_code == 200
    assert [i["00080018"]["Value"][0] for i in r2.json()] == [sop]


def test_basic_auth_required(orthanc_auth: OrthancServer) -> None:
    url = f"{orthanc_auth.dicomweb_url}/studies"
    anonymous = httpx.get(url, headers={"Accept": DICOM_JSON})
    assert anonymous.status_code == 401
    wrong = httpx.get(url, headers={"Accept": DICOM_JSON}, auth=("fhirimg", "wrong-password"))
    assert wrong.status_code == 401
    assert orthanc_auth.auth is not None
    ok = httpx.get(url, headers={"Accept": DICOM_JSON}, auth=orthanc_auth.auth)
    assert ok.status_code in (200, 204), ok.text


def test_basic_auth_stow_and_retrieve(orthanc_auth: OrthancServer) -> None:
    data = _tiny_secondary_capture()
    study, series, sop = _uids(data)
    body, ctype = encode_multipart_related([data])
    headers = {"Content-Type": ctype, "Accept": DICOM_JSON}
    denied = httpx.post(f"{orthanc_auth.dicomweb_url}/studies", content=body, headers=headers)
    assert denied.status_code == 401
    with orthanc_auth.client() as client:
        r = client.post("/dicom-web/studies", content=body, headers=headers)
        assert r.status_code == 200, r.text
        got = client.get(
            f"/dicom-web/studies/{study}/series/{series}/instances/{sop}",
            headers={"Accept": MULTIPART_DICOM},
        )
        assert got.status_code == 200
        [(_, content)] = decode_multipart_related(got.content, got.headers["content-type"])
        assert content == data
