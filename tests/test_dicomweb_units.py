"""Unit tests of the DICOMweb path without a server: multipart codec, DICOM JSON records, STOW
answers, Endpoint detection, query building."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tracemalloc
from pathlib import Path

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydicom import dcmread

from fhirimg.dicomweb import client as client_module
from fhirimg.dicomweb.client import (
    DicomwebClient,
    MultipartFiles,
    StowResult,
    content_type_params,
    decode_multipart,
    encode_multipart,
    scan_file,
)
from fhirimg.dicomweb.records import StudyQuery, qido_date, record_from_json
from fhirimg.dicomweb.store_plan import endpoint_addresses
from fhirimg.errors import ConfigError, DicomwebError
from fhirimg.model import InstanceRecord
from fhirimg.scan import read_file
from tests.helpers import SAMPLE


@given(st.lists(st.binary(max_size=300), max_size=6))
def test_multipart_round_trip(parts: list[bytes]) -> None:
    body, ctype = encode_multipart(parts)
    decoded = decode_multipart(body, ctype)
    assert [content for _, content in decoded] == parts
    assert all(h["content-type"] == "application/dicom" for h, _ in decoded)


def test_multipart_part_containing_crlf_dashes() -> None:
    parts = [b"\r\n--\r\n--fhirimg-\r\n", b"--"]
    body, ctype = encode_multipart(parts)
    assert [c for _, c in decode_multipart(body, ctype)] == parts


def test_multipart_preamble_padding_epilogue_and_quoted_boundary() -> None:
    body = (
        b"preamble text\r\n--b:1  \r\nContent-Type: application/dicom\r\nX-A: 1\r\n\r\nDATA"
        b"\r\n--b:1\r\n\r\nNOHEADERS\r\n--b:1--\r\nepilogue"
    )
    parts = decode_multipart(body, 'multipart/related; type="application/dicom"; boundary="b:1"')
    assert parts == [
        ({"content-type": "application/dicom", "x-a": "1"}, b"DATA"),
        ({}, b"NOHEADERS"),
    ]


@pytest.mark.parametrize(
    ("body", "ctype"),
    [
        (b"x", "application/dicom"),
        (b"--b\r\nContent-Type: a\r\n\r\nDATA", "multipart/related; boundary=b"),
        (b"nothing here", "multipart/related; boundary=b"),
    ],
)
def test_multipart_malformed(body: bytes, ctype: str) -> None:
    with pytest.raises(DicomwebError):
        decode_multipart(body, ctype)


def test_content_type_params() -> None:
    assert content_type_params('multipart/related; boundary="a\\"b"; type=x') == (
        "multipart/related",
        {"boundary": 'a"b', "type": "x"},
    )


def test_stow_result_reads_failures_and_empty_failed_sequence() -> None:
    body = {
        "00081198": {
            "vr": "SQ",
            "Value": [
                {
                    "00081155": {"vr": "UI", "Value": ["1.2.3"]},
                    "00081197": {"vr": "US", "Value": [0xA900]},
                }
            ],
        },
        "00081199": {"vr": "SQ", "Value": [{"00081155": {"vr": "UI", "Value": ["1.2.4"]}}]},
    }
    result = StowResult.from_json(202, body)
    assert result.stored == ["1.2.4"]
    assert result.failed == [("1.2.3", 0xA900)]
    assert StowResult.from_json(200, {"00081198": {"vr": "SQ"}}).failed == []


def _pn(alpha: str, ideo: str = "", phon: str = "") -> dict[str, object]:
    value = {"Alphabetic": alpha}
    if ideo:
        value["Ideographic"] = ideo
    if phon:
        value["Phonetic"] = phon
    return {"vr": "PN", "Value": [value]}


def test_record_from_json_values() -> None:
    ds = {
        "0020000D": {"vr": "UI", "Value": ["1.2"]},
        "0020000E": {"vr": "UI", "Value": ["1.2.3"]},
        "00080018": {"vr": "UI", "Value": ["1.2.3.4"]},
        "00080016": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.2"]},
        "00100010": _pn("Yamada^Tarou", "山田^太郎", "やまだ^たろう"),
        "00081050": {"vr": "PN", "Value": [{"Alphabetic": "A^B"}, {"Alphabetic": "C^D"}]},
        "00080008": {"vr": "CS", "Value": ["ORIGINAL", "PRIMARY"]},
        "00200013": {"vr": "IS", "Value": [12]},
        "00280008": {"vr": "IS", "Value": ["4"]},
        "00280010": {"vr": "US", "Value": [32]},
        "00280011": {"vr": "US", "Value": [16]},
        "00280100": {"vr": "US", "Value": [8]},
        "00100020": {"vr": "LO"},
        "00080051": {
            "vr": "SQ",
            "Value": [
                {
                    "00400032": {"vr": "UT", "Value": ["1.2.9"]},
                    "00400033": {"vr": "CS", "Value": ["ISO"]},
                }
            ],
        },
        "00081032": {
            "vr": "SQ",
            "Value": [{"00080100": {"vr": "SH", "Value": ["X"]}, "00080104": {"vr": "LO"}}],
        },
        "7FE00010": {"vr": "OW", "BulkDataURI": "http://pacs/bulk"},
    }
    rec = record_from_json(ds, "http://pacs/x")
    assert isinstance(rec, InstanceRecord)
    assert rec.patient_name == "Yamada^Tarou=山田^太郎=やまだ^たろう"
    assert rec.performing_physicians == ("A^B", "C^D")
    assert rec.image_type == ("ORIGINAL", "PRIMARY")
    assert (rec.instance_number, rec.number_of_frames, rec.rows, rec.columns) == ("12", "4", 32, 16)
    assert rec.has_pixels
    assert rec.patient_id is None
    assert rec.accession_issuer is not None
    assert rec.accession_issuer.universal == "1.2.9"
    assert rec.procedure_codes[0].value == "X"
    assert rec.procedure_codes[0].meaning is None


def test_record_from_json_missing_uid_is_a_problem() -> None:
    problem = record_from_json({"0020000D": {"vr": "UI", "Value": ["1.2"]}}, "http://pacs/y")
    assert not isinstance(problem, InstanceRecord)
    assert problem.status == "failed"
    assert "SOP Instance UID" in problem.reason


def test_record_from_pydicom_json_equals_file_record() -> None:
    """pydicom's own DICOM JSON of every sample file gives the record read_file gives (but the
    transfer syntax, which is file meta, and the path, size and reading notes)."""
    files = [p for p in sorted(SAMPLE.rglob("*")) if p.is_file()]
    compared = 0
    for path in files:
        expected = read_file(str(path))
        if not isinstance(expected, InstanceRecord):
            continue
        ds = dcmread(path, force=True, stop_before_pixels=True)
        dataset = json.loads(ds.to_json(bulk_data_threshold=1 << 30, suppress_invalid_tags=True))
        got = record_from_json(dataset, "x")
        assert isinstance(got, InstanceRecord), path
        ignore = {"path", "size", "warnings", "transfer_syntax_uid"}
        if expected.instance_number == "1A":  # a malformed IS that JSON cannot carry
            ignore.add("instance_number")
        a, b = dataclasses.asdict(expected), dataclasses.asdict(got)
        assert {k: a[k] for k in a if k not in ignore} == {k: b[k] for k in b if k not in ignore}, (
            path
        )
        compared += 1
    assert compared == 20


def test_endpoint_addresses_ignores_other_types() -> None:
    bundle = {
        "entry": [
            {
                "fullUrl": "urn:uuid:1",
                "resource": {
                    "resourceType": "Endpoint",
                    "connectionType": {"code": "dicom-qido-rs"},
                    "address": "http://pacs/dw",
                },
            },
            {
                "resource": {
                    "resourceType": "ImagingStudy",
                    "endpoint": [{"reference": "urn:uuid:1"}],
                }
            },
        ]
    }
    assert endpoint_addresses(bundle) == set()


def test_study_query_params() -> None:
    assert StudyQuery().params() == {}
    q = StudyQuery(since="20240101", patient_id="P1", filters=(("StudyDescription", "*HEAD*"),))
    assert q.params() == {"StudyDate": "20240101-", "PatientID": "P1", "StudyDescription": "*HEAD*"}
    with pytest.raises(ConfigError):
        qido_date("yesterday")


def test_sample_data_is_there() -> None:
    assert Path(SAMPLE).is_dir()


# --------------------------------------------------------------------------- streamed STOW-RS bodies
def _files(folder: Path, contents: list[bytes]) -> list[Path]:
    paths = []
    for i, data in enumerate(contents):
        path = folder / f"{i}.dcm"
        path.write_bytes(data)
        paths.append(path)
    return paths


@pytest.mark.parametrize("chunk", [1, 7, client_module.CHUNK])
def test_streamed_body_is_the_encoded_body(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int
) -> None:
    monkeypatch.setattr(client_module, "CHUNK", chunk)
    contents = [b"", b"DICM" * 10, bytes(range(256)) * 3, b"\r\n--x\r\n"]
    parts = [scan_file(p, "b0und")[0] for p in _files(tmp_path, contents)]
    body = MultipartFiles(parts, "b0und")
    expected, ctype = encode_multipart(contents, boundary="b0und")
    assert b"".join(body) == expected
    assert b"".join(body) == expected  # again: a retried request sends the same bytes
    assert body.length == len(expected)
    assert body.content_type == ctype
    assert [data for _, data in decode_multipart(expected, ctype)] == contents


def test_scan_file_finds_the_boundary_across_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client_module, "CHUNK", 4)
    (path,) = _files(tmp_path, [b"abcdef--fhirimg-xyz...."])  # "--fhirimg-xyz" spans 4 chunks
    part, clash = scan_file(path, "fhirimg-xyz")
    assert clash
    assert (part.size, part.sha256) == (23, hashlib.sha256(path.read_bytes()).hexdigest())
    assert not scan_file(path, "fhirimg-xyzz")[1]


@pytest.mark.parametrize("change", [b"same size, other", b"longer than it was", b"short"])
def test_a_file_changed_after_its_scan_fails_before_its_last_chunk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: bytes
) -> None:
    monkeypatch.setattr(client_module, "CHUNK", 4)
    (path,) = _files(tmp_path, [b"the scanned file"])
    body = MultipartFiles([scan_file(path, "b")[0]], "b")
    path.write_bytes(change)
    sent: list[bytes] = []
    with pytest.raises(DicomwebError, match="changed while it was being stored"):
        sent.extend(body)
    assert change not in b"".join(sent)  # the changed file is never sent whole
    assert b"--b--" not in b"".join(sent)  # nor is the body complete


class _StowSink(httpx.BaseTransport):
    """Reads a STOW-RS request body chunk by chunk (like a socket would), keeping only its hash."""

    def __init__(self) -> None:
        self.digest = hashlib.sha256()
        self.headers: httpx.Headers | None = None
        self.largest_chunk = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.headers = request.headers
        assert isinstance(request.stream, httpx.SyncByteStream)
        for chunk in request.stream:
            self.digest.update(chunk)
            self.largest_chunk = max(self.largest_chunk, len(chunk))
        stored = {"00081199": {"vr": "SQ", "Value": []}}
        return httpx.Response(200, json=stored, headers={"Content-Type": "application/dicom+json"})


def test_store_files_streams_in_bounded_memory(tmp_path: Path) -> None:
    """Three 8 MB instances in one request: memory stays near one chunk, not the batch."""
    size = 8 * 1024 * 1024
    paths = _files(tmp_path, [bytes([i]) * size for i in range(3)])
    parts = [scan_file(p, "fhirimg-b")[0] for p in paths]
    body = MultipartFiles(parts, "fhirimg-b")
    sink = _StowSink()
    with DicomwebClient("http://pacs.invalid/dicom-web", transport=sink) as client:
        tracemalloc.start()
        try:
            answer = client.store_files(body)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert answer.status == 200
    assert sink.headers is not None
    assert sink.headers["Content-Length"] == str(body.length)
    assert "Transfer-Encoding" not in sink.headers
    expected = hashlib.sha256()
    for chunk in body:
        expected.update(chunk)
    assert sink.digest.hexdigest() == expected.hexdigest()
    assert sink.largest_chunk <= client_module.CHUNK + 1024
    assert peak < 4 * client_module.CHUNK, peak  # the batch is 24 MB


def test_dry_run_plans_count_as_fine() -> None:
    """push --dicomweb --dry-run: instances it would store do not make the study a failure."""
    from fhirimg.dicomweb.store_results import StudyStore

    planned = StudyStore(
        "b.json", Path("b.json"), "1.2.3", instances=3, has_endpoint=True, planned=3
    )
    assert planned.ok
    short = StudyStore("b.json", Path("b.json"), "1.2.3", instances=3, has_endpoint=True, planned=2)
    assert not short.ok
