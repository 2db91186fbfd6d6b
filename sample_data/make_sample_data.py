"""Generate fhirimg's synthetic, deterministic DICOM test data.

Run from the repository root::

    .venv/bin/python sample_data/make_sample_data.py [--out DIR]

Every value is made up: names, identifiers, issuers (``2.25.`` OIDs derived from UUIDv5), dates and
pixels. Running the script twice gives byte-identical files: UIDs are derived from fixed keys, dates
are constants, and the only "randomness" is a seeded numpy generator. ``sample_data/README.md``
lists every file and what it exercises.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import tempfile
import uuid
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom import config
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.fileset import FileSet
from pydicom.tag import BaseTag
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    RLELossless,
)

# Namespace for every UID and OID in this data set: 2.25.<UUIDv5(namespace, key) as integer>
# (ISO/IEC 9834-8 UUID-derived OIDs need no registered root).
_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:fhirimg:sample-data")

# SOP classes (PS3.4 Annex B)
CT_IMAGE = UID("1.2.840.10008.5.1.4.1.1.2")
MR_IMAGE = UID("1.2.840.10008.5.1.4.1.1.4")
ENHANCED_MR_IMAGE = UID("1.2.840.10008.5.1.4.1.1.4.1")
US_IMAGE = UID("1.2.840.10008.5.1.4.1.1.6.1")
CR_IMAGE = UID("1.2.840.10008.5.1.4.1.1.1")
SECONDARY_CAPTURE = UID("1.2.840.10008.5.1.4.1.1.7")
BASIC_TEXT_SR = UID("1.2.840.10008.5.1.4.1.1.88.11")
ENCAPSULATED_PDF = UID("1.2.840.10008.5.1.4.1.1.104.1")

DEFAULT_OUT = Path(__file__).resolve().parent / "dicom"


def make_uid(key: str) -> UID:
    """Return a fixed ``2.25.`` UID for *key*.

    >>> make_uid("x") == make_uid("x")
    True
    >>> make_uid("x").startswith("2.25.")
    True
    """
    return UID(f"2.25.{uuid.uuid5(_NAMESPACE, key).int}")


# --------------------------------------------------------------------------------------------------
# Patients and studies
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Patient:
    key: str
    patient_id: str
    name: str
    birth_date: str
    sex: str
    # (0010,0021) Issuer of Patient ID; (0010,0024) qualifiers carry the OID
    issuer_local: str = ""
    issuer_oid: str = ""


@dataclass(frozen=True)
class Study:
    key: str
    patient: Patient
    date: str
    time: str
    description: str
    accession: str = ""
    study_id: str = ""
    timezone_offset: str = ""  # (0008,0201) Timezone Offset From UTC; "" = absent
    charset: Sequence[str] = ()

    @property
    def uid(self) -> UID:
        return make_uid(f"study/{self.key}")


PATIENT_1 = Patient(
    key="p1",
    patient_id="FHIRIMG-0001",
    name="Sample^Alice^Jane^Dr.^PhD",
    birth_date="19700101",
    sex="F",
    issuer_local="FHIRIMG_HOSP",
    issuer_oid=make_uid("issuer/patient-id/fhirimg-hosp"),
)
PATIENT_2 = Patient(
    key="p2",
    patient_id="FHIRIMG-0002",
    # PS3.5 H.3 style: alphabetic = ideographic = phonetic component groups
    name="Yamada^Tarou=山田^太郎=やまだ^たろう",
    birth_date="19800215",
    sex="M",
    issuer_local="FHIRIMG_JP",
    issuer_oid=make_uid("issuer/patient-id/fhirimg-jp"),
)
PATIENT_3 = Patient(
    key="p3",
    patient_id="FHIRIMG-0003",
    name="Odd^Oscar",
    birth_date="19600704",
    sex="O",
)
PATIENT_4 = Patient(
    key="p4",
    patient_id="FHIRIMG-0004",
    name="Dirsample^Dora",
    birth_date="19900909",
    sex="F",
    issuer_local="FHIRIMG_HOSP",
    issuer_oid=make_uid("issuer/patient-id/fhirimg-hosp"),
)

ACCESSION_ISSUER_OID = make_uid("issuer/accession/fhirimg-ris")

STUDY_A = Study(
    key="A",
    patient=PATIENT_1,
    date="20240312",
    time="101530.125",
    description="CT CHEST WITHOUT CONTRAST",
    accession="ACC-A-0001",
    study_id="STA1",
    timezone_offset="+0100",
)
STUDY_B = Study(
    key="B",
    patient=PATIENT_2,
    date="20240405",
    time="141500",
    description="頭部MRI",
    accession="ACC-B-0002",
    study_id="STB1",
    charset=("", "ISO 2022 IR 87"),
)
STUDY_C = Study(
    key="C",
    patient=PATIENT_1,
    date="20240520",
    time="083000.5",
    description="MIXED OBJECTS",
    accession="ACC-C-0003",
    study_id="STC1",
    timezone_offset="+0200",
)
STUDY_ODD = Study(
    key="ODD",
    patient=PATIENT_3,
    date="19960611",  # replaced by a malformed value when written
    time="093000",
    description="ODD VALUES FOR TOLERANT READING",
    accession="ACC-ODD-1",
    study_id="ODD1",
)
STUDY_D = Study(
    key="D",
    patient=PATIENT_4,
    date="20230102",
    time="120000",
    description="DICOMDIR FILE-SET",
    accession="ACC-D-0004",
    study_id="STD1",
)


# --------------------------------------------------------------------------------------------------
# Dataset builders
# --------------------------------------------------------------------------------------------------


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def base_dataset(
    study: Study,
    *,
    series_key: str,
    series_number: int,
    modality: str,
    series_description: str,
    sop_class: UID,
    instance_number: int,
    series_time: str = "",
) -> Dataset:
    """Patient, study, series and SOP common modules shared by every generated object."""
    patient = study.patient
    ds = Dataset()
    if study.charset:
        # (0008,0005) Specific Character Set, first value empty = default repertoire
        ds.SpecificCharacterSet = list(study.charset)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = make_uid(f"instance/{study.key}/{series_key}/{instance_number}")
    ds.StudyDate = study.date
    ds.SeriesDate = study.date
    ds.ContentDate = study.date
    ds.StudyTime = study.time
    ds.SeriesTime = series_time or study.time
    ds.ContentTime = series_time or study.time
    ds.AccessionNumber = study.accession
    if study.accession:
        issuer = Dataset()
        issuer.LocalNamespaceEntityID = "FHIRIMG_RIS"
        issuer.UniversalEntityID = ACCESSION_ISSUER_OID
        issuer.UniversalEntityIDType = "ISO"
        ds.IssuerOfAccessionNumberSequence = [issuer]
    ds.Modality = modality
    ds.Manufacturer = "FHIRIMG SYNTHETIC"
    ds.InstitutionName = "Fhirimg Test Hospital"
    ds.ReferringPhysicianName = "Referrer^Rita^^Dr."
    if study.timezone_offset:
        ds.TimezoneOffsetFromUTC = study.timezone_offset
    ds.StudyDescription = study.description
    ds.SeriesDescription = series_description
    ds.PatientName = patient.name
    ds.PatientID = patient.patient_id
    if patient.issuer_local:
        ds.IssuerOfPatientID = patient.issuer_local
    if patient.issuer_oid:
        qualifiers = Dataset()
        qualifiers.UniversalEntityID = patient.issuer_oid
        qualifiers.UniversalEntityIDType = "ISO"
        ds.IssuerOfPatientIDQualifiersSequence = [qualifiers]
    ds.PatientBirthDate = patient.birth_date
    ds.PatientSex = patient.sex
    ds.StudyInstanceUID = study.uid
    ds.SeriesInstanceUID = make_uid(f"series/{study.key}/{series_key}")
    ds.StudyID = study.study_id
    ds.SeriesNumber = series_number
    ds.InstanceNumber = instance_number
    return ds


def set_pixels(ds: Dataset, arr: np.ndarray, *, bits_stored: int | None = None) -> None:
    """Image Pixel module (C.7.6.3) for a little-endian numpy array."""
    if arr.ndim == 3 and arr.shape[-1] == 3:
        ds.SamplesPerPixel = 3
        ds.PhotometricInterpretation = "RGB"
        ds.PlanarConfiguration = 0  # colour-by-pixel: R1G1B1 R2G2B2 ...
        rows, cols = arr.shape[:2]
    else:
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = ds.get("PhotometricInterpretation", "MONOCHROME2")
        rows, cols = arr.shape[-2:]
        if arr.ndim == 3:
            ds.NumberOfFrames = arr.shape[0]
    ds.Rows = rows
    ds.Columns = cols
    bits = arr.dtype.itemsize * 8
    ds.BitsAllocated = bits
    ds.BitsStored = bits_stored or bits
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if arr.dtype.kind == "i" else 0
    ds.PixelData = arr.astype(arr.dtype.newbyteorder("<")).tobytes()


def save(ds: Dataset, path: Path, transfer_syntax: UID = ExplicitVRLittleEndian) -> None:
    """Write a DICOM Part 10 file (preamble + file meta)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = transfer_syntax
    ds.file_meta = meta
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


