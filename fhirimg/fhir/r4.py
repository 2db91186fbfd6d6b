"""FHIR R4 (4.0.1): the release-specific shapes, checked with the fhir.resources R4B models.

R4B left ImagingStudy, Media, Binary, Endpoint, Patient and Bundle as in R4 4.0.1
(``fhir-imaging-spec.md``), so the R4B models validate R4 output; fhir.resources has no plain R4.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from fhirimg.fhir.base import JSON, StudyParts

_ENDPOINT_CONNECTION = "http://terminology.hl7.org/CodeSystem/endpoint-connection-type"


class _R4:
    name = "r4"
    fhir_version = "4.0.1"
    # Element order of R4 ImagingStudy (its StructureDefinition); output keys follow it.
    imaging_study_order: tuple[str, ...] = (
        "resourceType", "id", "meta", "extension", "identifier", "status", "modality", "subject",
        "encounter", "started", "basedOn", "referrer", "interpreter", "endpoint", "numberOfSeries",
        "numberOfInstances", "procedureReference", "procedureCode", "location", "reasonCode",
        "reasonReference", "note", "description", "series",
    )  # fmt: skip

    def modality(self, coding: JSON) -> JSON:
        return coding  # R4 ImagingStudy.modality and series.modality are Coding

    def laterality(self, coding: JSON) -> JSON:
        return coding

    def body_site(self, coding: JSON) -> JSON:
        return coding

    def study_elements(self, parts: StudyParts) -> JSON:
        out: JSON = {}
        # R4: the accession is an ImagingStudy.identifier with type ACSN (imagingstudy notes).
        if parts.accession:
            out["identifier"] = [parts.accession]
        # (0008,1060) Name of Physician(s) Reading Study -> interpreter (R4 only; removed in R5).
        if parts.interpreters:
            out["interpreter"] = [{"display": d} for d in parts.interpreters]
        if parts.procedures:
            out["procedureCode"] = list(parts.procedures)
        if parts.reasons:
            out["reasonCode"] = list(parts.reasons)
        return out

    def endpoint(self, address: str, identifier: JSON, name: str) -> JSON:
        return {
            "resourceType": "Endpoint",
            "identifier": [identifier],
            "status": "active",
            "connectionType": {"system": _ENDPOINT_CONNECTION, "code": "dicom-wado-rs"},
            "name": name,
            "payloadType": [{"text": "DICOM WADO-RS"}],
            "payloadMimeType": ["application/dicom"],
            "address": address,
        }

    def model_errors(self, resource: JSON) -> list[str]:
        cls = _model(resource.get("resourceType", ""))
        if cls is None:
            return [f"unknown R4 resource type {resource.get('resourceType')!r}"]
        try:
            cls.model_validate(resource)
        except Exception as exc:  # pydantic.ValidationError, or TypeError on wild input
            errors = getattr(exc, "errors", None)
            if callable(errors):
                return [
                    f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}"
                    for e in errors()
                ]
            return [str(exc)]
        return []


@cache
def _model(resource_type: str) -> Any:
    from fhir.resources.R4B import get_fhir_model_class

    try:
        return get_fhir_model_class(resource_type)
    except (KeyError, ValueError):
        return None


R4 = _R4()
