"""Write the validate test corpus: valid bundles, and broken copies with exactly one defect each.

Run from the repository root (the files it writes are committed; rerun after changing it)::

    python tests/data/validate/make_corpus.py

``manifest.json`` lists, for each file, its FHIR release and the (location, layer) pairs that the
validator must report as an error or a warning. Every broken bundle starts as ``valid_r4.json`` or
``valid_r5.json`` with one mutation, so a finding elsewhere would be a false alarm of the validator.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DCM = "http://dicom.nema.org/resources/ontology/DCM"
EXT = "https://fhirimg.dev/fhir/StructureDefinition/instance-binary"
STUDY_UID = "1.2.826.0.1.3680043.8.498.1"
SERIES_UID = "1.2.826.0.1.3680043.8.498.1.1"
INSTANCE_UIDS = ["1.2.826.0.1.3680043.8.498.1.1.1", "1.2.826.0.1.3680043.8.498.1.1.2"]
CT_IMAGE = "urn:oid:1.2.840.10008.5.1.4.1.1.2"
U = {
    name: f"urn:uuid:{n:08x}-0000-4000-8000-{n:012x}"
    for n, name in enumerate(
        ["patient", "endpoint", "binary", "study", "media", "binary2", "png"], 1
    )
}


def _element(element: int, vr: bytes, value: bytes) -> bytes:
    """One File Meta element (group 0002, Explicit VR Little Endian, PS3.5 section 7.1.2)."""
    if len(value) % 2:
        value += b"\0"  # UI values are padded to even length with a NUL
    if vr == b"OB":
        return struct.pack("<HH", 2, element) + vr + b"\0\0" + struct.pack("<I", len(value)) + value
    return struct.pack("<HH", 2, element) + vr + struct.pack("<H", len(value)) + value


def dicom_bytes(sop_instance_uid: str) -> bytes:
    """A tiny "DICOM file": 128-byte preamble, DICM, the File Meta Information naming the
    instance (PS3.10 section 7.1), and no data set."""
    rest = (
        _element(1, b"OB", b"\0\1")
        + _element(2, b"UI", CT_IMAGE.removeprefix("urn:oid:").encode())
        + _element(3, b"UI", sop_instance_uid.encode())
        + _element(0x10, b"UI", b"1.2.840.10008.1.2.1")
    )
    return bytes(128) + b"DICM" + _element(0, b"UL", struct.pack("<I", len(rest))) + rest


DICOM_BYTES = dicom_bytes(INSTANCE_UIDS[0])
DATA = base64.b64encode(DICOM_BYTES).decode()
DATA2 = base64.b64encode(dicom_bytes(INSTANCE_UIDS[1])).decode()
# A rendered image (a PNG signature stands for one: only the bytes' size and hash are checked).
PNG_BYTES = b"\x89PNG\r\n\x1a\n" + bytes(24)
PNG_SHA1 = base64.b64encode(hashlib.sha1(PNG_BYTES).digest()).decode()


def entry(name: str, resource: dict[str, Any], method: str, url: str, **req: str) -> dict[str, Any]:
    return {
        "fullUrl": U[name],
        "resource": resource,
        "request": {"method": method, "url": url, **req},
    }


def instance(i: int, binary_ref: str) -> dict[str, Any]:
    return {
        "extension": [{"url": EXT, "valueReference": {"reference": binary_ref}}],
        "uid": INSTANCE_UIDS[i],
        "sopClass": {"system": "urn:ietf:rfc:3986", "code": CT_IMAGE},
        "number": i + 1,
    }


def valid_r4() -> dict[str, Any]:
    patient = {
        "resourceType": "Patient",
        "identifier": [{"system": "urn:oid:1.2.3.4", "value": "MRN1"}],
        "name": [{"family": "Doe", "given": ["Jane"]}],
        "gender": "female",
        "birthDate": "1970-01-01",
    }
    endpoint = {
        "resourceType": "Endpoint",
        "identifier": [{"system": "https://fhirimg.dev/endpoint", "value": "pacs"}],
        "status": "active",
        "connectionType": {
            "system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type",
            "code": "dicom-wado-rs",
        },
        "payloadType": [{"text": "DICOM WADO-RS"}],
        "payloadMimeType": ["application/dicom"],
        "address": "https://pacs.example.org/dicomweb",
    }
    binary = {
        "resourceType": "Binary",
        "id": "b1",
        "contentType": "application/dicom",
        "data": DATA,
    }
    binary2 = {
        "resourceType": "Binary",
        "id": "b2",
        "contentType": "application/dicom",
        "data": DATA2,
    }
    png = {
        "resourceType": "Binary",
        "id": "b3",
        "contentType": "image/png",
        "data": base64.b64encode(PNG_BYTES).decode(),
    }
    study = {
        "resourceType": "ImagingStudy",
        "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{STUDY_UID}"}],
        "status": "available",
        "modality": [{"system": DCM, "code": "CT"}],
        "subject": {"reference": U["patient"]},
        "started": "2020-01-02T10:11:12+01:00",
        "endpoint": [{"reference": U["endpoint"]}],
        "numberOfSeries": 1,
        "numberOfInstances": 2,
        "description": "CT head",
        "series": [
            {
                "uid": SERIES_UID,
                "number": 1,
                "modality": {"system": DCM, "code": "CT"},
                "numberOfInstances": 2,
                "instance": [instance(0, U["binary"]), instance(1, "Binary/b2")],
            }
        ],
    }
    media = {
        "resourceType": "Media",
        "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{INSTANCE_UIDS[0]}"}],
        "status": "completed",
        "type": {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/media-type", "code": "image"}
            ]
        },
        "modality": {"coding": [{"system": DCM, "code": "CT"}]},
        "subject": {"reference": U["patient"]},
        "partOf": [{"reference": U["study"]}],
        "content": {
            "contentType": "image/png",
            "url": U["png"],
            "size": len(PNG_BYTES),
            "hash": PNG_SHA1,
        },
    }
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            entry(
                "patient", patient, "POST", "Patient", ifNoneExist="identifier=urn:oid:1.2.3.4|MRN1"
            ),
            entry(
                "endpoint",
                endpoint,
                "POST",
                "Endpoint",
                ifNoneExist="identifier=https://fhirimg.dev/endpoint|pacs",
            ),
            entry("binary", binary, "PUT", "Binary/b1"),
            entry(
                "study", study, "PUT", f"ImagingStudy?identifier=urn:dicom:uid|urn:oid:{STUDY_UID}"
            ),
            entry(
                "media", media, "PUT", f"Media?identifier=urn:dicom:uid|urn:oid:{INSTANCE_UIDS[0]}"
            ),
            entry("binary2", binary2, "PUT", "Binary/b2"),
            entry("png", png, "PUT", "Binary/b3"),
        ],
    }


def valid_r5() -> dict[str, Any]:
    b = valid_r4()
    e = b["entry"]
    e[1]["resource"] = {
        "resourceType": "Endpoint",
        "identifier": [{"system": "https://fhirimg.dev/endpoint", "value": "pacs"}],
        "status": "active",
        "connectionType": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type",
                        "code": "dicom-wado-rs",
                    }
                ]
            }
        ],
        "payload": [{"type": [{"text": "DICOM WADO-RS"}], "mimeType": ["application/dicom"]}],
        "address": "https://pacs.example.org/dicomweb",
    }
    study = e[3]["resource"]
    study["modality"] = [{"coding": [{"system": DCM, "code": "CT"}]}]
    study["series"][0]["modality"] = {"coding": [{"system": DCM, "code": "CT"}]}
    e[4] = {
        "fullUrl": U["media"],
        "resource": {
            "resourceType": "DocumentReference",
            "status": "current",
            "subject": {"reference": U["patient"]},
            "content": [
                {
                    "attachment": {
                        "contentType": "image/png",
                        "url": U["png"],
                        "size": str(len(PNG_BYTES)),  # integer64: a JSON string in R5
                        "hash": PNG_SHA1,
                    }
                }
            ],
        },
        "request": {"method": "POST", "url": "DocumentReference"},
    }
    e.append(
        {
            "fullUrl": "urn:uuid:00000008-0000-4000-8000-000000000008",
            "resource": {
                "resourceType": "ImagingSelection",
                "status": "available",
                "subject": {"reference": U["patient"]},
                "code": {"text": "key image"},
                "derivedFrom": [{"reference": U["study"]}],
                "studyUid": STUDY_UID,
                "seriesUid": SERIES_UID,
                "instance": [
                    {
                        "uid": INSTANCE_UIDS[0],
                        "sopClass": {"system": "urn:ietf:rfc:3986", "code": CT_IMAGE},
                    }
                ],
            },
            "request": {"method": "POST", "url": "ImagingSelection"},
        }
    )
    return b


Mutation = Callable[[dict[str, Any]], None]
P, EP, BIN, ST, MED = 0, 1, 2, 3, 4


def res(b: dict[str, Any], i: int) -> dict[str, Any]:
    r: dict[str, Any] = b["entry"][i]["resource"]
    return r


def loc(i: int, rest: str = "") -> str:
    return f"Bundle.entry[{i}].resource{rest}"


def setter(i: int, path: str, value: Any) -> Mutation:
    def apply(b: dict[str, Any]) -> None:
        node: Any = res(b, i)
        keys: list[Any] = [int(k) if k.isdigit() else k for k in path.split(".")]
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = value

    return apply


def deleter(i: int, path: str) -> Mutation:
    def apply(b: dict[str, Any]) -> None:
        node: Any = res(b, i)
        keys = path.split(".")
        for k in keys[:-1]:
            node = node[int(k) if k.isdigit() else k]
        del node[keys[-1]]

    return apply


def on_bundle(fn: Callable[[dict[str, Any]], None]) -> Mutation:
    return fn


S0 = ".series[0]"
I0 = ".series[0].instance[0]"
BROKEN: list[tuple[str, str, Mutation, list[tuple[str, str]]]] = [
    # layer 1: JSON
    ("json_null", "r4", setter(ST, "description", None), [(loc(ST, ".description"), "json")]),
    ("json_empty_array", "r4", setter(ST, "modality", []), [(loc(ST, ".modality"), "json")]),
    ("json_empty_object", "r4", setter(P, "meta", {}), [(loc(P, ".meta"), "json")]),
    ("json_empty_string", "r4", setter(ST, "description", ""), [(loc(ST, ".description"), "json")]),
    (
        "json_string_for_integer",
        "r4",
        setter(ST, "numberOfSeries", "1"),
        [(loc(ST, ".numberOfSeries"), "json")],
    ),
    ("json_padded_code", "r4", setter(ST, "status", " available"), [(loc(ST, ".status"), "json")]),
    (
        "json_number_for_string",
        "r4",
        setter(ST, "description", 42),
        [(loc(ST, ".description"), "json")],
    ),
    (
        "json_object_for_array",
        "r4",
        setter(ST, "endpoint", {"reference": U["endpoint"]}),
        [(loc(ST, ".endpoint"), "json")],
    ),
    # layer 2: models
    ("model_choice_twice", "r4", setter(P, "deceasedBoolean", False), []),  # filled below
    # layer 3: schema
    ("schema_bad_code", "r4", setter(ST, "status", "done"), [(loc(ST, ".status"), "schema")]),
    (
        "schema_bad_method",
        "r4",
        on_bundle(lambda b: b["entry"][0]["request"].update(method="FETCH")),
        [("Bundle.entry[0].request.method", "schema")],
    ),
    (
        "schema_unknown_element",
        "r4",
        setter(ST, "series.0.colour", "red"),
        [(loc(ST, S0 + ".colour"), "schema")],
    ),
    ("schema_id_too_long", "r4", setter(P, "id", "a" * 65), [(loc(P, ".id"), "schema")]),
    (
        "schema_bad_base64",
        "r4",
        setter(BIN, "data", "not base64!"),
        [(loc(BIN, ".data"), "schema")],
    ),
    ("schema_missing_required", "r4", deleter(ST, "subject"), [(loc(ST, ".subject"), "schema")]),
    (
        "schema_datetime_no_tz",
        "r4",
        setter(ST, "started", "2020-01-02T10:11:12"),
        [(loc(ST, ".started"), "schema")],
    ),
    (
        "schema_negative_unsigned",
        "r4",
        setter(ST, "series.0.number", -1),
        [(loc(ST, S0 + ".number"), "schema")],
    ),
    # layer 4: invariants
    (
        "inv_per1",
        "r4",
        setter(P, "name.0.period", {"start": "2020-01-01", "end": "2019-01-01"}),
        [(loc(P, ".name[0].period"), "invariant")],
    ),
    (
        "inv_ext1",
        "r4",
        setter(
            ST,
            "extension",
            [
                {
                    "url": "https://example.org/x",
                    "valueString": "a",
                    "extension": [{"url": "y", "valueString": "b"}],
                }
            ],
        ),
        [(loc(ST, ".extension[0]"), "invariant")],
    ),
    (
        "inv_att1",
        "r4",
        setter(MED, "content", {"data": DATA}),
        [(loc(MED, ".content"), "invariant")],
    ),
    ("inv_bdl1", "r4", on_bundle(lambda b: b.update(total=6)), [("Bundle", "invariant")]),
    (
        "inv_bdl8",
        "r4",
        on_bundle(
            lambda b: b["entry"][1].update(fullUrl="https://x.org/fhir/Endpoint/e1/_history/1")
        ),
        [("Bundle.entry[1]", "invariant")],
    ),
    (
        "inv_ref1",
        "r4",
        setter(ST, "referrer", {"reference": "#nobody"}),
        [(loc(ST, ".referrer"), "invariant")],
    ),
    # layer 5: bundle integrity
    (
        "bundle_duplicate_fullurl",
        "r4",
        on_bundle(lambda b: b["entry"][5].update(fullUrl=U["binary"])),
        [("Bundle.entry[5].fullUrl", "bundle")],
    ),
    (
        "bundle_dangling_uuid",
        "r4",
        setter(ST, "subject", {"reference": "urn:uuid:00000099-0000-4000-8000-000000000099"}),
        [(loc(ST, ".subject.reference"), "bundle")],
    ),
    (
        "bundle_wrong_target_type",
        "r4",
        setter(ST, "subject", {"reference": U["endpoint"]}),
        [(loc(ST, ".subject.reference"), "bundle")],
    ),
    (
        "bundle_wrong_relative_type",
        "r4",
        setter(ST, "endpoint", [{"reference": "Patient/p1"}]),
        [(loc(ST, ".endpoint[0].reference"), "bundle")],
    ),
    (
        "bundle_missing_request",
        "r4",
        on_bundle(lambda b: b["entry"][1].pop("request")),
        [("Bundle.entry[1].request", "bundle")],
    ),
    (
        "bundle_missing_url",
        "r4",
        on_bundle(lambda b: b["entry"][1]["request"].pop("url")),
        [("Bundle.entry[1].request.url", "bundle")],
    ),
    (
        "bundle_bad_conditional_url",
        "r4",
        on_bundle(lambda b: b["entry"][3]["request"].update(url="ImagingStudy?identifier")),
        [("Bundle.entry[3].request.url", "bundle")],
    ),
    (
        "bundle_conditional_url_space",
        "r4",
        on_bundle(lambda b: b["entry"][3]["request"].update(url="ImagingStudy?identifier=a b")),
        [("Bundle.entry[3].request.url", "bundle")],
    ),
    (
        "bundle_bad_ifnoneexist",
        "r4",
        on_bundle(lambda b: b["entry"][0]["request"].update(ifNoneExist="Patient?identifier=x|y")),
        [("Bundle.entry[0].request.ifNoneExist", "bundle")],
    ),
    ("bundle_put_id_mismatch", "r4", setter(BIN, "id", "other"), [(loc(BIN, ".id"), "bundle")]),
    (
        "bundle_url_type_mismatch",
        "r4",
        on_bundle(lambda b: b["entry"][0]["request"].update(url="Practitioner")),
        [("Bundle.entry[0].request.url", "bundle")],
    ),
    (
        "bundle_bad_fullurl",
        "r4",
        on_bundle(lambda b: b["entry"][1].update(fullUrl="urn:uuid:NOT-A-UUID")),
        [("Bundle.entry[1].fullUrl", "bundle")],
    ),
    # layer 6: imaging
    (
        "imaging_uid_leading_zero",
        "r4",
        setter(ST, "series.0.uid", "1.2.03.4"),
        [(loc(ST, S0 + ".uid"), "imaging")],
    ),
    (
        "imaging_uid_too_long",
        "r4",
        setter(ST, "series.0.instance.0.uid", "1." + "2" * 63),
        [(loc(ST, I0 + ".uid"), "imaging")],
    ),
    (
        "imaging_uid_letters",
        "r4",
        setter(ST, "series.0.instance.1.uid", "1.2.abc"),
        [(loc(ST, ".series[0].instance[1].uid"), "imaging")],
    ),
    (
        "imaging_study_uid_no_urn_oid",
        "r4",
        setter(ST, "identifier.0.value", STUDY_UID),
        [(loc(ST, ".identifier[0].value"), "imaging")],
    ),
    (
        "imaging_study_uid_wrong_system",
        "r4",
        setter(ST, "identifier.0.system", "urn:ietf:rfc:3986"),
        [(loc(ST, ".identifier[0].system"), "imaging")],
    ),
    (
        "imaging_count_series",
        "r4",
        setter(ST, "numberOfSeries", 0),
        [(loc(ST, ".numberOfSeries"), "imaging")],
    ),
    (
        "imaging_count_instances",
        "r4",
        setter(ST, "numberOfInstances", 1),
        [(loc(ST, ".numberOfInstances"), "imaging")],
    ),
    (
        "imaging_count_series_instances",
        "r4",
        setter(ST, "series.0.numberOfInstances", 5),
        [(loc(ST, S0 + ".numberOfInstances"), "imaging")],
    ),
    (
        "imaging_modality_system",
        "r4",
        setter(ST, "series.0.modality", {"system": "http://example.org/modality", "code": "CT"}),
        [(loc(ST, S0 + ".modality.system"), "imaging")],
    ),
    (
        "imaging_sop_class_system",
        "r4",
        setter(ST, "series.0.instance.0.sopClass", {"system": "urn:dicom:uid", "code": CT_IMAGE}),
        [(loc(ST, I0 + ".sopClass.system"), "imaging")],
    ),
    (
        "imaging_duplicate_instance",
        "r4",
        setter(ST, "series.0.instance.1.uid", INSTANCE_UIDS[0]),
        [(loc(ST, ".series[0].instance[1].uid"), "imaging")],
    ),
    (
        "imaging_binary_link_dangling",
        "r4",
        setter(
            ST,
            "series.0.instance.0.extension.0.valueReference",
            {"reference": "urn:uuid:00000098-0000-4000-8000-000000000098"},
        ),
        [(loc(ST, I0 + ".extension[0].valueReference.reference"), "imaging")],
    ),
    (
        "imaging_binary_link_missing_file",
        "r4",
        setter(ST, "series.0.instance.1.extension.0.valueReference", {"reference": "Binary/b9"}),
        [(loc(ST, ".series[0].instance[1].extension[0].valueReference.reference"), "imaging")],
    ),
    (
        "imaging_binary_link_not_binary",
        "r4",
        setter(ST, "series.0.instance.0.extension.0.valueReference", {"reference": U["patient"]}),
        [(loc(ST, I0 + ".extension[0].valueReference.reference"), "imaging")],
    ),
    (
        "imaging_media_content_type",
        "r4",
        setter(MED, "content.contentType", "image/jpeg"),
        [(loc(MED, ".content.contentType"), "imaging")],
    ),
    (
        "imaging_media_size",
        "r4",
        setter(MED, "content.size", 99),
        [(loc(MED, ".content.size"), "imaging")],
    ),
    (
        "imaging_media_hash",
        "r4",
        setter(MED, "content.hash", base64.b64encode(b"x" * 20).decode()),
        [(loc(MED, ".content.hash"), "imaging")],
    ),
    (
        "imaging_binary_not_dicom",
        "r4",
        setter(BIN, "data", base64.b64encode(b"\0" * 140).decode()),
        [(loc(BIN, ".data"), "imaging")],
    ),
    # R5
    (
        "r5_bad_selection_status",
        "r5",
        lambda b: b["entry"][7]["resource"].update(status="done"),
        [("Bundle.entry[7].resource.status", "schema")],
    ),
    (
        "r5_coding_for_concept",
        "r5",
        setter(ST, "series.0.modality", {"system": DCM, "code": "CT"}),
        [(loc(ST, S0 + ".modality.system"), "schema")],
    ),
    (
        "r5_docref_content_type",
        "r5",
        setter(MED, "content.0.attachment.contentType", "image/jpeg"),
        [(loc(MED, ".content[0].attachment.contentType"), "imaging")],
    ),
]


def main() -> None:
    manifest: dict[str, Any] = {}
    bases = {"r4": valid_r4(), "r5": valid_r5()}
    out = HERE / "corpus"
    out.mkdir(exist_ok=True)
    for name, base in (("valid_r4", bases["r4"]), ("valid_r5", bases["r5"])):
        write(out / f"{name}.json", base)
        manifest[f"{name}.json"] = {"fhirVersion": name[-2:], "expect": []}
    # A bundle whose second Binary is stored beside it, not inside (convert's large-file layout).
    beside = copy.deepcopy(bases["r4"])
    beside["entry"].pop(5)  # binary2, the Binary of instance 1
    write(out / "valid_r4_beside.json", beside)
    (out / "valid_r4_beside.binaries").mkdir(exist_ok=True)
    (out / "valid_r4_beside.binaries" / "b2.dcm").write_bytes(dicom_bytes(INSTANCE_UIDS[1]))
    manifest["valid_r4_beside.json"] = {"fhirVersion": "r4", "expect": []}
    for name, release, mutate, expect in BROKEN:
        b = copy.deepcopy(bases[release])
        mutate(b)
        if name == "model_choice_twice":
            res(b, P)["deceasedDateTime"] = "2020-01-01"
            expect = [(loc(P), "model")]
        write(out / f"{name}.json", b)
        manifest[f"{name}.json"] = {"fhirVersion": release, "expect": [list(e) for e in expect]}
    (out / "json_malformed.json").write_text('{"resourceType": "Bundle", "type": "transaction",\n')
    manifest["json_malformed.json"] = {"fhirVersion": "r4", "expect": [["$", "json"]]}
    write(HERE / "manifest.json", dict(sorted(manifest.items())))


def write(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
