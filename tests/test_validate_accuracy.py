"""Accuracy cases found in review: valid shapes that must stay silent, defects that must be found."""

from __future__ import annotations

from typing import Any

from fhirimg.validate import ALL_LAYERS, Severity, detect_version, validate_resource

PATIENT = "urn:uuid:11111111-1111-4111-8111-111111111111"
ENDPOINT = "urn:uuid:55555555-5555-4555-8555-555555555555"
STUDY = "urn:uuid:22222222-2222-4222-8222-222222222222"


def _bundle() -> dict[str, Any]:
    patient = {
        "resourceType": "Patient",
        "contained": [{"resourceType": "Organization", "id": "org1", "name": "Hospital"}],
        "identifier": [{"system": "urn:oid:1.2.3.4", "value": "MRN1"}],
        "managingOrganization": {"reference": "#org1"},
    }
    endpoint = {
        "resourceType": "Endpoint",
        "status": "active",
        "connectionType": {
            "system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type",
            "code": "dicom-wado-rs",
        },
        "payloadType": [{"text": "DICOM"}],
        "address": "https://pacs.example.org/wado-rs",
    }
    study = {
        "resourceType": "ImagingStudy",
        "contained": [{"resourceType": "Practitioner", "id": "dr", "name": [{"family": "House"}]}],
        "identifier": [{"system": "urn:dicom:uid", "value": "urn:oid:1.2.3.4.5"}],
        "status": "available",
        "subject": {"reference": PATIENT},
        "referrer": {"reference": "#dr"},
    }
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": PATIENT,
                "resource": patient,
                "request": {"method": "POST", "url": "Patient"},
            },
            {
                "fullUrl": ENDPOINT,
                "resource": endpoint,
                "request": {"method": "POST", "url": "Endpoint"},
            },
            {
                "fullUrl": STUDY,
                "resource": study,
                "request": {"method": "POST", "url": "ImagingStudy"},
            },
        ],
    }


def _problems(obj: dict[str, Any], release: str = "r4") -> list[tuple[str, str]]:
    return [
        (f.location, f.layer)
        for f in validate_resource(obj, fhir_version=release, layers=ALL_LAYERS)
        if f.severity is not Severity.INFORMATION
    ]


def test_the_base_bundle_is_clean() -> None:
    assert _problems(_bundle()) == []


def test_contained_resource_may_refer_to_a_sibling_contained_resource() -> None:
    # ref-1 resolves '#id' against the container's contained list (%rootResource.contained.id).
    bundle = _bundle()
    patient = bundle["entry"][0]["resource"]
    patient["contained"].append(
        {"resourceType": "Organization", "id": "org2", "partOf": {"reference": "#org1"}}
    )
    patient["generalPractitioner"] = [{"reference": "#org2"}]
    assert _problems(bundle) == []


def test_contained_resource_may_refer_to_another_entry_by_urn_uuid() -> None:
    bundle = _bundle()
    bundle["entry"][0]["resource"]["contained"][0]["endpoint"] = [{"reference": ENDPOINT}]
    assert _problems(bundle) == []


def test_dangling_urn_uuid_inside_a_contained_resource_is_found() -> None:
    bundle = _bundle()
    dangling = "urn:uuid:99999999-1111-4111-8111-111111111111"
    bundle["entry"][0]["resource"]["contained"][0]["endpoint"] = [{"reference": dangling}]
    assert _problems(bundle) == [
        ("Bundle.entry[0].resource.contained[0].endpoint[0].reference", "bundle")
    ]


def test_local_reference_to_a_contained_resource_of_the_wrong_type_is_found() -> None:
    # ImagingStudy.subject: Reference(Patient | Device | Group); '#dr' is a contained Practitioner.
    bundle = _bundle()
    bundle["entry"][2]["resource"]["subject"] = {"reference": "#dr"}
    bundle["entry"][2]["resource"].pop("referrer")
    assert _problems(bundle) == [("Bundle.entry[2].resource.subject.reference", "bundle")]


def test_unreferenced_contained_resource_is_found_in_r4() -> None:
    # dom-3; R4 writes it with descendants().as(uri), which must filter, not fail, on a collection.
    bundle = _bundle()
    bundle["entry"][0]["resource"]["contained"].append({"resourceType": "Organization", "id": "o9"})
    assert _problems(bundle) == [("Bundle.entry[0].resource", "invariant")]