# --------------------------------------------------------------------------------------------------
# Pixel content
# --------------------------------------------------------------------------------------------------


def ct_phantom(size: int, z: float) -> np.ndarray:
    """Hounsfield units of a synthetic chest-like phantom at relative height z in [-1, 1]."""
    y, x = np.mgrid[-1 : 1 : size * 1j, -1 : 1 : size * 1j]
    hu = np.full((size, size), -1000.0)
    hu[(x / 0.9) ** 2 + (y / 0.7) ** 2 <= 1] = 40.0  # soft tissue
    lung_r = 0.28 * np.sqrt(max(0.0, 1 - 0.5 * z * z))  # lungs shrink towards the ends
    for cx in (-0.4, 0.4):
        hu[((x - cx) / lung_r) ** 2 + (y / (lung_r * 1.6)) ** 2 <= 1] = -850.0
    hu[(x**2 + (y - 0.45) ** 2) <= 0.08**2] = 700.0  # vertebra
    hu[((x - 0.15 * z) ** 2 + (y + 0.1) ** 2) <= 0.1**2] = 60.0 + 20 * z  # moving "heart"
    return hu


def gradient_ring(size: int, k: int, maximum: int) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size]
    r = np.hypot(x - size / 2, y - size / 2)
    img: np.ndarray = ((np.cos(r / (2.0 + k)) + 1) / 2 * maximum).astype(np.uint16)
    return img


