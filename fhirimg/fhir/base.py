"""What a FHIR release must provide to the mapping (see :mod:`fhirimg.fhir`).

A leaf: it knows the shapes of each release and nothing of the pipeline. Checking a resource is
:mod:`fhirimg.validate`'s job (:func:`fhirimg.validate.resource_errors`), which sits above this
package and asks it for the models.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from fhirimg.jsonio import JSON


class Release(Protocol):
    """The release-specific pieces of the DICOM to FHIR mapping (``fhir-imaging-spec.md``)."""

    name: str
    fhir_version: str
    imaging_study_order: tuple[str, ...]
    rendered_image_type: str
    """The resource type that carries a rendered image: ``Media`` (R4), ``DocumentReference`` (R5)."""
    imaging_selection: bool
    """Whether image regions of SR measurements become ImagingSelection resources (R5)."""
    observation_body_structure: bool
    """Whether a finding site with laterality becomes Observation.bodyStructure (R5)."""

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

    def rendered_image(self, parts: ImageParts) -> JSON:
        """The resource for one rendered image: R4 Media, R5 DocumentReference."""
        ...

    def model_class(self, resource_type: str) -> Any:
        """The fhir.resources model class of ``resource_type``, None when there is none."""
        ...


@dataclass(frozen=True)
class StudyParts:
    """Release-neutral pieces of an ImagingStudy whose placement differs between releases."""

    accession: JSON | None  # an Identifier with type ACSN
    procedures: tuple[JSON, ...]  # CodeableConcepts, (0008,1032)
    reasons: tuple[JSON, ...]  # CodeableConcepts, (0040,1002) / (0040,100A)
    interpreters: tuple[str, ...]  # display names, (0008,1060)


@dataclass(frozen=True)
class ImageParts:
    """Release-neutral facts of one rendered image (a frame of a DICOM instance).

    ``attachment`` is a finished Attachment (contentType, data or url, size, hash, title,
    creation); the release places it and the image's size where its resource keeps them.
    """

    identifiers: tuple[JSON, ...]
    subject_ref: str  # Patient (fullUrl, conditional or literal reference)
    study_ref: str  # the ImagingStudy the image was rendered from
    modality: JSON  # a Coding, (0008,0060)
    attachment: JSON
    height: int  # rows of the rendered image (after any --media-size)
    width: int  # columns of the rendered image
    frames: int | None  # set when the source is multi-frame (the image shows one of them)
    created: str | None = None  # FHIR dateTime of the content / acquisition
    device_name: str | None = None  # (0008,0070) Manufacturer + (0008,1090) Model Name
    body_site: JSON | None = None  # a Coding (SNOMED CT or display only), (0018,0015)
    description: str | None = None


def ordered(resource: JSON, order: tuple[str, ...]) -> JSON:
    """``resource`` with its keys in ``order`` (``resourceType`` first), others dropped.

    >>> ordered({"b": 1, "resourceType": "X", "a": 2}, ("a", "b"))
    {'resourceType': 'X', 'a': 2, 'b': 1}
    """
    out: JSON = {"resourceType": resource["resourceType"]}
    out.update((k, resource[k]) for k in order if k in resource)
    return out
