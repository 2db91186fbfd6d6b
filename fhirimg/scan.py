"""Find DICOM files and read their headers into :class:`~fhirimg.model.InstanceRecord`.

:func:`read_file` is a pure function of one path (no shared state, no printing), so it runs the same
in this process, a process pool, or a cluster executor. It never raises for a bad file: every odd
input becomes a :class:`~fhirimg.model.FileProblem` with the reason.

DICOM is recognised by content, not by extension (PS3.10 7.1: 128-byte preamble + ``DICM``; older
files start directly with a data element), and only the header is read: parsing stops before
(7FE0,0010) Pixel Data, and large values before it (an encapsulated PDF, private blobs) are deferred,
so memory follows the header, never the file.
"""

from __future__ import annotations

import logging
import os
import struct
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

from pydicom.charset import convert_encodings, decode_bytes
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.filereader import read_partial
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag, Tag

from fhirimg.model import Code, FileProblem, FileStatus, InstanceRecord, Issuer

logger = logging.getLogger(__name__)

MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"  # PS3.4 Annex F: the DICOMDIR SOP class
_DEFER = 64 * 1024  # values larger than this before the pixels are not loaded
_STOP_TAGS = {
    0x7FE00008,  # Float Pixel Data
    0x7FE00009,  # Double Float Pixel Data
    0x7FE00010,  # Pixel Data
    0x00041220,  # Directory Record Sequence: a DICOMDIR's body, never needed
}


_LAST_WANTED = 0x00700080  # (0070,0080) Content Label: nothing after it is needed


def _stop(tag: BaseTag, vr: str | None, length: int) -> bool:
    return int(tag) in _STOP_TAGS or int(tag) > _LAST_WANTED


def iter_files(paths: Iterable[str | Path], exclude: Iterable[Path] = ()) -> Iterator[str]:
    """Yield every regular file under ``paths`` (files as given, folders recursively), in a stable
    order: folders walked in sorted order, so the same tree always yields the same sequence.
    Folders in ``exclude`` (fhirimg's own output, for instance) are not entered.

    A path that does not exist is yielded too, so that it is reported rather than forgotten.
    """
    skip = {os.path.realpath(p) for p in exclude}
    for given in paths:
        p = os.fspath(given)
        if not os.path.isdir(p):
            yield p
            continue
        for root, dirs, files in os.walk(p):
            dirs[:] = sorted(d for d in dirs if os.path.realpath(os.path.join(root, d)) not in skip)
            for name in sorted(files):
                yield os.path.join(root, name)


def sniff(head: bytes) -> str | None:
    """Tell DICOM from other files by their first bytes.

    Returns ``"part10"`` for a PS3.10 file (preamble + ``DICM``), ``"bare"`` for a dataset without
    preamble (an element tag of group 0002/0008 first, little endian), ``None`` otherwise.

    >>> sniff(b"\\0" * 128 + b"DICM" + b"\\2\\0\\0\\0UL"), sniff(b"\\x08\\x00\\x05\\x00CS\\x0a\\x00"), sniff(b"hello")
    ('part10', 'bare', None)
    """
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "part10"
    if len(head) < 8:
        return None
    group, element = struct.unpack("<HH", head[:4])
    if group not in (0x0002, 0x0008) or element > 0x2FFF:
        return None
    vr = head[4:6]
    if vr.isalpha() and vr.isupper():
        return "bare"  # explicit VR little endian
    (length,) = struct.unpack("<I", head[4:8])
    return "bare" if length < 0x10000 else None  # implicit VR: a plausible value length


