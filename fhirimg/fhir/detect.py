"""Which FHIR release a resource or Bundle is written in, from its content alone.

A bundle travels without its ``report.json`` (copied, pushed from another folder), so push
(:mod:`fhirimg.push.capability`), ``validate --fhir-version auto`` and the merge ask the bundle
itself, by the elements that differ between R4 and R5. A leaf: plain JSON in, a release name out
(no models imported), so ``push`` gets it without loading the validator.
"""

from __future__ import annotations

from typing import Any

__all__ = ["detect_version"]

_R5_ONLY = frozenset({"ImagingSelection"})
_R4_ONLY = frozenset({"Media"})


def _list(value: Any) -> list[Any]:
    """``value`` when it is a JSON array, else nothing (a wrong shape is another layer's finding)."""
    return value if isinstance(value, list) else []


def _resources(obj: dict[str, Any]) -> list[dict[str, Any]]:
    if obj.get("resourceType") == "Bundle":
        return [
            e["resource"]
            for e in _list(obj.get("entry"))
            if isinstance(e, dict) and isinstance(e.get("resource"), dict)
        ]
    return [obj]


def detect_version(obj: Any) -> str:
    """Guess the FHIR release of a resource or Bundle: "r4" unless something is R5-only.

    >>> detect_version({"resourceType": "ImagingSelection"})
    'r5'
    >>> detect_version({"resourceType": "Patient"})
    'r4'
    """
    if not isinstance(obj, dict):
        return "r4"
    for res in _resources(obj):
        rtype = res.get("resourceType")
        if not isinstance(rtype, str):
            continue
        if rtype in _R4_ONLY:
            return "r4"
        if rtype in _R5_ONLY:
            return "r5"
        meta = res.get("meta")
        if isinstance(meta, dict):
            for profile in _list(meta.get("profile")):
                if isinstance(profile, str) and ("/R5/" in profile or "/5.0" in profile):
                    return "r5"
                if isinstance(profile, str) and ("/R4/" in profile or "/4.0" in profile):
                    return "r4"
        if rtype == "ImagingStudy":
            # R5 made ImagingStudy.modality and .series.modality CodeableConcepts (R4: Coding).
            if "procedure" in res or "reason" in res or "partOf" in res:
                return "r5"
            if "interpreter" in res or "procedureCode" in res or "reasonCode" in res:
                return "r4"
            for m in _list(res.get("modality")):
                if isinstance(m, dict):
                    return "r5" if "coding" in m else "r4"
            for s in _list(res.get("series")):
                if isinstance(s, dict) and isinstance(s.get("modality"), dict):
                    return "r5" if "coding" in s["modality"] else "r4"
        if rtype == "DocumentReference":
            # R5: modality, context 0..* Reference, Attachment.size integer64 (a JSON string);
            # R4: masterIdentifier, context one backbone element, content.format.
            if "modality" in res or isinstance(res.get("context"), list):
                return "r5"
            if "masterIdentifier" in res or isinstance(res.get("context"), dict):
                return "r4"
            for c in _list(res.get("content")):
                if isinstance(c, dict):
                    if "format" in c:
                        return "r4"
                    att = c.get("attachment")
                    if isinstance(att, dict) and isinstance(att.get("size"), str):
                        return "r5"
        if rtype == "Observation" and "bodyStructure" in res:
            return "r5"  # Observation.bodyStructure is new in R5 (issue 20's finding site)
        if rtype == "BodyStructure":
            # R5 replaced BodyStructure.location (R4) by includedStructure.
            if "includedStructure" in res:
                return "r5"
            if "location" in res:
                return "r4"
        if rtype == "Endpoint":
            # R5: connectionType 1..* CodeableConcept and `payload`; R4: one Coding, payloadType.
            if "payload" in res or isinstance(res.get("connectionType"), list):
                return "r5"
            if "payloadType" in res or isinstance(res.get("connectionType"), dict):
                return "r4"
    return "r4"