# --------------------------------------------------------------------------------------------------
# Study A: CT chest, patient 1, split across two folders
# --------------------------------------------------------------------------------------------------


def _ct_equipment(ds: Dataset) -> None:
    ds.ManufacturerModelName = "SynthCT 64"
    ds.StationName = "CTSTATION1"
    ds.OperatorsName = "Operator^Otto"
    ds.PerformingPhysicianName = "Performer^Paula^^Dr."
    ds.BodyPartExamined = "CHEST"
    ds.ProcedureCodeSequence = [_code("CTCHEST", "99FHIRIMG", "CT chest without contrast")]
    ds.ReasonForTheRequestedProcedure = "Persistent cough, rule out mass"
    ds.PatientPosition = "HFS"
    ds.FrameOfReferenceUID = make_uid("frame-of-reference/A")
    ds.PositionReferenceIndicator = ""
    ds.KVP = "120"


def write_study_a(out: Path) -> None:
    size, n_slices = 64, 5
    for i in range(n_slices):
        number = i + 1
        z = -1 + 2 * i / (n_slices - 1)
        ds = base_dataset(
            STUDY_A,
            series_key="axial",
            series_number=2,
            modality="CT",
            series_description="AXIAL 5mm",
            sop_class=CT_IMAGE,
            instance_number=number,
            series_time="101600.250",
        )
        _ct_equipment(ds)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.AcquisitionNumber = 1
        ds.SliceThickness = "5"
        ds.ImagePositionPatient = ["-160", "-160", f"{-10 * i}"]
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
        ds.SliceLocation = f"{-10 * i}"
        ds.PixelSpacing = ["5", "5"]
        ds.RescaleIntercept = "-1024"
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        # Two windows: multi-valued (0028,1050)/(0028,1051)
        ds.WindowCenter = ["40", "-600"]
        ds.WindowWidth = ["400", "1500"]
        ds.WindowCenterWidthExplanation = ["MEDIASTINUM", "LUNG"]
        stored = np.round(ct_phantom(size, z) + 1024).astype(np.int16)
        set_pixels(ds, stored, bits_stored=16)
        save(ds, out / "study_a_ct" / f"ct_{number:04d}.dcm")

    # Second series of the same study in ANOTHER folder: a localizer.
    ds = base_dataset(
        STUDY_A,
        series_key="localizer",
        series_number=1,
        modality="CT",
        series_description="TOPOGRAM",
        sop_class=CT_IMAGE,
        instance_number=1,
        series_time="101540",
    )
    _ct_equipment(ds)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    ds.ImagePositionPatient = ["-160", "0", "100"]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "0", "-1"]
    ds.PixelSpacing = ["5", "5"]
    ds.RescaleIntercept = "-1024"
    ds.RescaleSlope = "1"
    ds.WindowCenter = "40"
    ds.WindowWidth = "400"
    y, x = np.mgrid[0:48, 0:32]
    topo = np.where(((x - 16) / 13) ** 2 + ((y - 24) / 22) ** 2 <= 1, 1100, 24)
    set_pixels(ds, topo.astype(np.int16), bits_stored=16)
    save(ds, out / "study_a_ct_localizer" / "localizer_0001.dcm")


