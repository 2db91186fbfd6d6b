"""The internal model: what fhirimg keeps of one DICOM instance, and the outcome of each input file.

Frozen dataclasses of plain values (strings, ints, tuples), so a record pickles cheaply between
processes and can be spilled to disk. Attributes are named after the DICOM keywords they come from;
values are the decoded text as pydicom gives it (Specific Character Set applied), not yet converted
to FHIR: conversion (dates, names, codes) happens in :mod:`fhirimg.mapping`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


@dataclass(frozen=True)
class Issuer:
    """An issuer of an identifier (HL7 v2 HD): (0040,0031) local namespace, (0040,0032) universal
    entity id and (0040,0033) its type (ISO, UUID, URI, ...)."""

    local: str | None = None
    universal: str | None = None
    universal_type: str | None = None


@dataclass(frozen=True)
class Code:
    """A DICOM code sequence item: (0008,0100) value, (0008,0102) scheme, (0008,0104) meaning."""

    value: str | None
    scheme: str | None
    meaning: str | None


@dataclass(frozen=True)
class ImageReference:
    """An instance an SR content item refers to: (0008,1199) Referenced SOP Sequence >
    (0008,1150) Referenced SOP Class UID, (0008,1155) Referenced SOP Instance UID,
    (0008,1160) Referenced Frame Number."""

    sop_class_uid: str | None
    sop_instance_uid: str | None
    frames: tuple[int, ...] = ()


@dataclass(frozen=True)
class ContentItem:
    """One item of an SR content tree (PS3.3 C.17.3), flattened: ``parent`` is the index of its
    parent in :attr:`SrContent.items` (-1: a child of the document root), ``position`` its
    Referenced Content Item Identifier (PS3.3 C.17.3.2.5: ``1.3.2`` = the second child of the
    third child of the root). Values are kept as read; :mod:`fhirimg.measurements` converts."""

    parent: int
    position: str
    relationship: str | None  # (0040,A010) Relationship Type
    value_type: str | None  # (0040,A040) Value Type; None for a by-reference relationship
    concept: Code | None = None  # (0040,A043) Concept Name Code Sequence
    observation_uid: str | None = None  # (0040,A171) Observation UID
    observation_datetime: str | None = None  # (0040,A032) Observation DateTime
    text: str | None = None  # TEXT (0040,A160), UIDREF (0040,A124), DATETIME (0040,A120)
    number: str | None = None  # NUM (0040,A300) > (0040,A30A) Numeric Value, raw DS
    unit: Code | None = None  # NUM (0040,A300) > (0040,08EA) Measurement Units Code Sequence
    code: Code | None = None  # CODE (0040,A168) Concept Code Sequence
    graphic_type: str | None = None  # SCOORD/SCOORD3D (0070,0023)
    graphic_data: tuple[float, ...] = ()  # SCOORD/SCOORD3D (0070,0022)
    frame_of_reference_uid: str | None = None  # SCOORD3D (3006,0024)
    references: tuple[ImageReference, ...] = ()  # IMAGE / COMPOSITE (0008,1199)
    reference_to: str | None = None  # by-reference: (0040,DB73) as "1.2.3"


@dataclass(frozen=True)
class SrContent:
    """The content tree of a Structured Report, read in full (:mod:`fhirimg.srread`)."""

    title: Code | None  # the root's (0040,A043) Concept Name Code Sequence
    template: str | None  # (0040,A504) Content Template Sequence > (0040,DB00)
    preliminary: str | None  # (0040,A496) Preliminary Flag
    device_uid: str | None  # (0018,1002) Device UID
    items: tuple[ContentItem, ...]
    warnings: tuple[str, ...] = ()
    """What could not be read, each naming its content item."""


@dataclass(frozen=True)
class InstanceRecord:
    """What is read from one DICOM file's header. Pure data; built by :func:`fhirimg.scan.read_file`."""

    path: str
    size: int
    # Instance level
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str | None = None
    instance_number: str | None = None  # (0020,0013) raw IS
    image_type: tuple[str, ...] = ()  # (0008,0008)
    content_label: str | None = None  # (0070,0080)
    concept_name: str | None = None  # (0040,A043) > (0008,0104)
    document_title: str | None = None  # (0042,0010)
    rows: int | None = None  # (0028,0010)
    columns: int | None = None  # (0028,0011)
    number_of_frames: str | None = None  # (0028,0008) raw IS
    has_pixels: bool = False
    content_date: str | None = None  # (0008,0023)
    content_time: str | None = None  # (0008,0033)
    acquisition_datetime: str | None = None  # (0008,002A)
    # Patient level
    patient_id: str | None = None  # (0010,0020)
    issuer_of_patient_id: str | None = None  # (0010,0021)
    patient_id_issuer: Issuer | None = None  # (0010,0024) Issuer of Patient ID Qualifiers Sequence
    patient_name: str | None = None  # (0010,0010), decoded, groups joined by "="
    patient_birth_date: str | None = None  # (0010,0030)
    patient_sex: str | None = None  # (0010,0040)
    # Study level
    study_date: str | None = None  # (0008,0020)
    study_time: str | None = None  # (0008,0030)
    timezone_offset: str | None = None  # (0008,0201)
    accession_number: str | None = None  # (0008,0050)
    accession_issuer: Issuer | None = None  # (0008,0051)
    study_id: str | None = None  # (0020,0010)
    study_description: str | None = None  # (0008,1030)
    referring_physician: str | None = None  # (0008,0090)
    reading_physicians: tuple[str, ...] = ()  # (0008,1060)
    procedure_codes: tuple[Code, ...] = ()  # (0008,1032)
    reason_for_procedure: str | None = None  # (0040,1002)
    reason_codes: tuple[Code, ...] = ()  # (0040,100A)
    department: str | None = None  # (0008,1040)
    modalities_in_study: tuple[str, ...] = ()  # (0008,0061)
    # Series level
    series_number: str | None = None  # (0020,0011) raw IS
    modality: str | None = None  # (0008,0060)
    series_description: str | None = None  # (0008,103E)
    body_part_examined: str | None = None  # (0018,0015)
    laterality: str | None = None  # (0020,0060)
    series_date: str | None = None  # (0008,0021)
    series_time: str | None = None  # (0008,0031)
    performing_physicians: tuple[str, ...] = ()  # (0008,1050)
    operators: tuple[str, ...] = ()  # (0008,1070)
    manufacturer: str | None = None  # (0008,0070)
    model_name: str | None = None  # (0008,1090)
    station_name: str | None = None  # (0008,1010)
    # A Structured Report's content tree (SR SOP classes only; read in full, fhirimg.srread).
    sr: SrContent | None = None
    # Problems met while reading (bad charset, malformed values): recorded, never fatal.
    warnings: tuple[str, ...] = field(default=())


class FileStatus(StrEnum):
    """Where an input file ended up. Every input file gets exactly one."""

    CONVERTED = "converted"
    SKIPPED = "skipped"  # not DICOM, or DICOM that is not an instance (DICOMDIR)
    DUPLICATE = "duplicate"  # same SOP Instance UID and bytes as a file already taken
    FAILED = "failed"


@dataclass(frozen=True)
class FileProblem:
    """An input file that gives no instance: skipped or failed, with the reason."""

    path: str
    status: FileStatus
    reason: str
