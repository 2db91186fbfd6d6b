"""DICOM bytes as FHIR Binary: ids, resources, the instance-binary link extension, the bytes.

One Binary per instance (``fhir-imaging-spec.md``, Binary): ``contentType`` application/dicom,
``securityContext`` pointing at the Patient, the file's bytes. Binary is not searchable, so the id is
deterministic (UUIDv5 of the SOP Instance UID) and the request is ``PUT Binary/<id>``: a re-push
updates instead of duplicating.

The link from ``ImagingStudy.series.instance`` to its Binary is an extension this project defines
(no HL7, IHE or DICOM one exists): :data:`EXTENSION_URL`, StructureDefinitions in
``fhirimg/data/structuredefinitions/`` and ``docs/binary-link-extension.md``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from fhirimg import ids, jsonio
from fhirimg.jsonio import JSON

EXTENSION_URL = "https://fhirimg.dev/fhir/StructureDefinition/instance-binary"
DICOM_MIME = "application/dicom"  # RFC 3240: a DICOM PS3.10 file
BINARIES_SUFFIX = ".binaries"


class BinaryMode(StrEnum):
    """Where the DICOM bytes of each Binary go."""

    INLINE = "inline"  # base64 ``Binary.data`` inside the bundle
    BESIDE = "beside"  # ``<bundle stem>.binaries/<id>.dcm`` next to the bundle, raw


def binary_id(sop_instance_uid: str) -> str:
    """The Binary id of an instance: a UUIDv5 of its SOP Instance UID (36 characters, a valid id).

    >>> binary_id("1.2.3") == binary_id("1.2.3") != binary_id("1.2.4")
    True
    """
    return ids.resource_uuid("Binary", sop_instance_uid)


def binary_full_url(sop_instance_uid: str) -> str:
    """The entry fullUrl of an instance's Binary: ``urn:uuid:`` + its id (same UUID)."""
    return "urn:uuid:" + binary_id(sop_instance_uid)


def link_extension(reference: str) -> JSON:
    """The instance-binary extension for ``ImagingStudy.series.instance``.

    >>> link_extension("Binary/abc")["valueReference"]
    {'reference': 'Binary/abc'}
    """
    return {"url": EXTENSION_URL, "valueReference": {"reference": reference}}


def binaries_folder(bundle_name: str) -> str:
    """The folder beside a bundle that holds its Binaries' bytes.

    >>> binaries_folder("study-1.json")
    'study-1.binaries'
    """
    stem = bundle_name[:-5] if bundle_name.endswith(".json") else bundle_name
    return stem + BINARIES_SUFFIX


@dataclass(frozen=True)
class DicomSource:
    """The ``application/dicom`` bytes of one file, read in chunks when needed.

    A PS3.10 file (preamble + ``DICM``, PS3.10 section 7.1) is its own bytes, exactly. A bare
    dataset (old archives: no preamble, no File Meta Information) is not an application/dicom
    object (RFC 3240 names the PS3.10 format), so ``header`` puts a preamble and a File Meta group
    in front and the dataset bytes follow unchanged; its Transfer Syntax is Implicit VR Little
    Endian, the only one PS3.5 allows without meta information (PS3.5 section 10.1).
    """

    path: str
    header: bytes  # b"" for a PS3.10 file
    file_size: int

    @property
    def exact(self) -> bool:
        """Whether the bytes are the file's bytes exactly."""
        return not self.header

    @property
    def length(self) -> int:
        return len(self.header) + self.file_size

    def chunks(self, size: int = 3 * (1 << 20)) -> Iterator[bytes]:
        if self.header:
            yield self.header
        with open(self.path, "rb") as fh:
            while chunk := fh.read(size):
                yield chunk


def dicom_source(path: str, sop_class_uid: str, sop_instance_uid: str) -> DicomSource:
    """The :class:`DicomSource` of one file (reads its first 132 bytes)."""
    with open(path, "rb") as fh:
        head = fh.read(132)
        size = os.fstat(fh.fileno()).st_size
    if len(head) == 132 and head[128:132] == b"DICM":
        return DicomSource(path, b"", size)
    return DicomSource(path, part10_header(sop_class_uid, sop_instance_uid), size)


def part10_header(sop_class_uid: str, sop_instance_uid: str) -> bytes:
    """A 128-byte preamble, ``DICM`` and a File Meta Information group (PS3.10 section 7.1)."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_file_meta_info
    from pydicom.uid import UID, ImplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class_uid)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    meta.TransferSyntaxUID = ImplicitVRLittleEndian
    buf = DicomBytesIO()
    write_file_meta_info(buf, meta, enforce_standard=True)
    return b"\0" * 128 + b"DICM" + buf.getvalue()


def binary_resource(binary_id_: str, patient_ref: str, data: str | None) -> JSON:
    """A Binary resource (R4 and R5 alike); ``data`` is base64 text (or a placeholder)."""
    res: JSON = {
        "resourceType": "Binary",
        "id": binary_id_,
        "contentType": DICOM_MIME,
        # Binary.securityContext: access to the bytes is decided as for the Patient (binary.html)
        "securityContext": {"reference": patient_ref},
    }
    if data is not None:
        res["data"] = data
    return res


def write_beside(
    folder: Path, binary_id_: str, source: DicomSource, mode: jsonio.Modes = jsonio.PRIVATE
) -> int:
    """Copy one Binary's bytes to ``<folder>/<id>.dcm`` (temporary file + rename, so a reader
    never sees half a file). Returns the number of bytes written.

    ``folder`` is made with ``mode`` when missing, and must not be a symbolic link (one planted
    in the output folder would receive the DICOM copies): :class:`~fhirimg.errors.InputError`.
    """
    jsonio.make_folder(folder, mode)
    written = 0
    with jsonio.atomic_writer(folder / f"{binary_id_}.dcm", mode=mode) as fh:
        for chunk in source.chunks():
            fh.write(chunk)
            written += len(chunk)
    return written


def b64_len(n: int) -> int:
    """Length of the base64 text of ``n`` bytes (padding included).

    >>> [b64_len(n) for n in (0, 1, 2, 3, 4)]
    [0, 4, 4, 4, 8]
    """
    return (n + 2) // 3 * 4


__all__ = [
    "BINARIES_SUFFIX",
    "DICOM_MIME",
    "EXTENSION_URL",
    "BinaryMode",
    "DicomSource",
    "binaries_folder",
    "binary_full_url",
    "binary_id",
    "binary_resource",
    "link_extension",
    "dicom_source",
    "write_beside",
]