# --------------------------------------------------------------------------------------------------
# Study B: MR head, patient 2, Japanese character set
# --------------------------------------------------------------------------------------------------


def _mr_equipment(ds: Dataset) -> None:
    ds.ManufacturerModelName = "SynthMR 1.5T"
    ds.StationName = "MRSTATION1"
    ds.OperatorsName = "Operator^Otto"
    ds.BodyPartExamined = "HEAD"
    ds.ProcedureCodeSequence = [_code("MRHEAD", "99FHIRIMG", "MR head")]
    ds.ReasonForTheRequestedProcedure = "Headache"
    ds.FrameOfReferenceUID = make_uid("frame-of-reference/B")
    ds.PositionReferenceIndicator = ""
    ds.PatientPosition = "HFS"


def write_study_b(out: Path) -> None:
    size = 32
    for i in range(3):
        number = i + 1
        ds = base_dataset(
            STUDY_B,
            series_key="t1",
            series_number=1,
            modality="MR",
            series_description="T1 AXIAL",
            sop_class=MR_IMAGE,
            instance_number=number,
            series_time="141600",
        )
        _mr_equipment(ds)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
        ds.ScanningSequence = "SE"
        ds.SequenceVariant = "NONE"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "2D"
        ds.EchoTime = "15"
        ds.RepetitionTime = "500"
        ds.EchoTrainLength = 1
        ds.SliceThickness = "4"
        ds.ImagePositionPatient = ["-64", "-64", f"{4 * i}"]
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
        ds.PixelSpacing = ["4", "4"]
        set_pixels(ds, gradient_ring(size, i, 4095), bits_stored=12)
        save(ds, out / "study_b_mr" / f"mr_{number:04d}.dcm")

    # Enhanced MR multi-frame instance, NumberOfFrames = 4
    frames = np.stack([gradient_ring(size, 3 + k, 4095) for k in range(4)])
    ds = base_dataset(
        STUDY_B,
        series_key="enhanced",
        series_number=2,
        modality="MR",
        series_description="ENHANCED T2 MULTIFRAME",
        sop_class=ENHANCED_MR_IMAGE,
        instance_number=1,
        series_time="142000",
    )
    _mr_equipment(ds)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
    ds.AcquisitionDateTime = f"{STUDY_B.date}142000"
    ds.ContentQualification = "PRODUCT"
    ds.ResonantNucleus = "1H"
    ds.MagneticFieldStrength = "1.5"
    ds.ImagedNucleus = "1H"
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    ds.PresentationLUTShape = "IDENTITY"
    ds.VolumetricProperties = "VOLUME"
    ds.PixelPresentation = "MONOCHROME"
    ds.ComplexImageComponent = "MAGNITUDE"
    ds.AcquisitionContrast = "T2"
    shared = Dataset()
    measures = Dataset()
    measures.PixelSpacing = ["4", "4"]
    measures.SliceThickness = "4"
    shared.PixelMeasuresSequence = [measures]
    orientation = Dataset()
    orientation.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    shared.PlaneOrientationSequence = [orientation]
    transform = Dataset()
    transform.RescaleIntercept = "0"
    transform.RescaleSlope = "1"
    transform.RescaleType = "US"
    shared.PixelValueTransformationSequence = [transform]
    ds.SharedFunctionalGroupsSequence = [shared]
    per_frame = []
    for k in range(4):
        item = Dataset()
        content = Dataset()
        content.StackID = "1"
        content.InStackPositionNumber = k + 1
        content.FrameAcquisitionNumber = k + 1
        item.FrameContentSequence = [content]
        position = Dataset()
        position.ImagePositionPatient = ["-64", "-64", f"{4 * k}"]
        item.PlanePositionSequence = [position]
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = per_frame
    set_pixels(ds, frames, bits_stored=12)
    save(ds, out / "study_b_mr" / "mr_enhanced_multiframe.dcm")