def _history() -> dict[str, Any]:
    def version(n: str) -> dict[str, Any]:
        return {"resourceType": "Patient", "id": "p1", "meta": {"versionId": n}}

    return {
        "resourceType": "Bundle",
        "type": "history",
        "entry": [
            {
                "fullUrl": "http://srv.example/fhir/Patient/p1",
                "resource": version(v),
                "request": {"method": method, "url": url},
                "response": {"status": status},
            }
            for v, method, url, status in (
                ("2", "PUT", "Patient/p1", "200 OK"),
                ("1", "POST", "Patient", "201 Created"),
            )
        ],
    }


def test_history_bundle_repeats_a_full_url() -> None:
    # bdl-7: fullUrl unique "except in history bundles", or with different meta.versionId.
    assert _problems(_history()) == []
    collection = _history()
    collection["type"] = "collection"
    for e in collection["entry"]:
        del e["request"], e["response"]
    assert _problems(collection) == []
    collection["entry"][1]["resource"]["meta"]["versionId"] = "2"
    assert ("Bundle.entry[1].fullUrl", "bundle") in _problems(collection)


def test_transaction_repeating_a_full_url_is_an_error_even_with_versions() -> None:
    # Servers resolve transaction references by fullUrl: two entries with one fullUrl are rejected.
    bundle = _bundle()
    bundle["entry"][1]["fullUrl"] = PATIENT
    bundle["entry"][1]["resource"]["meta"] = {"versionId": "2"}
    assert ("Bundle.entry[1].fullUrl", "bundle") in _problems(bundle)


def test_operations_and_metadata_in_a_batch_are_well_formed_urls() -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"request": {"method": "GET", "url": "metadata"}},
            {"request": {"method": "GET", "url": "Patient/p1/$everything"}},
            {
                "fullUrl": "urn:uuid:0c3151bd-1cbf-4d64-b04d-cd9187a4c6e1",
                "resource": {"resourceType": "Parameters"},
                "request": {"method": "POST", "url": "ImagingStudy/$validate"},
            },
        ],
    }
    assert _problems(bundle) == []


def test_primitive_extension_arrays_stay_aligned() -> None:
    # FHIR JSON (json.html#primitive): `given` and `_given` are aligned with nulls; a position that
    # is null in both holds nothing (ele-1), and arrays of different lengths are not aligned.
    ext = {"extension": [{"url": "http://example.org/x", "valueString": "y"}]}
    good = {"resourceType": "Patient", "name": [{"given": ["a", "b"], "_given": [None, ext]}]}
    assert _problems(good) == []
    both_null = {
        "resourceType": "Patient",
        "name": [{"given": ["a", None], "_given": [ext, None]}],
    }
    assert ("Patient.name[0].given[1]", "json") in _problems(both_null)
    short = {"resourceType": "Patient", "name": [{"given": ["a"], "_given": [None, ext]}]}
    assert ("Patient.name[0]._given", "json") in _problems(short)


def test_an_r5_document_reference_alone_is_detected_as_r5() -> None:
    # R5 DocumentReference: modality, context 0..* Reference, Attachment.size integer64 (string);
    # R4: masterIdentifier, context a backbone element, content.format.
    attachment = {"contentType": "application/dicom", "url": "Binary/b1", "size": "144"}
    r5 = {
        "resourceType": "DocumentReference",
        "status": "current",
        "modality": [{"coding": [{"system": "http://dicom.nema.org/resources/ontology/DCM"}]}],
        "content": [{"attachment": attachment}],
    }
    assert detect_version(r5) == "r5"
    assert detect_version({"resourceType": "Bundle", "entry": [{"resource": r5}]}) == "r5"
    r5_sized = {"resourceType": "DocumentReference", "content": [{"attachment": attachment}]}
    assert detect_version(r5_sized) == "r5"
    r4 = {"resourceType": "DocumentReference", "context": {"period": {"start": "2024"}}}
    assert detect_version(r4) == "r4"
    assert detect_version({"resourceType": "DocumentReference", "masterIdentifier": {}}) == "r4"