# The tags fhirimg reads. Values are decoded from the raw bytes by what fhirimg expects of each
# tag (PS3.6), which is faster than pydicom's element conversion and works the same for implicit-VR
# files; only the character-set-dependent text goes through pydicom's charset decoder.
_PN = {0x00100010, 0x00080090, 0x00081060, 0x00081050, 0x00081070}
_CHARSET_TEXT = _PN | {
    0x00100020, 0x00100021, 0x00400031, 0x00400032, 0x00080050, 0x00200010, 0x00081030,
    0x00080104, 0x00401002, 0x00081040, 0x0008103E, 0x00080070, 0x00081090, 0x00081010,
    0x00420010, 0x00700080, 0x00080102, 0x00080100,
}  # fmt: skip
_US = {0x00280010, 0x00280011, 0x00280100}  # Rows, Columns, Bits Allocated: binary US
_PN_DELIMS = {0x5E, 0x3D}  # ^ and = (PS3.5 6.2.1)
_TEXT_DELIMS = {0x5C, 0x0D, 0x0A, 0x09, 0x0C}  # backslash and control characters
_SEQUENCES = {0x00100024, 0x00080051, 0x00081032, 0x0040100A, 0x0040A043}
_WANTED: list[BaseTag | int] = sorted(
    _CHARSET_TEXT
    | _US
    | _SEQUENCES
    | {
        0x00080005, 0x00080008, 0x00080016, 0x00080018, 0x00080020, 0x00080021, 0x00080023,
        0x0008002A, 0x00080030, 0x00080031, 0x00080033, 0x00080060, 0x00080061, 0x00080201,
        0x00100030, 0x00100040, 0x00180015, 0x0020000D, 0x0020000E, 0x00200011, 0x00200013,
        0x00200060, 0x00280008, 0x00400033, 0x00041200,
    }
)  # fmt: skip


def _raw_bytes(ds: Dataset, tag: int) -> bytes | None:
    """The undecoded value bytes of an element (or its text when pydicom already converted it)."""
    elem = ds.get_item(tag)
    if elem is None:
        return None
    if isinstance(elem, RawDataElement):
        return elem.value if isinstance(elem.value, bytes) else None
    value = elem.value  # already converted (e.g. the file meta)
    if value is None:
        return None
    if isinstance(value, bytes):
        return value
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(str(v) for v in value).encode("utf-8")
    return str(value).encode("utf-8")


def _text(ds: Dataset, tag: int) -> str | None:
    """An element's value as stripped text, or None when absent or empty.

    No type conversion, so that a malformed IS/DA/TM cannot raise; text VRs are decoded with the
    dataset's (0008,0005) Specific Character Set.
    """
    raw = _raw_bytes(ds, tag)
    if not raw:
        return None
    if tag in _CHARSET_TEXT and (b"\x1b" in raw or not raw.isascii()):  # ESC: ISO 2022
        encodings = getattr(ds, "_fhirimg_encodings", None) or ["iso8859"]
        text = decode_bytes(raw, encodings, _PN_DELIMS if tag in _PN else _TEXT_DELIMS)
    else:
        text = raw.decode("ascii", "replace")
    text = text.strip(" \0")
    return text or None


def _multi(ds: Dataset, tag: int) -> tuple[str, ...]:
    """A multi-valued element (values separated by backslash) as a tuple of non-empty strings."""
    text = _text(ds, tag)
    if not text:
        return ()
    return tuple(v for v in (p.strip(" \0") for p in text.split("\\")) if v)


def _us(ds: Dataset, tag: int) -> int | None:
    """A binary US value (Rows, Columns, ...), in the dataset's byte order."""
    elem = ds.get_item(tag)
    if elem is None:
        return None
    if isinstance(elem, RawDataElement):
        if not isinstance(elem.value, bytes) or len(elem.value) < 2:
            return None
        return int(struct.unpack("<H" if elem.is_little_endian else ">H", elem.value[:2])[0])
    return int(elem.value) if isinstance(elem.value, int) else None


def _set_encodings(ds: Dataset, inherited: list[str] | None = None) -> None:
    """Remember the Python codecs for (0008,0005) Specific Character Set on the dataset."""
    raw = _raw_bytes(ds, 0x00080005)
    if raw is None:
        encodings = inherited or ["iso8859"]
    else:
        terms = [t.strip(" \0") for t in raw.decode("ascii", "replace").split("\\")]
        encodings = convert_encodings(terms) if any(terms) else ["iso8859"]
    object.__setattr__(ds, "_fhirimg_encodings", encodings)


def _issuer(ds: Dataset | None) -> Issuer | None:
    """An HL7 v2 HD from a sequence item: (0040,0031), (0040,0032), (0040,0033)."""
    if ds is None:
        return None
    issuer = Issuer(_text(ds, 0x00400031), _text(ds, 0x00400032), _text(ds, 0x00400033))
    return issuer if (issuer.local or issuer.universal) else None