# --------------------------------------------------------------------------------------------------
# Study C: mixed objects, patient 1 again
# --------------------------------------------------------------------------------------------------


def tiny_pdf(text: str) -> bytes:
    """A minimal one-page PDF 1.4 with a correct cross-reference table."""
    stream = f"BT /F1 10 Tf 10 50 Td ({text}) Tj ET".encode("ascii")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 300 100] "
        b"/Resources << /Font << /F1 5 0 R >> >> /Contents 4 0 R >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)


def write_study_c(out: Path) -> None:
    folder = out / "study_c_mixed"

    # Ultrasound RGB, PlanarConfiguration 0
    ds = base_dataset(
        STUDY_C,
        series_key="us",
        series_number=1,
        modality="US",
        series_description="ABDOMEN US",
        sop_class=US_IMAGE,
        instance_number=1,
        series_time="083100",
    )
    ds.ImageType = ["ORIGINAL", "PRIMARY", "ABDOMINAL", "0001"]
    ds.ManufacturerModelName = "SynthUS"
    ds.BodyPartExamined = "ABDOMEN"
    ds.BurnedInAnnotation = "NO"
    y, x = np.mgrid[0:32, 0:48]
    rgb = np.zeros((32, 48, 3), dtype=np.uint8)
    rgb[..., 0] = (x * 5).astype(np.uint8)
    rgb[..., 1] = (y * 7).astype(np.uint8)
    rgb[..., 2] = np.where((x - 24) ** 2 + (y - 16) ** 2 < 100, 220, 30)
    set_pixels(ds, rgb)
    save(ds, folder / "us_rgb.dcm")

    # Secondary capture, RLE Lossless
    ds = base_dataset(
        STUDY_C,
        series_key="sc-rle",
        series_number=2,
        modality="OT",
        series_description="SECONDARY CAPTURE RLE",
        sop_class=SECONDARY_CAPTURE,
        instance_number=1,
        series_time="083200",
    )
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.ConversionType = "WSD"
    rng = np.random.default_rng(20240520)
    sc = (np.add.outer(np.arange(32), np.arange(32)) * 4 % 256).astype(np.uint8)
    sc[8:24, 8:24] = rng.integers(0, 256, size=(16, 16), dtype=np.uint8)
    set_pixels(ds, sc)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    # generate_instance_uid=False keeps our fixed SOP Instance UID (determinism)
    ds.compress(RLELossless, encoding_plugin="pydicom", generate_instance_uid=False)
    save(ds, folder / "sc_rle.dcm", RLELossless)

    # CR, MONOCHROME1, left hand (laterality makes sense here)
    ds = base_dataset(
        STUDY_C,
        series_key="cr",
        series_number=3,
        modality="CR",
        series_description="HAND PA",
        sop_class=CR_IMAGE,
        instance_number=1,
        series_time="083300",
    )
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.BodyPartExamined = "HAND"
    ds.Laterality = "L"  # (0020,0060) series laterality
    ds.ImageLaterality = "L"
    ds.ViewPosition = "PA"
    ds.PatientOrientation = ["L", "F"]
    ds.PhotometricInterpretation = "MONOCHROME1"  # high values are dark
    ds.WindowCenter = "2048"
    ds.WindowWidth = "4096"
    yy, xx = np.mgrid[0:48, 0:32]
    cr = np.where(((xx - 16) / 9) ** 2 + ((yy - 26) / 18) ** 2 <= 1, 500, 3800)
    cr[(np.abs(xx - 16) < 2) & (yy > 6) & (yy < 40)] = 150  # bone
    set_pixels(ds, cr.astype(np.uint16), bits_stored=12)
    save(ds, folder / "cr_mono1.dcm")

    # Basic Text SR (non-image)
    ds = base_dataset(
        STUDY_C,
        series_key="sr",
        series_number=4,
        modality="SR",
        series_description="REPORT",
        sop_class=BASIC_TEXT_SR,
        instance_number=1,
        series_time="090000",
    )
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = [_code("18748-4", "LN", "Diagnostic Imaging Report")]
    ds.ContinuityOfContent = "SEPARATE"
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"
    ds.ReferencedPerformedProcedureStepSequence = []
    ds.PerformedProcedureCodeSequence = []
    finding = Dataset()
    finding.RelationshipType = "CONTAINS"
    finding.ValueType = "TEXT"
    finding.ConceptNameCodeSequence = [_code("121071", "DCM", "Finding")]
    finding.TextValue = "Synthetic test report. No findings. Not a real patient."
    ds.ContentSequence = [finding]
    save(ds, folder / "sr_basic_text.dcm")

    # Encapsulated PDF (non-image)
    ds = base_dataset(
        STUDY_C,
        series_key="pdf",
        series_number=5,
        modality="DOC",
        series_description="SCANNED REQUEST",
        sop_class=ENCAPSULATED_PDF,
        instance_number=1,
        series_time="090500",
    )
    pdf = tiny_pdf("Synthetic fhirimg test document - not a real patient")
    ds.ConversionType = "WSD"
    ds.BurnedInAnnotation = "YES"
    ds.DocumentTitle = "Scanned request form"  # (0042,0010) -> instance.title
    ds.ConceptNameCodeSequence = []
    ds.AcquisitionDateTime = ""
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocumentLength = len(pdf)
    ds.EncapsulatedDocument = pdf + (b"\x00" if len(pdf) % 2 else b"")
    save(ds, folder / "doc_pdf.dcm")

    # Bare dataset: no preamble, no file meta, implicit VR little endian (old archives)
    ds = base_dataset(
        STUDY_C,
        series_key="legacy-ct",
        series_number=6,
        modality="CT",
        series_description="LEGACY NO META",
        sop_class=CT_IMAGE,
        instance_number=1,
        series_time="091000",
    )
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.RescaleIntercept = "-1024"
    ds.RescaleSlope = "1"
    ds.PixelSpacing = ["10", "10"]
    set_pixels(ds, np.round(ct_phantom(32, 0.0) + 1024).astype(np.int16), bits_stored=16)
    folder.mkdir(parents=True, exist_ok=True)
    pydicom.dcmwrite(
        folder / "legacy_no_meta.dcm",
        ds,
        implicit_vr=True,
        little_endian=True,
        enforce_file_format=False,
    )


