"""Unit tests of the DICOMweb path without a server: multipart codec, DICOM JSON records, STOW
answers, Endpoint detection, query building."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydicom import dcmread

from fhirimg.dicomweb.client import (
    DicomwebError,
    StowResult,
    content_type_params,
    decode_multipart,
    encode_multipart,
)
from fhirimg.dicomweb.records import StudyQuery, qido_date, record_from_json
from fhirimg.dicomweb.store import endpoint_addresses
from fhirimg.errors import ConfigError
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
