"""One study's records become one FHIR transaction Bundle (Patient, Endpoint, ImagingStudy).

Entries carry ``urn:uuid:`` fullUrls derived from DICOM UIDs and idempotent requests
(``fhir-imaging-spec.md``, Transaction Bundles): Patient ``POST`` + ``ifNoneExist`` on its
identifier, Endpoint likewise, ImagingStudy conditional ``PUT`` on the Study Instance UID.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fhirimg import ids
from fhirimg.fhir import Release
from fhirimg.mapping import MapOptions, Notes, endpoint, imaging_study, patient, sort_records
from fhirimg.model import InstanceRecord

JSON = dict[str, Any]


def entry(full_url: str, resource: JSON, request: JSON) -> JSON:
    """A transaction entry in FHIR's element order: fullUrl, resource, request."""
    return {"fullUrl": full_url, "resource": resource, "request": request}


def patient_key(records: Sequence[InstanceRecord], resource: JSON) -> tuple[str, ...]:
    """What identifies the patient for its deterministic fullUrl: the identifier when there is
    one, else the study (a patient without an ID cannot be matched across studies)."""
    for ident in resource.get("identifier", ()):
        return ("Patient", ident.get("system", ""), ident["value"])
    return ("Patient", "study", records[0].study_instance_uid)


def study_bundle(
    records: Sequence[InstanceRecord], options: MapOptions, release: Release
) -> tuple[JSON, Notes]:
    """The transaction Bundle for the records of one study (any order; they are sorted here)."""
    notes = Notes()
    recs = sort_records(records)
    study_uid = recs[0].study_instance_uid

    pat, pat_request = patient(recs, options, notes)
    key = patient_key(recs, pat)
    pat_url = ids.full_url(*key)
    if "ifNoneExist" not in pat_request:
        # No Patient ID: a deterministic id and PUT keep re-pushes from creating duplicates.
        pat_id = ids.resource_uuid(*key)
        pat = {
            "resourceType": "Patient",
            "id": pat_id,
            **{k: v for k, v in pat.items() if k != "resourceType"},
        }
        pat_request = {"method": "PUT", "url": f"Patient/{pat_id}"}
        notes.add("no Patient ID (0010,0020): Patient gets a deterministic id from the study")
    entries = [entry(pat_url, pat, pat_request)]

    endpoint_url = None
    if options.dicomweb_url:
        ep, ep_request = endpoint(options.dicomweb_url, release)
        endpoint_url = ids.full_url("Endpoint", ep["address"])
        entries.append(entry(endpoint_url, ep, ep_request))

    study, study_request = imaging_study(recs, pat_url, endpoint_url, release, options, notes)
    entries.append(entry(ids.full_url("ImagingStudy", study_uid), study, study_request))
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}, notes
