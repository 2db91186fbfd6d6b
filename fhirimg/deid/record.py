"""A header record de-identified: what the mapping reads, the same way the dataset path does it.

:func:`deidentify_record` is applied right after reading, for every source (files, DICOMweb
metadata, DIMSE C-FIND answers), so grouping, the catalog, ``report.json`` and the bundles only ever
see the de-identified values. Each field goes through :func:`fhirimg.deid.actions.text_value` with
the action of the tag it was read from, which is what :mod:`fhirimg.deid.dataset` does to that
tag in a whole dataset.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from fhirimg.deid.actions import Patient, action, patient_of, text_value
from fhirimg.deid.keys import DeidOptions, Keyed
from fhirimg.model import InstanceRecord

_TEXT: dict[str, tuple[int, str]] = {
    "sop_instance_uid": (0x00080018, "UI"),
    "study_instance_uid": (0x0020000D, "UI"),
    "series_instance_uid": (0x0020000E, "UI"),
    "sop_class_uid": (0x00080016, "UI"),
    "content_label": (0x00700080, "CS"),
    "document_title": (0x00420010, "ST"),
    "content_date": (0x00080023, "DA"),
    "content_time": (0x00080033, "TM"),
    "acquisition_datetime": (0x0008002A, "DT"),
    "patient_id": (0x00100020, "LO"),
    "issuer_of_patient_id": (0x00100021, "LO"),
    "patient_name": (0x00100010, "PN"),
    "patient_birth_date": (0x00100030, "DA"),
    "patient_sex": (0x00100040, "CS"),
    "study_date": (0x00080020, "DA"),
    "study_time": (0x00080030, "TM"),
    "timezone_offset": (0x00080201, "SH"),
    "accession_number": (0x00080050, "SH"),
    "study_id": (0x00200010, "SH"),
    "study_description": (0x00081030, "LO"),
    "referring_physician": (0x00080090, "PN"),
    "reason_for_procedure": (0x00401002, "LO"),
    "department": (0x00081040, "LO"),
    "series_description": (0x0008103E, "LO"),
    "body_part_examined": (0x00180015, "CS"),
    "laterality": (0x00200060, "CS"),
    "series_date": (0x00080021, "DA"),
    "series_time": (0x00080031, "TM"),
    "manufacturer": (0x00080070, "LO"),
    "model_name": (0x00081090, "LO"),
    "station_name": (0x00081010, "SH"),
    "instance_number": (0x00200013, "IS"),
    "series_number": (0x00200011, "IS"),
    "number_of_frames": (0x00280008, "IS"),
}
_MULTI: dict[str, tuple[int, str]] = {
    "image_type": (0x00080008, "CS"),
    "reading_physicians": (0x00081060, "PN"),
    "performing_physicians": (0x00081050, "PN"),
    "operators": (0x00081070, "PN"),
    "modalities_in_study": (0x00080061, "CS"),
}
_SEQUENCES: dict[str, int] = {
    "patient_id_issuer": 0x00100024,
    "accession_issuer": 0x00080051,
    "procedure_codes": 0x00081032,
    "reason_codes": 0x0040100A,
    "concept_name": 0x0040A043,  # (0040,A043) > (0008,0104) Code Meaning
}


def record_patient(rec: InstanceRecord, keyed: Keyed) -> Patient:
    """The :class:`~fhirimg.deid.actions.Patient` of a record (its original values)."""
    return patient_of(
        keyed,
        rec.patient_id,
        rec.issuer_of_patient_id,
        rec.patient_name,
        rec.patient_birth_date,
        rec.study_instance_uid,
    )


def deidentify_record(rec: InstanceRecord, opts: DeidOptions) -> InstanceRecord:
    """``rec`` de-identified (module docstring): UIDs replaced by keyed ``2.25.`` UIDs, the
    patient's name and id by the keyed pseudonym, dates shifted per patient, the rest as Table
    E.1-1 and the options say. ``path`` and ``size`` stay: they name the input file."""
    keyed = Keyed(opts.key)
    patient = record_patient(rec, keyed)
    changes: dict[str, Any] = {}
    for name, (tag, vr) in _TEXT.items():
        value = getattr(rec, name)
        if value is None:
            continue
        new = text_value(action(tag, opts), vr, value, keyed, patient)
        changes[name] = new or None
    for name, (tag, vr) in _MULTI.items():
        act = action(tag, opts)
        kept = [text_value(act, vr, v, keyed, patient) for v in getattr(rec, name)]
        changes[name] = tuple(v for v in kept if v)
    for name, tag in _SEQUENCES.items():
        if action(tag, opts) in ("X", "Z"):
            changes[name] = () if isinstance(getattr(rec, name), tuple) else None
    # (0040,A730) Content Sequence: "D" in Table E.1-1, "C" only with Clean Structured Content,
    # which is not built. An SR's content tree holds free text, dates, names and UIDs the fields
    # above do not reach, so it goes, and with it the study's Observations (issue 20).
    changes["sr"] = None
    for name in ("sop_instance_uid", "study_instance_uid", "series_instance_uid", "sop_class_uid"):
        changes[name] = changes.get(name) or getattr(rec, name)  # required: never empty
    return replace(rec, **changes)
