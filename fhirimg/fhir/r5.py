"""FHIR R5 (5.0.0): the release-specific shapes, checked with the fhir.resources R5 models.

Differences from R4 handled here (``fhir-imaging-spec.md``, R4 vs R5 table): ImagingStudy.modality,
series.modality and series.laterality are CodeableConcepts; series.bodySite is a
CodeableReference(BodyStructure); the accession number moves to ``basedOn`` (an identifier-only
ServiceRequest reference, as dcm4chee-arc exports it); ``procedureCode``/``reasonCode`` become
``procedure``/``reason`` (CodeableReference); ``interpreter`` is gone; Endpoint gets
``connectionType`` 1..* and ``payload``; and R5 has no Media, so a rendered image is a
DocumentReference (HL7 cross-version profile ``profile-DocumentReference-for-Media``).
"""

from __future__ import annotations

from functools import cache
from typing import Any

from fhirimg.fhir.base import ImageParts, StudyParts, ordered
from fhirimg.jsonio import JSON

_ENDPOINT_CONNECTION = "http://terminology.hl7.org/CodeSystem/endpoint-connection-type"
MEDIA_TYPE = "http://terminology.hl7.org/CodeSystem/media-type"
# Element order of R5 DocumentReference (its StructureDefinition).
_DOCREF_ORDER = (
    "id", "meta", "extension", "identifier", "version", "basedOn", "status", "docStatus",
    "modality", "type", "category", "subject", "context", "event", "bodySite", "facilityType",
    "practiceSetting", "period", "date", "author", "attester", "custodian", "relatesTo",
    "description", "securityLabel", "content",
)  # fmt: skip


def _concept(coding: JSON) -> JSON:
    """A Coding as a CodeableConcept; a display-only Coding becomes ``text``."""
    if "code" in coding:
        return {"coding": [coding]}
    return {"text": coding["display"]}


class _R5:
    name = "r5"
    fhir_version = "5.0.0"
    rendered_image_type = "DocumentReference"
    imaging_selection = True
    observation_body_structure = True
    # Element order of R5 ImagingStudy (its StructureDefinition); output keys follow it.
    imaging_study_order: tuple[str, ...] = (
        "resourceType", "id", "meta", "extension", "identifier", "status", "modality", "subject",
        "encounter", "started", "basedOn", "partOf", "referrer", "endpoint", "numberOfSeries",
        "numberOfInstances", "procedure", "location", "reason", "note", "description", "series",
    )  # fmt: skip

    def modality(self, coding: JSON) -> JSON:
        return {"coding": [coding]}  # R5 ImagingStudy.modality / series.modality: CodeableConcept

    def laterality(self, coding: JSON) -> JSON:
        return {"coding": [coding]}  # R5 series.laterality: CodeableConcept

    def body_site(self, coding: JSON) -> JSON:
        # R5 series.bodySite: CodeableReference(BodyStructure); the code goes in .concept
        return {"concept": _concept(coding)}

    def study_elements(self, parts: StudyParts) -> JSON:
        out: JSON = {}
        # R5: the accession is the identifier of the ServiceRequest the study is based on
        # (ImagingStudy.basedOn.identifier, type ACSN), not an ImagingStudy.identifier.
        if parts.accession:
            out["basedOn"] = [{"type": "ServiceRequest", "identifier": parts.accession}]
        # (0008,1060) Name of Physician(s) Reading Study: R5 removed ImagingStudy.interpreter.
        if parts.procedures:
            out["procedure"] = [{"concept": c} for c in parts.procedures]
        if parts.reasons:
            out["reason"] = [{"concept": c} for c in parts.reasons]
        return out

    def endpoint(self, address: str, identifier: JSON, name: str) -> JSON:
        return {
            "resourceType": "Endpoint",
            "identifier": [identifier],
            "status": "active",
            # R5 Endpoint.connectionType is 1..* CodeableConcept
            "connectionType": [
                {"coding": [{"system": _ENDPOINT_CONNECTION, "code": "dicom-wado-rs"}]}
            ],
            "name": name,
            # R5 Endpoint.payload replaces payloadType / payloadMimeType
            "payload": [{"type": [{"text": "DICOM WADO-RS"}], "mimeType": ["application/dicom"]}],
            "address": address,
        }

    def rendered_image(self, parts: ImageParts) -> JSON:
        """R5 DocumentReference for a rendered image (R5 has no Media).

        Media.partOf has no DocumentReference counterpart; the ImagingStudy goes in ``event``
        (CodeableReference(Any), "main clinical acts documented"). Height, width and frames move
        to the Attachment, which R5 gave those elements.
        """
        attachment = dict(parts.attachment)
        if "size" in attachment:
            # R5 Attachment.size is integer64, which R5 JSON writes as a string (json.html)
            attachment["size"] = str(attachment["size"])
        attachment["height"] = parts.height
        attachment["width"] = parts.width
        if parts.frames is not None:
            attachment["frames"] = parts.frames
        if parts.created:
            # What R4 Media.createdDateTime carries: the capture time (Content/Acquisition Date
            # and Time). Attachment.creation is a dateTime like it; DocumentReference.date is an
            # instant (seconds and zone required), which a DICOM time often cannot fill.
            attachment["creation"] = parts.created
        doc: JSON = {
            "resourceType": "DocumentReference",
            "identifier": list(parts.identifiers),
            "status": "current",
            "modality": [{"coding": [parts.modality]}],  # (0008,0060) Modality, DCM
            "type": {"coding": [{"system": MEDIA_TYPE, "code": "image", "display": "Image"}]},
            "subject": {"reference": parts.subject_ref},
            "event": [{"reference": {"reference": parts.study_ref}}],
        }
        if parts.device_name:
            # R4 Media.deviceName: (0008,0070) Manufacturer + (0008,1090) Model Name. R5 has no
            # device element; the capturing device is the document's author (Reference(Device)),
            # by name, as no Device resource is written.
            doc["author"] = [{"type": "Device", "display": parts.device_name}]
        if parts.body_site:
            doc["bodySite"] = [{"concept": _concept(parts.body_site)}]
        if parts.description:
            doc["description"] = parts.description
        doc["content"] = [{"attachment": _attachment_order(attachment)}]
        return ordered(doc, _DOCREF_ORDER)

    def model_class(self, resource_type: str) -> Any:
        """The fhir.resources model of ``resource_type`` (fhir.resources), None when there is none."""
        return _model(resource_type)


@cache
def _model(resource_type: str) -> Any:
    from fhir.resources import get_fhir_model_class

    try:
        return get_fhir_model_class(resource_type)
    except (KeyError, ValueError):
        return None


_ATTACHMENT_ORDER = (
    "contentType", "language", "data", "url", "size", "hash", "title", "creation", "height",
    "width", "frames", "duration", "pages",
)  # fmt: skip


def _attachment_order(att: JSON) -> JSON:
    return {k: att[k] for k in _ATTACHMENT_ORDER if k in att}


R5 = _R5()
