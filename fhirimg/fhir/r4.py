"""FHIR R4 (4.0.1): the release-specific shapes, checked with the fhir.resources R4B models.

R4B left ImagingStudy, Media, Binary, Endpoint, Patient and Bundle as in R4 4.0.1
(``fhir-imaging-spec.md``), so the R4B models validate R4 output; fhir.resources has no plain R4.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from fhirimg.fhir.base import ImageParts, StudyParts, ordered
from fhirimg.jsonio import JSON

_ENDPOINT_CONNECTION = "http://terminology.hl7.org/CodeSystem/endpoint-connection-type"
MEDIA_TYPE = "http://terminology.hl7.org/CodeSystem/media-type"
# Element order of R4 Media (its StructureDefinition).
_MEDIA_ORDER = (
    "id", "meta", "extension", "identifier", "basedOn", "partOf", "status", "type", "modality",
    "view", "subject", "encounter", "createdDateTime", "issued", "operator", "reasonCode",
    "bodySite", "deviceName", "device", "height", "width", "frames", "duration", "content", "note",
)  # fmt: skip


class _R4:
    name = "r4"
    fhir_version = "4.0.1"
    rendered_image_type = "Media"
    imaging_selection = False  # ImagingSelection is an R5 resource
    observation_body_structure = False  # Observation.bodyStructure is R5
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

    def rendered_image(self, parts: ImageParts) -> JSON:
        """R4 Media (``fhir-imaging-spec.md``, Media): a photo-like rendering of one frame."""
        media: JSON = {
            "resourceType": "Media",
            "identifier": list(parts.identifiers),
            "partOf": [{"reference": parts.study_ref}],  # Media.partOf Reference(Any)
            "status": "completed",
            "type": {"coding": [{"system": MEDIA_TYPE, "code": "image", "display": "Image"}]},
            "modality": {"coding": [parts.modality]},  # (0008,0060) Modality, DCM
            "subject": {"reference": parts.subject_ref},
        }
        if parts.created:
            media["createdDateTime"] = parts.created
        if parts.body_site:
            site = parts.body_site
            media["bodySite"] = {"coding": [site]} if "code" in site else {"text": site["display"]}
        if parts.device_name:
            media["deviceName"] = parts.device_name
        media["height"] = parts.height
        media["width"] = parts.width
        if parts.frames is not None:
            media["frames"] = parts.frames
        media["content"] = parts.attachment
        return ordered(media, _MEDIA_ORDER)

    def model_class(self, resource_type: str) -> Any:
        """The fhir.resources model of ``resource_type`` (fhir.resources.R4B), None when there is none."""
        return _model(resource_type)


@cache
def _model(resource_type: str) -> Any:
    from fhir.resources.R4B import get_fhir_model_class

    try:
        return get_fhir_model_class(resource_type)
    except (KeyError, ValueError):
        return None


R4 = _R4()
