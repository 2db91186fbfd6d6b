"""Generate fhirimg's synthetic, deterministic Structured Report corpus (issue 20).

Run from the repository root::

    .venv/bin/python sample_data/make_sr.py [--out DIR]     # default: sample_data/sr

It writes one made-up CT study (patient ``FHIRIMG-SR-01``) holding:

- ``ct/ct_000N.dcm``: a small generated CT series (3 slices, 16x16);
- ``measurements.dcm``: a TID 1500 Measurement Report written with highdicom (Comprehensive 3D
  SR) referencing those slices: two TID 1410 planar ROI groups, each with a tracking identifier
  and UID, a finding site (one with laterality), NUM measurements with UCUM units, CODE
  qualitative evaluations and a 2D SCOORD region; plus a TID 1420 "Derived Imaging Measurements"
  container (highdicom does not write one) appended with pydicom;
- ``dose.dcm``: a CT Radiation Dose SR (TID 10011) built with pydicom, two irradiation events;
- ``text.dcm``: a Basic Text SR with text only (no Observation comes of it).

and, in another study (``odd/``), SRs whose content is broken on purpose: a NUM without its
unit, a NUM holding text, a by-reference loop, a content tree 1,000 levels deep.

Everything is deterministic: UIDs are ``2.25.`` UUIDv5 integers of fixed keys, dates constants,
pixels a function of their position; highdicom's own content date and time are overwritten.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import sys
import uuid
from pathlib import Path

import highdicom as hd
import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.coding import Code
from pydicom.uid import UID, ExplicitVRLittleEndian

_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:fhirimg:sample-data:sr")
DEFAULT_OUT = Path(__file__).resolve().parent / "sr"

CT_IMAGE = UID("1.2.840.10008.5.1.4.1.1.2")
XRAY_DOSE_SR = UID("1.2.840.10008.5.1.4.1.1.88.67")  # X-Ray Radiation Dose SR Storage
BASIC_TEXT_SR = UID("1.2.840.10008.5.1.4.1.1.88.11")
ENHANCED_SR = UID("1.2.840.10008.5.1.4.1.1.88.22")
DATE, TIME = "20250115", "093000"


def make_uid(key: str) -> UID:
    """A fixed ``2.25.`` UID for ``key``.

    >>> make_uid("x") == make_uid("x")
    True
    """
    return UID(f"2.25.{uuid.uuid5(_NAMESPACE, key).int}")


def _patient_study(ds: Dataset, study: str) -> None:
    ds.PatientName = "Sr^Sample"
    ds.PatientID = "FHIRIMG-SR-01" if study == "M" else "FHIRIMG-SR-02"
    ds.PatientBirthDate = "19750505"
    ds.PatientSex = "F"
    ds.StudyInstanceUID = make_uid(f"study/{study}")
    ds.StudyDate, ds.StudyTime = DATE, TIME
    ds.TimezoneOffsetFromUTC = "+0000"
    ds.AccessionNumber = f"ACC-SR-{study}"
    ds.StudyID = f"SR{study}"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "CT abdomen, measurements"


def _file(ds: Dataset, path: Path) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def ct_series(out: Path) -> list[Dataset]:
    """Three 16x16 CT slices of study M, series 1."""
    slices = []
    for n in (1, 2, 3):
        ds = Dataset()
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.SOPClassUID = CT_IMAGE
        ds.SOPInstanceUID = make_uid(f"instance/M/ct/{n}")
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        _patient_study(ds, "M")
        ds.SeriesInstanceUID = make_uid("series/M/ct")
        ds.SeriesNumber = 1
        ds.InstanceNumber = n
        ds.Modality = "CT"
        ds.Manufacturer = "FHIRIMG"
        ds.ManufacturerModelName = "Phantom CT"
        ds.BodyPartExamined = "ABDOMEN"
        ds.FrameOfReferenceUID = make_uid("frame/M")
        ds.PositionReferenceIndicator = ""
        ds.SliceThickness = "5"
        ds.PixelSpacing = ["0.5", "0.5"]
        ds.ImagePositionPatient = ["0", "0", str(5 * n)]
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
        ds.ContentDate, ds.ContentTime = DATE, TIME
        ds.SeriesDate, ds.SeriesTime = DATE, TIME
        ds.Rows = ds.Columns = 16
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
        ds.PixelRepresentation = 0
        ds.RescaleIntercept, ds.RescaleSlope = "-1024", "1"
        ds.KVP = "120"
        pixels = (np.add.outer(np.arange(16), np.arange(16)) * 8 * n).astype(np.uint16)
        ds.PixelData = pixels.tobytes()
        _file(ds, out / "ct" / f"ct_{n:04d}.dcm")
        slices.append(ds)
    return slices


def measurement_report(out: Path, slices: list[Dataset]) -> None:
    """TID 1500 with two TID 1410 groups and a TID 1420 container, as highdicom writes it."""
    mm, mm2 = Code("mm", "UCUM", "millimeter"), Code("mm2", "UCUM", "square millimeter")
    observer = hd.sr.ObserverContext(
        observer_type=Code("121007", "DCM", "Device"),
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=make_uid("device/lesion-finder"), name="LesionFinder"
        ),
    )
    algorithm = hd.sr.AlgorithmIdentification(name="LesionFinder", version="1.2")

    def group(n: int, site: hd.sr.FindingSite, graphic: str, points: list[float]) -> object:
        source = hd.sr.SourceImageForRegion(
            referenced_sop_class_uid=CT_IMAGE,
            referenced_sop_instance_uid=slices[n].SOPInstanceUID,
        )
        region = hd.sr.ImageRegion(
            graphic_type=graphic,
            graphic_data=np.array(points, dtype=float).reshape(-1, 2),
            source_image=source,
        )
        measurements = [
            hd.sr.Measurement(name=Code("103339001", "SCT", "Long Axis"), value=20.5 + n, unit=mm),
            hd.sr.Measurement(name=Code("42798000", "SCT", "Area"), value=150.25 * n, unit=mm2),
        ]
        if n == 2:  # a concept from a private scheme (issue 16's rule: urn:dicom:scheme:)
            measurements.append(
                hd.sr.Measurement(
                    name=Code("LV-1", "99FHIRIMG", "Lesion score"),
                    value=3,
                    unit=Code("1", "UCUM", "no units"),
                )
            )
        evaluations = [
            hd.sr.QualitativeEvaluation(
                name=Code("RID5", "RADLEX", "Shape"),
                value=Code("RID5800", "RADLEX", "Round")
                if n == 1
                else Code("C25228", "NCIt", "Irregular"),
            )
        ]
        return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=make_uid(f"tracking/lesion-{n}"), identifier=f"lesion-{n}"
            ),
            referenced_region=region,
            finding_type=Code("52988006", "SCT", "Lesion"),
            finding_sites=[site],
            algorithm_id=algorithm,
            measurements=measurements,
            qualitative_evaluations=evaluations,
            finding_category=Code("49755003", "SCT", "Morphologically abnormal structure"),
        )

    liver = hd.sr.FindingSite(Code("10200004", "SCT", "Liver"))
    kidney = hd.sr.FindingSite(
        Code("64033007", "SCT", "Kidney"), laterality=Code("7771000", "SCT", "Left")
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=Code("77477000", "SCT", "CT"),
        imaging_measurements=[
            group(1, liver, "POLYLINE", [2.0, 2.0, 8.0, 2.0, 8.0, 6.0, 2.0, 2.0]),
            group(2, kidney, "POINT", [10.5, 11.5]),
        ],
    )
    sr = hd.sr.Comprehensive3DSR(
        evidence=slices,
        content=report,
        series_instance_uid=make_uid("series/M/sr"),
        series_number=10,
        sop_instance_uid=make_uid("instance/M/sr/measurements"),
        instance_number=1,
        manufacturer="FHIRIMG",
        is_complete=True,
        is_final=True,
    )
    # TID 1420 Derived Imaging Measurements (DCM 126011), which highdicom does not write: a NUM
    # "Sum of diameters" under the root, INFERRED FROM both groups' long axes.
    derived = _container("CONTAINS", ("126011", "DCM", "Derived Imaging Measurements"))
    total = _num(
        "CONTAINS", ("103339001", "SCT", "Long Axis"), "44.0", ("mm", "UCUM", "millimeter")
    )
    total.ObservationUID = make_uid("observation/M/sum-of-long-axes")
    derived.ContentSequence = DicomSequence([total])
    buf = io.BytesIO()  # highdicom's ContentSequence takes only its own items: a plain copy
    sr.save_as(buf, enforce_file_format=True)
    buf.seek(0)
    sr = dcmread(buf)
    sr.ContentSequence.append(derived)
    for attr in ("ContentDate", "SeriesDate", "InstanceCreationDate"):
        if attr in sr:
            setattr(sr, attr, DATE)
    for attr in ("ContentTime", "SeriesTime", "InstanceCreationTime"):
        if attr in sr:
            setattr(sr, attr, TIME)
    for equipment in sr.get("ContributingEquipmentSequence", []):  # highdicom: "now"
        equipment.ContributionDateTime = DATE + TIME
    sr.TimezoneOffsetFromUTC = "+0000"
    sr.ManufacturerModelName = "LesionFinder"
    sr.StudyID, sr.StudyDescription = "SRM", "CT abdomen, measurements"
    sr.SpecificCharacterSet = "ISO_IR 100"
    sr.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    for tag in ("ImplementationClassUID", "ImplementationVersionName"):
        if tag in sr.file_meta:
            del sr.file_meta[tag]
    sr.save_as(out / "measurements.dcm", enforce_file_format=True)


# --- plain pydicom content items (PS3.3 C.17.3) --------------------------------------------------


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    ds = Dataset()
    ds.CodeValue, ds.CodingSchemeDesignator, ds.CodeMeaning = value, scheme, meaning
    return ds


def _item(relationship: str, value_type: str, name: tuple[str, str, str]) -> Dataset:
    ds = Dataset()
    ds.RelationshipType = relationship  # (0040,A010)
    ds.ValueType = value_type  # (0040,A040)
    ds.ConceptNameCodeSequence = DicomSequence([_code(*name)])  # (0040,A043)
    return ds


def _container(relationship: str, name: tuple[str, str, str]) -> Dataset:
    ds = _item(relationship, "CONTAINER", name)
    ds.ContinuityOfContent = "SEPARATE"  # (0040,A050)
    return ds


def _num(
    relationship: str, name: tuple[str, str, str], value: str, unit: tuple[str, str, str] | None
) -> Dataset:
    ds = _item(relationship, "NUM", name)
    measured = Dataset()
    measured.NumericValue = value  # (0040,A30A)
    if unit is not None:
        measured.MeasurementUnitsCodeSequence = DicomSequence([_code(*unit)])  # (0040,08EA)
    ds.MeasuredValueSequence = DicomSequence([measured])  # (0040,A300)
    return ds


def _text(relationship: str, name: tuple[str, str, str], text: str) -> Dataset:
    ds = _item(relationship, "TEXT", name)
    ds.TextValue = text  # (0040,A160)
    return ds


def _codeitem(
    relationship: str, name: tuple[str, str, str], value: tuple[str, str, str]
) -> Dataset:
    ds = _item(relationship, "CODE", name)
    ds.ConceptCodeSequence = DicomSequence([_code(*value)])  # (0040,A168)
    return ds


def _uidref(relationship: str, name: tuple[str, str, str], uid: str) -> Dataset:
    ds = _item(relationship, "UIDREF", name)
    ds.UID = uid  # (0040,A124)
    return ds


def _sr(study: str, series: str, key: str, sop_class: UID, root: tuple[str, str, str]) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = make_uid(f"instance/{study}/{series}/{key}")
    _patient_study(ds, study)
    ds.SeriesInstanceUID = make_uid(f"series/{study}/{series}")
    ds.SeriesNumber = 20 if series == "dose" else 30
    ds.InstanceNumber = 1
    ds.Modality = "SR"
    ds.Manufacturer = "FHIRIMG"
    ds.ManufacturerModelName = "Phantom CT"
    ds.DeviceUID = make_uid("device/phantom-ct")  # (0018,1002)
    ds.ContentDate, ds.ContentTime = DATE, "094500"
    ds.SeriesDate, ds.SeriesTime = DATE, TIME
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = DicomSequence([_code(*root)])
    ds.ContinuityOfContent = "SEPARATE"
    ds.CompletionFlag, ds.VerificationFlag = "COMPLETE", "UNVERIFIED"
    ds.PreliminaryFlag = "FINAL"  # (0040,A496)
    return ds


def _template(ds: Dataset, tid: str) -> None:
    tpl = Dataset()
    tpl.MappingResource, tpl.TemplateIdentifier = "DCMR", tid  # (0008,0105), (0040,DB00)
    ds.ContentTemplateSequence = DicomSequence([tpl])


def dose_report(out: Path) -> None:
    """CT Radiation Dose SR, PS3.16 TID 10011 (rows cited per item), two irradiation events."""
    # TID 10011 row 1: root CONTAINER EV (113701, DCM, "X-Ray Radiation Dose Report")
    ds = _sr("M", "dose", "ct-dose", XRAY_DOSE_SR, ("113701", "DCM", "X-Ray Radiation Dose Report"))
    _template(ds, "10011")
    items = [
        # TID 10011 row 2: HAS CONCEPT MOD CODE EV (121058, DCM, "Procedure reported") =
        # (P5-08000, SRT, "Computed Tomography X-Ray") in the 2016 edition; SCT 77477000 now
        _codeitem("HAS CONCEPT MOD", ("121058", "DCM", "Procedure reported"),
                  ("77477000", "SCT", "Computed Tomography")),
    ]  # fmt: skip
    # TID 10011 row 6 includes TID 1002 Observer Context; row 7: HAS OBS CONTEXT CODE EV
    # (113705, DCM, "Scope of Accumulation") = (113014, DCM, "Study"), with its child UIDREF
    # EV (110180, DCM, "Study Instance UID") (TID 10011 row 8)
    scope = _codeitem("HAS OBS CONTEXT", ("113705", "DCM", "Scope of Accumulation"),
                      ("113014", "DCM", "Study"))  # fmt: skip
    scope.ContentSequence = DicomSequence(
        [_uidref("HAS PROPERTIES", ("110180", "DCM", "Study Instance UID"), ds.StudyInstanceUID)]
    )
    items.append(scope)
    # TID 10011 row 9 includes TID 10012 CT Accumulated Dose Data: CONTAINER EV
    # (113811, DCM, "CT Accumulated Dose Data") with TID 10012 row 1 NUM EV (113812, DCM,
    # "Total Number of Irradiation Events"), units {events}, and row 2 NUM EV (113813, DCM,
    # "CT Dose Length Product Total"), units mGy.cm
    accumulated = _container("CONTAINS", ("113811", "DCM", "CT Accumulated Dose Data"))
    accumulated.ContentSequence = DicomSequence([
        _num("CONTAINS", ("113812", "DCM", "Total Number of Irradiation Events"), "2",
             ("{events}", "UCUM", "events")),
        _num("CONTAINS", ("113813", "DCM", "CT Dose Length Product Total"), "612.5",
             ("mGy.cm", "UCUM", "mGy.cm")),
    ])  # fmt: skip
    items.append(accumulated)
    # TID 10011 row 10 includes TID 10013 CT Irradiation Event Data, 1-n: CONTAINER EV
    # (113819, DCM, "CT Acquisition")
    for n, (ctdi, dlp, protocol) in enumerate(
        [("12.5", "312.5", "Abdomen routine"), ("10.0", "300.0", "Abdomen delayed")], start=1
    ):
        event = _container("CONTAINS", ("113819", "DCM", "CT Acquisition"))
        # TID 10013 row 2: TEXT (125203, DCM, "Acquisition Protocol"); row 3: CODE (123014,
        # DCM, "Target Region"); row 4: CODE (113820, DCM, "CT Acquisition Type"); row 6:
        # UIDREF (113769, DCM, "Irradiation Event UID")
        children = [
            _text("CONTAINS", ("125203", "DCM", "Acquisition Protocol"), protocol),
            _codeitem("CONTAINS", ("123014", "DCM", "Target Region"),
                      ("818981001", "SCT", "Abdomen")),
            _codeitem("CONTAINS", ("113820", "DCM", "CT Acquisition Type"),
                      ("P5-08001", "SRT", "Spiral Acquisition")),
            _uidref("CONTAINS", ("113769", "DCM", "Irradiation Event UID"),
                    make_uid(f"irradiation/M/{n}")),
        ]  # fmt: skip
        # TID 10013 row 10: CONTAINER (113829, DCM, "CT Dose") with NUM (113830, DCM,
        # "Mean CTDIvol") mGy, CODE (113835, DCM, "CTDIw Phantom Type") and NUM (113838, DCM,
        # "DLP") mGy.cm
        dose = _container("CONTAINS", ("113829", "DCM", "CT Dose"))
        dose.ContentSequence = DicomSequence([
            _num("CONTAINS", ("113830", "DCM", "Mean CTDIvol"), ctdi, ("mGy", "UCUM", "mGy")),
            _codeitem("CONTAINS", ("113835", "DCM", "CTDIw Phantom Type"),
                      ("113691", "DCM", "IEC Body Dosimetry Phantom")),
            _num("CONTAINS", ("113838", "DCM", "DLP"), dlp, ("mGy.cm", "UCUM", "mGy.cm")),
        ])  # fmt: skip
        children.append(dose)
        event.ContentSequence = DicomSequence(children)
        items.append(event)
    ds.ContentSequence = DicomSequence(items)
    _file(ds, out / "dose.dcm")


def text_report(out: Path) -> None:
    """A Basic Text SR: a title and a paragraph; not a measurement or dose report."""
    ds = _sr("M", "text", "text", BASIC_TEXT_SR, ("18748-4", "LN", "Diagnostic Imaging Report"))
    ds.ContentSequence = DicomSequence(
        [_text("CONTAINS", ("121071", "DCM", "Finding"), "No focal lesion beyond those measured.")]
    )
    _file(ds, out / "text.dcm")


def odd_reports(out: Path) -> None:
    """Study O: TID 1500 content broken on purpose; each fault must cost only its own item."""
    title = ("126000", "DCM", "Imaging Measurement Report")

    def report(key: str, group_items: list[Dataset]) -> Dataset:
        ds = _sr("O", "sr", key, ENHANCED_SR, title)
        _template(ds, "1500")
        measurements = _container("CONTAINS", ("126010", "DCM", "Imaging Measurements"))
        group = _container("CONTAINS", ("125007", "DCM", "Measurement Group"))
        group.ContentSequence = DicomSequence(
            [
                _text("HAS OBS CONTEXT", ("112039", "DCM", "Tracking Identifier"), key),
                _num("CONTAINS", ("42798000", "SCT", "Area"), "12.5", ("mm2", "UCUM", "mm2")),
                *group_items,
            ]
        )
        measurements.ContentSequence = DicomSequence([group])
        ds.ContentSequence = DicomSequence([measurements])
        return ds

    no_unit = report("no-unit", [_num("CONTAINS", ("103339001", "SCT", "Long Axis"), "7", None)])
    _file(no_unit, out / "odd" / "no_unit.dcm")
    wrong = _num("CONTAINS", ("103339001", "SCT", "Long Axis"), "7", ("mm", "UCUM", "mm"))
    wrong.MeasuredValueSequence[0].NumericValue = None
    wrong.TextValue = "seven"  # a NUM carrying text: the wrong value type
    _file(report("wrong-type", [wrong]), out / "odd" / "wrong_type.dcm")
    # By-reference relationship (0008,1199)>(0040,DB73) Referenced Content Item Identifier
    # pointing at its own ancestors: 1 (root) / 1 (Imaging Measurements) / 1 (group).
    loop = Dataset()
    loop.RelationshipType = "INFERRED FROM"
    loop.ReferencedContentItemIdentifier = [1, 1, 1]
    _file(report("loop", [loop]), out / "odd" / "loop.dcm")
    # 1,000 nested CONTAINERs under the group, a NUM at the bottom.
    deep = _num("CONTAINS", ("103339001", "SCT", "Long Axis"), "1", ("mm", "UCUM", "mm"))
    for _ in range(1000):
        outer = _container("CONTAINS", ("125007", "DCM", "Measurement Group"))
        outer.ContentSequence = DicomSequence([deep])
        deep = outer
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 20_000))  # pydicom writes sequences recursively
    try:
        _file(report("deep", [deep]), out / "odd" / "deep.dcm")
    finally:
        sys.setrecursionlimit(limit)


def write_all(out: Path) -> str:
    """Write the corpus into ``out``; the sha256 over every file, in path order."""
    slices = ct_series(out)
    measurement_report(out, slices)
    dose_report(out)
    text_report(out)
    odd_reports(out)
    digest = hashlib.sha256()
    for path in sorted(out.rglob("*.dcm")):
        digest.update(path.relative_to(out).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    print(write_all(args.out))  # noqa: T201 - a script's output


if __name__ == "__main__":
    main()