def _items(ds: Dataset, tag: int) -> list[Dataset]:
    """A sequence's items (pydicom parses the sequence), each knowing the parent's charset."""
    if tag not in ds:
        return []
    items = list(ds[tag].value or ())
    for item in items:
        _set_encodings(item, getattr(ds, "_fhirimg_encodings", None))
    return items


def _first_item(ds: Dataset, tag: int) -> Dataset | None:
    items = _items(ds, tag)
    return items[0] if items else None


def _concept_name(ds: Dataset) -> str | None:
    """(0040,A043) Concept Name Code Sequence > (0008,0104) Code Meaning (SR document titles)."""
    item = _first_item(ds, 0x0040A043)
    return _text(item, 0x00080104) if item is not None else None


def _codes(ds: Dataset, tag: int) -> tuple[Code, ...]:
    out = []
    for item in _items(ds, tag):
        code = Code(_text(item, 0x00080100), _text(item, 0x00080102), _text(item, 0x00080104))
        if code.value or code.meaning:
            out.append(code)
    return tuple(out)


def _uid(ds: Dataset, tag: int) -> str | None:
    value = _text(ds, tag)
    return value.strip("\0 ") if value else None


_REQUIRED = (
    (0x0020000D, "Study Instance UID (0020,000D)"),
    (0x0020000E, "Series Instance UID (0020,000E)"),
    (0x00080018, "SOP Instance UID (0008,0018)"),
    (0x00080016, "SOP Class UID (0008,0016)"),
)


def read_file(path: str) -> InstanceRecord | FileProblem:
    """Read one file's DICOM header. Pure: the result depends on the file's bytes and ``path`` only.

    Returns an :class:`InstanceRecord`, or a :class:`FileProblem` (skipped: not DICOM, DICOMDIR;
    failed: unreadable, truncated, missing UIDs) with a reason a person can act on.
    """
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as fh:
            kind = sniff(fh.read(132))
            if kind is None:
                return FileProblem(path, FileStatus.SKIPPED, "not a DICOM file (no DICM marker)")
            fh.seek(0)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                ds = read_partial(
                    fh, _stop, defer_size=_DEFER, force=(kind == "bare"), specific_tags=_WANTED
                )
                if fh.tell() > size:  # pydicom seeked past the end over a cut value
                    return FileProblem(
                        path, FileStatus.FAILED, "truncated DICOM file: it ends inside an element"
                    )
                _set_encodings(ds)
                record = _record(path, size, ds, kind)
    except FileNotFoundError:
        return FileProblem(path, FileStatus.FAILED, "no such file")
    except IsADirectoryError:
        return FileProblem(path, FileStatus.FAILED, "is a directory")
    except PermissionError:
        return FileProblem(path, FileStatus.FAILED, "permission denied")
    except (EOFError, struct.error) as exc:
        return FileProblem(path, FileStatus.FAILED, f"truncated DICOM file: {exc}".rstrip(": "))
    except Exception as exc:  # pydicom raises many types for corrupt input; none may stop a run
        return FileProblem(
            path, FileStatus.FAILED, f"unreadable DICOM: {type(exc).__name__}: {exc}"
        )
    if isinstance(record, FileProblem):
        return record
    if caught:
        notes = tuple(dict.fromkeys(f"pydicom: {w.message}" for w in caught))
        record = _with_warnings(record, notes)
    return record


def _with_warnings(record: InstanceRecord, notes: tuple[str, ...]) -> InstanceRecord:
    from dataclasses import replace

    return replace(record, warnings=record.warnings + notes)


