"""A whole pydicom Dataset de-identified: the DICOM side of PS3.15 Annex E.

:func:`deidentify_dataset` walks every element, sequences recursed, and applies the action of
:func:`fhirimg.deid.actions.action` with the values of :func:`fhirimg.deid.actions.text_value`:
the same keyed functions as the header records (:mod:`fhirimg.deid.record`), so a UID, a
pseudonym or a shifted date is the same in the Binary bytes, the ``deidentify`` command's files
and the FHIR resources. The patient's keyed values come from the record the scanner would make of
the dataset (:func:`fhirimg.scan.record_from_dataset`, read before anything is changed), so both
paths start from the same decoded text.

Then (0012,0062) Patient Identity Removed is YES and (0012,0064) De-identification Method Code
Sequence holds the CID 7050 codes of the profile and the options used (codes from pydicom's DCM
code dictionary: 113100 Basic Application Confidentiality Profile, 113107 Retain Longitudinal
Temporal Information Modified Dates Option, 113108 Retain Patient Characteristics Option, 113105
Clean Descriptors Option, 113109 Retain Device Identity Option, 113112 Retain Institution Identity
Option, 113111 Retain Safe Private Option).
"""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Iterator
from typing import Any

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.sr.codedict import codes

from fhirimg.deid.actions import Patient, action, text_value
from fhirimg.deid.keys import DeidOptions, Keyed
from fhirimg.deid.record import record_patient
from fhirimg.model import InstanceRecord

_PYDICOM = logging.getLogger("pydicom")
_TEXT_VRS = {
    "AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI",
    "UR", "UT",
}  # fmt: skip
_SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"  # and its .1 - .4 multi-frame kinds (PS3.4 B.5)
_ENCAPSULATED_DOCUMENT = "1.2.840.10008.5.1.4.1.1.104."  # PDF, CDA, STL, ... (PS3.4 B.5)
_ULTRASOUND = ("1.2.840.10008.5.1.4.1.1.6.", "1.2.840.10008.5.1.4.1.1.3.1")


def burned_in_reason(ds: Dataset) -> str | None:
    """Why ``ds`` may carry identifying text in its pixels or document, or None.

    (0028,0301) Burned In Annotation YES; or, whatever it says, kinds known to carry text:
    ultrasound, secondary capture, encapsulated documents (PS3.15 E.1.1 leaves pixel cleaning
    to the Clean Pixel Data Option, which fhirimg does not offer).
    """
    burned = str(ds.get("BurnedInAnnotation", "") or "").strip().upper()
    if burned == "YES":
        return "Burned In Annotation (0028,0301) is YES"
    sop_class = str(ds.get("SOPClassUID", "") or "")
    modality = str(ds.get("Modality", "") or "").strip().upper()
    if modality == "US" or sop_class.startswith(_ULTRASOUND):
        return "ultrasound often carries burned-in text"
    if sop_class.startswith(_SECONDARY_CAPTURE):
        return "secondary captures often carry burned-in text"
    if sop_class.startswith(_ENCAPSULATED_DOCUMENT):
        return "an encapsulated document holds text fhirimg cannot clean"
    return None


def method_codes(opts: DeidOptions) -> list[Any]:
    """The CID 7050 codes of the profile and of the options ``opts`` uses."""
    dcm = codes.DCM
    out = [dcm.BasicApplicationConfidentialityProfile]
    if opts.retain_modified_dates:
        out.append(dcm.RetainLongitudinalTemporalInformationModifiedDatesOption)
    # sex and age are kept by default: they are the Retain Patient Characteristics Option's
    out.append(dcm.RetainPatientCharacteristicsOption)
    if opts.clean_descriptors:
        out.append(dcm.CleanDescriptorsOption)
    if opts.retain_device_identity:
        out.append(dcm.RetainDeviceIdentityOption)
    if opts.retain_institution_identity:
        out.append(dcm.RetainInstitutionIdentityOption)
    if opts.keep_private:
        out.append(dcm.RetainSafePrivateOption)
    return out


def _values(value: Any) -> Iterator[str]:
    if isinstance(value, MultiValue | list | tuple):
        for v in value:
            yield "" if v is None else str(v)
    elif value is not None:
        yield str(value)


_FREE_TEXT = {"PN", "LT", "ST", "UT", "UC"}


