"""fhirimg.mapping element by element, on hand-made records (no files)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from fhirimg import mapping
from fhirimg.fhir import release
from fhirimg.model import Code, InstanceRecord

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"


def record(**fields: Any) -> InstanceRecord:
    base = InstanceRecord(
        path="x.dcm",
        size=1,
        sop_class_uid=CT_IMAGE,
        sop_instance_uid="1.2.3.4.1",
        study_instance_uid="1.2.3",
        series_instance_uid="1.2.3.4",
        modality="CT",
    )
    return replace(base, **fields)


def study(records: list[InstanceRecord], name: str = "r4", **options: Any) -> dict[str, Any]:
    resource, _ = mapping.imaging_study(
        mapping.sort_records(records),
        "urn:uuid:p",
        None,
        release(name),
        mapping.MapOptions(**options),
        mapping.Notes(),
    )
    return resource


@pytest.mark.parametrize(
    ("scheme", "system"),
    [
        ("SCT", "http://snomed.info/sct"),
        # SRT codes are SNOMED RT style ("T-D3000"), not SNOMED CT concept ids: PS3.16 Table 8-1
        # gives them their own URI, and DICOM's FHIR value sets use it next to the SCT codes.
        ("SRT", "http://snomed.info/srt"),
        ("LN", "http://loinc.org"),
        ("DCM", "http://dicom.nema.org/resources/ontology/DCM"),
    ],
)
def test_coding_scheme_designator_to_system(scheme: str, system: str) -> None:
    assert mapping.coding(Code("X", scheme, "x")) == {"system": system, "code": "X", "display": "x"}


def test_srt_procedure_code_is_not_written_as_snomed_ct() -> None:
    rec = record(procedure_codes=(Code("P5-0905E", "SRT", "CT of chest"),))
    (coding,) = study([rec])["procedureCode"][0]["coding"]
    assert coding["system"] != "http://snomed.info/sct"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("12,345", "identifier=urn:oid:1.2|12%5C%2C345"),
        ("A|B", "identifier=urn:oid:1.2|A%5C%7CB"),
        ("X$Y", "identifier=urn:oid:1.2|X%5C%24Y"),
        ("C:\\D", "identifier=urn:oid:1.2|C:%5C%5CD"),
    ],
)
def test_search_token_escapes_fhir_separators(value: str, expected: str) -> None:
    # FHIR search "Escaping Search Parameters": ',', '$', '|' and '\' in a value are prefixed
    # with '\'. Percent-encoding alone is undone by the server before parsing, so
    # 'identifier=sys|12,345' would match ID '12' of that system OR '345' of any system.
    assert mapping.search_token("urn:oid:1.2", value) == expected


def test_patient_if_none_exist_with_comma_in_patient_id() -> None:
    rec = record(patient_id="12,345", patient_id_issuer=None, issuer_of_patient_id=None)
    _, request = mapping.patient(
        [rec], mapping.MapOptions(patient_id_system="urn:oid:1.2"), mapping.Notes()
    )
    assert request["ifNoneExist"] == "identifier=urn:oid:1.2|12%5C%2C345"


def test_accession_local_namespace_system_is_configurable() -> None:
    """An accession issuer with only a local namespace (0040,0031) gets its system from
    --accession-system ISSUER=URI; without that mapping it has none."""
    from fhirimg.fhir import release
    from fhirimg.mapping import MapOptions, Notes, imaging_study
    from fhirimg.model import InstanceRecord, Issuer

    rec = InstanceRecord(
        path="x.dcm", size=1, sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        sop_instance_uid="1.2.3.4", study_instance_uid="1.2.3", series_instance_uid="1.2.3.1",
        accession_number="A77", accession_issuer=Issuer(local="RIS1"), modality="CT",
    )  # fmt: skip

    def acsn(options: MapOptions) -> dict[str, object]:
        study, _ = imaging_study([rec], "urn:uuid:p", None, release("r4"), options, Notes())
        typed: list[dict[str, object]] = [i for i in study["identifier"] if i.get("type")]
        (ident,) = typed
        return ident

    without = acsn(MapOptions())
    assert "system" not in without
    assert without["assigner"] == {"display": "RIS1"}
    mapped = acsn(MapOptions(accession_systems=(("RIS1", "https://ris.example/acc"),)))
    assert mapped["system"] == "https://ris.example/acc"


@pytest.mark.parametrize(
    ("scheme", "system"),
    [
        ("99ACME", "urn:dicom:scheme:99ACME"),  # private: the designator is kept
        ("ACR", "urn:dicom:scheme:ACR"),  # a PS3.16 scheme without a URI here
        ("SCT", "http://snomed.info/sct"),
        ("UMLS", "http://terminology.hl7.org/CodeSystem/umls"),
        (None, None),
    ],
)
def test_a_code_keeps_whose_code_it_is(scheme: str | None, system: str | None) -> None:
    coding = mapping.coding(Code("A-1", scheme, "Acme meaning"))
    assert coding is not None
    assert coding.get("system") == system
    assert coding["code"] == "A-1"
    assert coding["display"] == "Acme meaning"


def test_r4_study_modality_lists_acquisition_modalities_only() -> None:
    """R4 ImagingStudy.modality: CID 29 (acquisition) only; SR and DOC stay on their series.
    R5 lists every distinct series modality (CID 33). Pinned on the sample's mixed study."""
    from tests.helpers import GOLDEN, load, resources

    name = "study-045f2aed-5b45-59f5-b139-b1258f97dbfd.json"
    for folder, fhir_release in (("sample", "r4"), ("r5", "r5")):
        [study] = resources(load(GOLDEN / folder / name), "ImagingStudy")
        series = {
            (s["modality"].get("code") or s["modality"]["coding"][0]["code"])
            for s in study["series"]
        }
        listed = {(m.get("code") or m["coding"][0]["code"]) for m in study.get("modality", [])}
        assert {"SR", "DOC"} <= series, series
        if fhir_release == "r4":
            assert listed == series - {"SR", "DOC"}
        else:
            assert listed >= series


def test_r5_document_reference_keeps_what_r4_media_carries() -> None:
    """The capture time (R4 Media.createdDateTime) is R5 Attachment.creation, the device
    (Media.deviceName) the DocumentReference's author; pinned on the golden runs."""
    from tests.helpers import GOLDEN, load, resources

    def by_identifier(folder: str, kind: str) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for path in sorted((GOLDEN / folder).glob("study-*.json")):
            for res in resources(load(path), kind):
                out[res["identifier"][0]["value"]] = res
        return out

    media = by_identifier("binary-inline-media", "Media")
    docs = by_identifier("r5", "DocumentReference")
    assert docs
    assert set(docs) <= set(media)
    created = 0
    for key, doc in docs.items():
        attachment = doc["content"][0]["attachment"]
        assert attachment.get("creation") == media[key].get("createdDateTime")
        created += "creation" in attachment
        assert doc["author"] == [{"type": "Device", "display": media[key]["deviceName"]}]
    assert created