# --------------------------------------------------------------------------------------------------
# Odd study (patient 3) and misc files
# --------------------------------------------------------------------------------------------------


def write_odd(out: Path) -> None:
    # These values are wrong on purpose: silence pydicom's validation while writing them.
    writing_mode = config.settings.writing_validation_mode
    config.settings.writing_validation_mode = config.IGNORE
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            for number in (1, 2):
                _write_odd_instance(out / "odd" / f"odd_{number:04d}.dcm", number)
    finally:
        config.settings.writing_validation_mode = writing_mode


def _write_odd_instance(path: Path, number: int) -> None:
    ds = base_dataset(
        STUDY_ODD,
        series_key="s1",
        series_number=1,
        modality="CR",
        series_description="ODD SERIES",
        sop_class=CR_IMAGE,
        instance_number=number,
    )
    ds.StudyDate = "1996.06.11"  # ACR-NEMA style DA, invalid in DICOM 3
    ds.SeriesDate = "1996.06.11"
    if number == 1:
        # (0020,0013) Instance Number "1A": invalid IS; pydicom refuses to convert it, so the
        # element is stored as raw bytes
        ds[0x00200013] = RawDataElement(BaseTag(0x00200013), "IS", 2, b"1A", 0, False, True)
        ds.StudyTime = "09:30:00"  # ACR-NEMA style TM with colons
        ds.PatientBirthDate = ""  # empty type 2
    else:
        ds.SeriesNumber = " 1 "  # valid IS with padding
        ds.StudyTime = "0930"  # partial but legal TM
        ds.PatientSex = "X"  # not a defined term
        ds.PatientName = "Odd^Oscar^^^^Extra"  # six components, PN allows five
        ds.TimezoneOffsetFromUTC = "0100"  # sign missing
    ds.BodyPartExamined = "Left Knee"  # free text, not a CID 4 term
    set_pixels(ds, gradient_ring(16, number, 1000), bits_stored=12)
    save(ds, path)