def _record(path: str, size: int, ds: Dataset, kind: str) -> InstanceRecord | FileProblem:
    meta = getattr(ds, "file_meta", None)
    media_class = _uid(meta, 0x00020002) if meta is not None else None
    if media_class == MEDIA_STORAGE_DIRECTORY or 0x00041200 in ds or 0x00041220 in ds:
        return FileProblem(path, FileStatus.SKIPPED, "DICOMDIR (a media directory; holds no image)")
    cut = _truncated_at(ds)
    if cut is not None:
        return FileProblem(
            path, FileStatus.FAILED, f"truncated DICOM file: the header ends inside {cut}"
        )
    uids = {tag: _uid(ds, tag) for tag, _ in _REQUIRED}
    if uids[0x00080018] is None and meta is not None:
        uids[0x00080018] = _uid(meta, 0x00020003)  # (0002,0003) Media Storage SOP Instance UID
    if uids[0x00080016] is None and meta is not None:
        uids[0x00080016] = media_class
    missing = [name for tag, name in _REQUIRED if not uids[tag]]
    if missing:
        if size and not any(uids.values()) and len(ds) == 0:
            return FileProblem(path, FileStatus.FAILED, "truncated or empty DICOM dataset")
        return FileProblem(path, FileStatus.FAILED, "missing " + ", ".join(missing))
    transfer_syntax = _uid(meta, 0x00020010) if meta is not None else None
    rows = _us(ds, 0x00280010)
    columns = _us(ds, 0x00280011)
    notes: list[str] = []
    if kind == "bare":
        notes.append("no PS3.10 preamble/file meta (read as a bare dataset)")
    name = _text(ds, 0x00100010)
    return InstanceRecord(
        path=path,
        size=size,
        sop_class_uid=str(uids[0x00080016]),
        sop_instance_uid=str(uids[0x00080018]),
        study_instance_uid=str(uids[0x0020000D]),
        series_instance_uid=str(uids[0x0020000E]),
        transfer_syntax_uid=transfer_syntax,
        instance_number=_text(ds, 0x00200013),
        image_type=_multi(ds, 0x00080008),
        content_label=_text(ds, 0x00700080),
        concept_name=_concept_name(ds),
        document_title=_text(ds, 0x00420010),
        rows=rows,
        columns=columns,
        number_of_frames=_text(ds, 0x00280008),
        has_pixels=bool(rows and columns and 0x00280100 in ds),
        content_date=_text(ds, 0x00080023),
        content_time=_text(ds, 0x00080033),
        acquisition_datetime=_text(ds, 0x0008002A),
        patient_id=_text(ds, 0x00100020),
        issuer_of_patient_id=_text(ds, 0x00100021),
        patient_id_issuer=_issuer(_first_item(ds, 0x00100024)),
        patient_name=name,
        patient_birth_date=_text(ds, 0x00100030),
        patient_sex=_text(ds, 0x00100040),
        study_date=_text(ds, 0x00080020),
        study_time=_text(ds, 0x00080030),
        timezone_offset=_text(ds, 0x00080201),
        accession_number=_text(ds, 0x00080050),
        accession_issuer=_issuer(_first_item(ds, 0x00080051)),
        study_id=_text(ds, 0x00200010),
        study_description=_text(ds, 0x00081030),
        referring_physician=_text(ds, 0x00080090),
        reading_physicians=_multi(ds, 0x00081060),
        procedure_codes=_codes(ds, 0x00081032),
        reason_for_procedure=_text(ds, 0x00401002),
        reason_codes=_codes(ds, 0x0040100A),
        department=_text(ds, 0x00081040),
        modalities_in_study=_multi(ds, 0x00080061),
        series_number=_text(ds, 0x00200011),
        modality=_text(ds, 0x00080060),
        series_description=_text(ds, 0x0008103E),
        body_part_examined=_text(ds, 0x00180015),
        laterality=_text(ds, 0x00200060),
        series_date=_text(ds, 0x00080021),
        series_time=_text(ds, 0x00080031),
        performing_physicians=_multi(ds, 0x00081050),
        operators=_multi(ds, 0x00081070),
        manufacturer=_text(ds, 0x00080070),
        model_name=_text(ds, 0x00081090),
        station_name=_text(ds, 0x00081010),
        warnings=tuple(notes),
    )


def _truncated_at(ds: Dataset) -> str | None:
    """The last element's tag when its value is shorter than its declared length (a cut file)."""
    if not len(ds):
        return None
    tag = list(ds.keys())[-1]
    elem = ds.get_item(tag)
    if isinstance(elem, RawDataElement) and elem.value is not None and elem.length != 0xFFFFFFFF:
        if len(elem.value) < elem.length:
            return f"({tag.group:04X},{tag.element:04X})"
    return None


__all__ = ["iter_files", "read_file", "sniff", "Tag"]
