"""Deterministic identifiers: every fullUrl and resource id is a UUIDv5 of DICOM UIDs.

The same input always gives the same ids, which makes output byte-identical between runs, golden
files possible, and re-pushes idempotent (``PUT Binary/<id>`` updates instead of duplicating).
"""

from __future__ import annotations

import uuid

# The fhirimg namespace for UUIDv5 (itself a UUIDv5 of the project URL in the URL namespace).
NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://fhirimg.dev/ns/v1")


def resource_uuid(kind: str, *parts: str) -> str:
    """A UUIDv5 string for a resource of ``kind`` keyed by ``parts``.

    >>> resource_uuid("ImagingStudy", "1.2.3") == resource_uuid("ImagingStudy", "1.2.3")
    True
    >>> len(resource_uuid("Binary", "1.2.3.4"))  # a valid FHIR id: <= 64 of [A-Za-z0-9-.]
    36
    """
    return str(uuid.uuid5(NAMESPACE, "|".join((kind, *parts))))


def full_url(kind: str, *parts: str) -> str:
    """The ``urn:uuid:`` fullUrl of a bundle entry (``Bundle.entry.fullUrl``)."""
    return "urn:uuid:" + resource_uuid(kind, *parts)


def bundle_name(study_instance_uid: str) -> str:
    """The bundle's file name: a hash of the Study Instance UID, never raw tag text.

    >>> bundle_name("1.2.3").endswith(".json")
    True
    """
    return f"study-{resource_uuid('ImagingStudy', study_instance_uid)}.json"