def write_misc(out: Path) -> None:
    folder = out / "misc"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "notes.txt").write_text(
        "Not a DICOM file. fhirimg scanners must skip it and record an issue.\n",
        encoding="ascii",
    )
    # Truncated copy of a valid file: cut in the middle of the Patient Name value
    source = (out / "study_a_ct" / "ct_0001.dcm").read_bytes()
    name = PATIENT_1.name.encode("ascii")
    cut = source.index(name) + len(name) // 2
    (folder / "truncated.dcm").write_bytes(source[:cut])


# --------------------------------------------------------------------------------------------------
# Study D: a DICOMDIR file-set (patient 4)
# --------------------------------------------------------------------------------------------------


def write_study_d(out: Path) -> None:
    target = out / "dicomdir"
    with tempfile.TemporaryDirectory() as tmp:
        staging = Path(tmp) / "staging"
        for number in (1, 2):
            ds = base_dataset(
                STUDY_D,
                series_key="s1",
                series_number=1,
                modality="OT",
                series_description="FILESET IMAGES",
                sop_class=SECONDARY_CAPTURE,
                instance_number=number,
            )
            ds.ConversionType = "WSD"
            set_pixels(ds, gradient_ring(16, number, 255).astype(np.uint8))
            save(ds, staging / f"d{number}.dcm")
        fs = FileSet()
        fs.ID = "FHIRIMG_D"
        fs.UID = make_uid("fileset/D")
        for number in (1, 2):
            fs.add(staging / f"d{number}.dcm")
        written = Path(tmp) / "fs"
        fs.write(written)
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(written, target)


def write_all(out: Path) -> None:
    write_study_a(out)
    write_study_b(out)
    write_study_c(out)
    write_odd(out)
    write_study_d(out)
    write_misc(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    args = parser.parse_args(argv)
    out: Path = args.out
    write_all(out)
    digest = hashlib.sha256()
    files = sorted(p for p in out.rglob("*") if p.is_file())
    for path in files:
        digest.update(path.relative_to(out).as_posix().encode() + b"\0" + path.read_bytes())
    total = sum(p.stat().st_size for p in files)
    print(f"{len(files)} files, {total} bytes, sha256 {digest.hexdigest()}")  # noqa: T201
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
