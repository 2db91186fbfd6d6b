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
    skip: int = 0
    """Bytes of the file left out: its own preamble and File Meta group, when ``header``
    replaces them (a File Meta that names another instance than the dataset)."""
    storage: tuple[tuple[str, str], ...] = ()
    """fsspec options when ``path`` is an object URL (:func:`fhirimg.objects.open_input`)."""

    @property
    def exact(self) -> bool:
        """Whether the bytes are the file's bytes exactly."""
        return not self.header

    @property
    def mended(self) -> bool:
        """Whether the file's own File Meta group was replaced (see :func:`dicom_source`)."""
        return self.skip > 0

    @property
    def length(self) -> int:
        return len(self.header) + self.file_size - self.skip

    def chunks(self, size: int = 3 * (1 << 20)) -> Iterator[bytes]:
        # Here, not at the top: the CLI's option modules import this module for its enums, and
        # objects brings the record model (issue 19: push and validate start without it).
        from fhirimg.objects import is_url, open_input

        if self.header:
            yield self.header
        if is_url(self.path):  # an object: streamed through fsspec, one ranged GET per chunk
            with open_input(self.path, self.storage) as obj:
                left = max(0, self.file_size - self.skip)
                obj.seek(self.skip)
                while left > 0 and (chunk := obj.read(min(size, left))):
                    left -= len(chunk)
                    yield chunk
            return
        # unbuffered, each read no larger than what is left: a file is read in one call when it
        # fits a chunk (a 3 MiB buffer per read for a 0.5 MB slice cost more than the read)
        with open(self.path, "rb", buffering=0) as fh:
            left = max(0, os.fstat(fh.fileno()).st_size - self.skip)
            fh.seek(self.skip)
            while left > 0 and (chunk := fh.read(min(size, left))):
                left -= len(chunk)
                yield chunk


def dicom_source(
    path: str,
    sop_class_uid: str,
    sop_instance_uid: str,
    storage: tuple[tuple[str, str], ...] = (),
) -> DicomSource:
    """The :class:`DicomSource` of one file (reads its first bytes, up to its File Meta group).

    A Part 10 file whose File Meta (0002,0003) Media Storage SOP Instance UID or (0002,0002)
    Media Storage SOP Class UID is not the dataset's (0008,0018) / (0008,0016) contradicts
    itself (PS3.10 section 7.1 requires them equal; UID-remapping tools that forget group 0002
    write such files). The ImagingStudy names the dataset's instance, so the Binary gets a File
    Meta group that says the same (same Transfer Syntax) in front of the dataset bytes,
    unchanged: the Binary linked from an instance then holds that instance
    (validate's img-binary-sop-instance).
    """
    from fhirimg.objects import is_url, open_input  # see DicomSource.chunks
    from fhirimg.validate.imaging_layer import meta_span  # a leaf parser of group 0002

    if is_url(path):
        with open_input(path, storage) as obj:
            head = obj.read(_META_READ)
            size = int(obj.size)  # type: ignore[attr-defined]  # fsspec's file: from its HEAD
    else:
        with open(path, "rb") as fh:
            head = fh.read(_META_READ)
            size = os.fstat(fh.fileno()).st_size
    if len(head) < 132 or head[128:132] != b"DICM":
        return DicomSource(path, part10_header(sop_class_uid, sop_instance_uid), size, 0, storage)
    span = meta_span(head)
    if span is None:
        return DicomSource(path, b"", size, 0, storage)
    meta, end = span
    instance, sop_class = _uid(meta.get(0x0003)), _uid(meta.get(0x0002))
    if instance == sop_instance_uid and sop_class in (None, sop_class_uid):
        return DicomSource(path, b"", size, 0, storage)
    syntax = _uid(meta.get(0x0010))
    if syntax is None or end >= size:
        return DicomSource(path, b"", size, 0, storage)  # nothing to put a header in front of
    header = part10_header(sop_class_uid, sop_instance_uid, syntax)
    return DicomSource(path, header, size, end, storage)


_META_READ = 16384  # File Meta groups are a few hundred bytes


def _uid(value: bytes | None) -> str | None:
    # UI values are padded to even length with a NUL (PS3.5 section 9.1)
    return value.rstrip(b"\0 ").decode("ascii", "replace") if value is not None else None


def part10_header(
    sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str | None = None
) -> bytes:
    """A 128-byte preamble, ``DICM`` and a File Meta Information group (PS3.10 section 7.1);
    Implicit VR Little Endian unless ``transfer_syntax_uid`` says otherwise."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_file_meta_info
    from pydicom.uid import UID, ImplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class_uid)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    meta.TransferSyntaxUID = (
        UID(transfer_syntax_uid) if transfer_syntax_uid else ImplicitVRLittleEndian
    )
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