def _walk(
    ds: Dataset, opts: DeidOptions, keyed: Keyed, patient: Patient, content: bool = False
) -> None:
    """De-identify the elements of ``ds``. ``content``: inside a sequence the table gives D
    (Content Sequence (0040,A730) and the like: structured content), where free text and person
    names that the table does not list get a dummy too (the Clean Structured Content Option is
    not offered, so nothing written by a person stays)."""
    for tag in list(ds.keys()):
        elem = ds[tag]
        act = action(int(tag), opts)
        if content and act == "K" and elem.VR in _FREE_TEXT:
            act = "D"
        if act == "K" and elem.VR != "SQ":
            continue
        if act == "X":
            del ds[tag]
            continue
        if elem.VR == "SQ":
            if act == "Z":
                elem.value = Sequence()
                continue
            for item in elem.value or ():
                _walk(item, opts, keyed, patient, content or act == "D")
            continue
        if elem.VR in _TEXT_VRS:
            new = [text_value(act, elem.VR, v, keyed, patient) for v in _values(elem.value)]
            if any(v is None for v in new):
                del ds[tag]
            elif not new or all(v == "" for v in new):
                elem.value = None if elem.VR in ("IS", "DS") else ""
            else:
                elem.value = new[0] if len(new) == 1 else MultiValue(str, [str(v) for v in new])
            continue
        # binary VRs (OB, OW, UN, US, FL, ...): no value can be kept under Z, D or C
        elem.value = None if elem.VR not in ("OB", "OW", "UN", "OD", "OF", "OL", "OV") else b""


def deidentify_dataset(ds: Dataset, opts: DeidOptions, rec: InstanceRecord) -> Dataset:
    """``ds`` de-identified, in place, and returned (module docstring). ``rec`` is the record of
    ``ds`` as read (:func:`fhirimg.scan.record_from_dataset`), which gives the patient's keys."""
    keyed = Keyed(opts.key)
    patient = record_patient(rec, keyed)
    _walk(ds, opts, keyed, patient)
    ds.PatientIdentityRemoved = "YES"  # (0012,0062)
    ds.DeidentificationMethod = "PS3.15 E Basic Profile; fhirimg keyed pseudonyms"  # (0012,0063)
    items = []
    for code in method_codes(opts):  # (0012,0064) De-identification Method Code Sequence
        item = Dataset()
        item.CodeValue = code.value
        item.CodingSchemeDesignator = code.scheme_designator
        item.CodeMeaning = code.meaning
        items.append(item)
    ds.DeidentificationMethodCodeSequence = Sequence(items)
    if opts.retain_modified_dates:
        ds.LongitudinalTemporalInformationModified = "MODIFIED"  # (0028,0303)
    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        new_meta = FileMetaDataset()
        for keyword in ("MediaStorageSOPClassUID", "TransferSyntaxUID"):
            if keyword in meta:
                setattr(new_meta, keyword, meta[keyword].value)
        if "SOPInstanceUID" in ds:  # (0002,0003) names the new instance (PS3.10 7.1)
            new_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta = new_meta  # (0002,0013) version, (0002,0016) source AE title: not kept
    return ds


def read_and_deidentify(path: str, opts: DeidOptions) -> tuple[Dataset, InstanceRecord]:
    """Read the whole file at ``path`` and de-identify it; also its record as read (original
    values, for the caller's report and re-identification map). Raises for an unreadable file.

    What pydicom says meanwhile is not shown: its words may quote header values.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quiet, _PYDICOM.disabled = _PYDICOM.disabled, True
        try:
            return _read_and_deidentify(path, opts)
        finally:
            _PYDICOM.disabled = quiet


def _read_and_deidentify(path: str, opts: DeidOptions) -> tuple[Dataset, InstanceRecord]:
    import pydicom
    from pydicom.uid import UID, ImplicitVRLittleEndian

    from fhirimg.scan import record_from_dataset

    ds = pydicom.dcmread(path, force=True)
    syntax = ds.file_meta.get("TransferSyntaxUID") if ds.file_meta else None
    # read from the raw elements, before any is converted: the scanner's own decoding
    rec = record_from_dataset(ds, path, transfer_syntax_uid=str(syntax) if syntax else None)
    if not isinstance(rec, InstanceRecord):
        raise ValueError(rec.reason)
    if not ds.file_meta or "TransferSyntaxUID" not in ds.file_meta:
        ds.file_meta = ds.file_meta or FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian  # a bare dataset (PS3.5 10.1)
        ds.file_meta.MediaStorageSOPClassUID = UID(rec.sop_class_uid)
    return deidentify_dataset(ds, opts, rec), rec


def part10_bytes(ds: Dataset) -> bytes:
    """``ds`` as a PS3.10 file (preamble, File Meta, dataset) in its transfer syntax."""
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
