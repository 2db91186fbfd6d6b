"""What a FHIR release must provide to the mapping (see :mod:`fhirimg.fhir`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

JSON = dict[str, Any]


class Release(Protocol):
    """The release-specific pieces of the DICOM to FHIR mapping (``fhir-imaging-spec.md``)."""

    name: str
    fhir_version: str
    imaging_study_order: tuple[str, ...]

    def modality(self, coding: JSON) -> JSON:
        """ImagingStudy.modality / series.modality: R4 Coding, R5 CodeableConcept."""
        ...

    def laterality(self, coding: JSON) -> JSON:
        """ImagingStudy.series.laterality: R4 Coding, R5 CodeableConcept."""
        ...

    def body_site(self, coding: JSON) -> JSON:
        """ImagingStudy.series.bodySite: R4 Coding, R5 CodeableReference(BodyStructure)."""
        ...

    def study_elements(self, parts: StudyParts) -> JSON:
        """The elements whose name or place differ by release (``identifier`` entries to add,
        ``basedOn``, ``interpreter``, ``procedureCode``/``procedure``, ``reasonCode``/``reason``)."""
        ...

    def endpoint(self, address: str, identifier: JSON, name: str) -> JSON:
        """An Endpoint resource for a DICOMweb WADO-RS service."""
        ...

    def model_errors(self, resource: JSON) -> list[str]:
        """Errors the fhir.resources models of this release find in ``resource``."""
        ...


@dataclass(frozen=True)
class StudyParts:
    """Release-neutral pieces of an ImagingStudy whose placement differs between releases."""

    accession: JSON | None  # an Identifier with type ACSN
    procedures: tuple[JSON, ...]  # CodeableConcepts, (0008,1032)
    reasons: tuple[JSON, ...]  # CodeableConcepts, (0040,1002) / (0040,100A)
    interpreters: tuple[str, ...]  # display names, (0008,1060)
