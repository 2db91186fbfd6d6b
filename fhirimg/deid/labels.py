"""The FHIR side's mark on pseudonymised data: ``meta.security`` PSEUDED.

``Resource.meta.security`` with v3-ObservationValue ``PSEUDED`` ("pseudonymized": identifying
values replaced by pseudonyms that the holder of the key or the re-identification map can link
back), the HL7 security label for de-identified data that is not anonymous
(``fhir-imaging-spec.md``, De-identification).
"""

from __future__ import annotations

from fhirimg.jsonio import JSON

PSEUDED: JSON = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "code": "PSEUDED",
    "display": "pseudonymized",
}


def labelled(resource: JSON) -> JSON:
    """``resource`` with ``meta.security`` PSEUDED, ``meta`` placed after ``id`` as FHIR's JSON
    order has it.

    >>> list(labelled({"resourceType": "Patient", "id": "1", "gender": "male"}))
    ['resourceType', 'id', 'meta', 'gender']
    """
    meta = dict(resource.get("meta") or {})
    security = [s for s in meta.get("security", ()) if s.get("code") != "PSEUDED"]
    meta["security"] = [*security, dict(PSEUDED)]
    out: JSON = {}
    for key in ("resourceType", "id"):
        if key in resource:
            out[key] = resource[key]
    out["meta"] = meta
    out.update({k: v for k, v in resource.items() if k not in out})
    return out
