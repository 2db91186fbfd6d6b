"""Find DICOM files and read their headers into :class:`~fhirimg.model.InstanceRecord`.

:func:`read_file` is a pure function of one path (no shared state, no printing), so it runs the same
in this process, a process pool, or a cluster executor. It never raises for a bad file: every odd
input becomes a :class:`~fhirimg.model.FileProblem` with the reason.

DICOM is recognised by content, not by extension (PS3.10 7.1: 128-byte preamble + ``DICM``; older
files start directly with a data element), and only the header is read: parsing stops before
(7FE0,0010) Pixel Data, and large values before it (an encapsulated PDF, private blobs) are deferred,
so memory follows the header, never the file.

Only regular files are opened: a FIFO, a socket or a device in the input would block the read (or
never end), so each is reported as skipped, unopened. The walk that finds the files, and what tells
a file from a FIFO, live in :mod:`fhirimg.walk`, which needs no pydicom (an incremental re-run walks
and never reads); :func:`iter_files` is the walk's, re-exported here.
"""

from __future__ import annotations

import logging
import re
import struct
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, BinaryIO

from fhirimg.model import Code, FileProblem, FileStatus, InstanceRecord, Issuer, SrContent
from fhirimg.srread import content_of, is_sr, read_content
from fhirimg.walk import NotRegular, not_a_file, open_regular, os_problem, skipped_kind
from fhirimg.walk import iter_files as iter_files  # re-exported: the walk lived here before

if TYPE_CHECKING:
    from pydicom.dataset import Dataset
    from pydicom.tag import BaseTag

# pydicom is imported where it is used: the fast parser reads the common encodings without it, so
# that a run over ordinary files never pays its start-up (about 0.8 s of CPU per process that
# reads: numpy, its pixel handlers, requests; ``python -X importtime``). Its charset decoder is
# needed only for text that is not ASCII, its reader only for what the fast parser leaves alone.

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


class Header:
    """The raw values fhirimg wants from one dataset or sequence item.

    ``values`` maps a tag to its undecoded value bytes, ``items`` a sequence tag to its items.
    Built by the fast parser (:func:`_parse_file`) or, for what it does not handle (big endian,
    deflate, odd encodings), from a pydicom Dataset (:func:`_header_from_dataset`).
    """

    __slots__ = ("encodings", "items", "little_endian", "values")

    def __init__(self, little_endian: bool = True) -> None:
        self.values: dict[int, bytes] = {}
        self.items: dict[int, list[Header]] = {}
        self.little_endian = little_endian
        self.encodings: list[str] = ["iso8859"]

    def set_encodings(self, inherited: list[str] | None = None) -> None:
        """Python codecs for (0008,0005) Specific Character Set; items inherit their parent's."""
        raw = self.values.get(0x00080005)
        if raw is None:
            self.encodings = inherited or ["iso8859"]
        else:
            terms = [t.strip(" \0") for t in raw.decode("ascii", "replace").split("\\")]
            common = _COMMON_CHARSETS.get(terms[0]) if len(terms) == 1 else None
            if common is not None:
                self.encodings = [common]
            elif any(terms):
                from pydicom.charset import convert_encodings

                with _decoding(0x00080005):  # (0008,0005) Specific Character Set
                    self.encodings = convert_encodings(terms)
            else:
                self.encodings = ["iso8859"]
        for items in self.items.values():
            for item in items:
                item.set_encodings(self.encodings)


# (0008,0005) values of a single term without code extensions (PS3.3 C.12.1.1.2, Table C.12-2;
# ISO_IR 192, GB18030, GBK) and the Python codecs pydicom's ``convert_encodings`` gives them, so
# that the common files need no pydicom to know their character set; any other value (ISO 2022
# code extensions, misspellings pydicom corrects with a warning) goes through pydicom.
# tests/test_scan.py checks the table against pydicom's answer.
_COMMON_CHARSETS = {
    "ISO_IR 6": "iso8859",
    "ISO_IR 100": "latin_1",
    "ISO_IR 101": "iso8859_2",
    "ISO_IR 109": "iso8859_3",
    "ISO_IR 110": "iso8859_4",
    "ISO_IR 126": "iso_ir_126",
    "ISO_IR 127": "iso_ir_127",
    "ISO_IR 138": "iso_ir_138",
    "ISO_IR 144": "iso_ir_144",
    "ISO_IR 148": "iso_ir_148",
    "ISO_IR 166": "iso_ir_166",
    "ISO_IR 13": "shift_jis",
    "ISO_IR 192": "UTF8",
    "GB18030": "GB18030",
    "GBK": "GBK",
}


def _raw_bytes(ds: Dataset, tag: int) -> bytes | None:
    """The undecoded value bytes of an element (or its text when pydicom already converted it)."""
    from pydicom.dataelem import RawDataElement
    from pydicom.multival import MultiValue

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
    if isinstance(value, int) and tag in _US:
        return struct.pack("<H" if ds.is_little_endian in (None, True) else ">H", value)
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(str(v) for v in value).encode("utf-8")
    return str(value).encode("utf-8")


def _header_from_dataset(ds: Dataset) -> Header:
    """A :class:`Header` from a pydicom Dataset (the slow, general path)."""
    little = getattr(ds, "is_little_endian", None)
    header = Header(little_endian=little is not False)
    for tag in _WANTED:
        t = int(tag)
        if t in _SEQUENCES:
            if t in ds:
                header.items[t] = [_header_from_dataset(item) for item in (ds[t].value or ())]
            continue
        raw = _raw_bytes(ds, t)
        if raw is not None:
            header.values[t] = raw
    for t in (0x00080100, 0x00080102, 0x00080104, 0x00400031, 0x00400032, 0x00400033):
        if t not in header.values:
            raw = _raw_bytes(ds, t)
            if raw is not None:
                header.values[t] = raw
    return header


# --- the fast path: a small parser for the common encodings (PS3.5 section 7) ---

_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}  # fmt: skip
_SHORT_VRS = frozenset(
    b"AE AS AT CS DA DS DT FL FD IS LO LT PN SH SL SS ST TM UI UL US".split()
)  # explicit VRs with a 16-bit length (PS3.5 Table 7.1-2); an unknown upper-case pair too
_EXPLICIT_ELEMENT = struct.Struct("<HH2sH")  # group, element, VR, 16-bit length
_IMPLICIT_ELEMENT = struct.Struct("<HHHH")  # group, element, 32-bit length in two halves
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_IMPLICIT_LE = "1.2.840.10008.1.2"
_SLOW_SYNTAXES = {"1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"}  # big endian, deflate
_FIRST_READ = 256 * 1024
# A local file's first read: a header is a few KB, and one more read costs a local file little. A
# read is no larger than the file: a 256 KiB buffer for a 10 KB file cost more than its read
# (mmap'd and released each time: 64 against 23 us a file, in a loop over the header corpus).
_LOCAL_FIRST_READ = 64 * 1024
_MAX_HEADER = 16 * 1024 * 1024
# Sequence items nested deeper than this are stepped over, not parsed: fhirimg reads nothing below
# the items of top-level sequences, and a parser that recursed per level would hit Python's
# recursion limit (about 490 levels: two frames a level) on a crafted file.
_KEEP_DEPTH = 8


class _Short(Exception):
    """The buffer ends inside an element (``tag``, when its header was complete)."""

    def __init__(self, tag: int | None = None) -> None:
        super().__init__(tag)
        self.tag = tag


class _Unsupported(Exception):
    """Something the fast parser leaves to pydicom."""


def _parse(
    buf: bytes, pos: int, end: int | None, implicit: bool, top: bool, depth: int = 0
) -> tuple[Header, int]:
    """Parse data elements from ``pos`` up to ``end`` (a defined length) or, when ``end`` is None,
    up to an Item Delimitation Item (an undefined-length item). At the top level, stop before
    the first tag after the last one fhirimg reads. ``depth`` counts the sequences around;
    sequences deeper than ``_KEEP_DEPTH`` are stepped over (:func:`_skip_undefined`)."""
    header = Header()
    deep = depth >= _KEEP_DEPTH
    n = len(buf)
    unpack = struct.unpack_from
    # One unpack a data element header (tag, VR, 16-bit length: PS3.5 7.1.2), the hot loop of
    # reading headers; the 32-bit length of the long VRs and implicit VR are read apart.
    element_header = _IMPLICIT_ELEMENT.unpack_from if implicit else _EXPLICIT_ELEMENT.unpack_from
    while end is None or pos < end:
        if pos + 8 > n:
            raise _Short
        group, element, vr, length = element_header(buf, pos)
        tag = group << 16 | element
        if tag == _ITEM_END and end is None:
            return header, pos + 8
        if top and (tag > _LAST_WANTED or tag in _STOP_TAGS):
            return header, pos
        if implicit:
            length = vr | length << 16  # the 32-bit length's low half came first
            vr = b""
            pos += 8
        elif vr in _LONG_VRS:
            if pos + 12 > n:
                raise _Short
            (length,) = unpack("<I", buf, pos + 8)
            pos += 12
        elif vr in _SHORT_VRS or (vr.isalpha() and vr.isupper()):
            pos += 8
        else:
            raise _Unsupported("not explicit VR where explicit VR was expected")
        if length == _UNDEFINED:
            if vr not in (b"", b"SQ", b"UN"):
                raise _Unsupported(f"undefined length for VR {vr!r}")
            # An undefined-length UN is encoded as implicit VR little endian (PS3.5 6.2.2).
            if deep:
                pos = _skip_undefined(buf, pos, implicit or vr == b"UN")
                continue
            items, pos = _parse_items(buf, pos, None, implicit or vr == b"UN", depth + 1)
            header.items[tag] = items
            continue
        if pos + length > n:
            raise _Short(tag)
        if vr == b"SQ" or (implicit and tag in _SEQUENCES):
            if not deep:  # else: a defined length, stepped over whole
                header.items[tag], _ = _parse_items(buf, pos, pos + length, implicit, depth + 1)
        elif not top or tag in _WANTED_SET:
            header.values[tag] = buf[pos : pos + length]
        pos += length
    return header, pos


def _parse_items(
    buf: bytes, pos: int, end: int | None, implicit: bool, depth: int
) -> tuple[list[Header], int]:
    """The items of a sequence: up to ``end``, or up to the Sequence Delimitation Item."""
    items: list[Header] = []
    n = len(buf)
    while end is None or pos < end:
        if pos + 8 > n:
            raise _Short
        group, element, length = struct.unpack_from("<HHI", buf, pos)
        tag = group << 16 | element
        pos += 8
        if tag == _SEQ_END:
            return items, pos
        if tag != _ITEM:
            raise _Unsupported(f"unexpected tag {tag:08X} in a sequence")
        if length == _UNDEFINED:
            item, pos = _parse(buf, pos, None, implicit, top=False, depth=depth)
        else:
            if pos + length > n:
                raise _Short
            item, _ = _parse(buf, pos, pos + length, implicit, top=False, depth=depth)
            pos += length
        items.append(item)
    return items, pos


def _skip_undefined(buf: bytes, pos: int, implicit: bool) -> int:
    """Step over the items of an undefined-length sequence that starts at ``pos``, however deep
    they nest, without recursion; return the position after its Sequence Delimitation Item.

    Only undefined-length sequences and items are entered (a stack of their encodings: an
    undefined-length UN switches to implicit VR, PS3.5 6.2.2); anything with a defined length,
    items included, is stepped over whole.
    """
    n = len(buf)
    unpack = struct.unpack_from
    open_: list[bool] = [implicit]  # one entry per open undefined-length sequence or item
    while open_:
        if pos + 8 > n:
            raise _Short
        group, element, length = unpack("<HHI", buf, pos)
        tag = group << 16 | element
        if tag in (_ITEM_END, _SEQ_END):
            open_.pop()
            pos += 8
            continue
        if tag == _ITEM:
            pos += 8
            if length == _UNDEFINED:
                open_.append(open_[-1])
                continue
        else:
            inside_implicit = open_[-1]
            vr = b"" if inside_implicit else buf[pos + 4 : pos + 6]
            if inside_implicit:
                pos += 8
            elif vr in _LONG_VRS:
                if pos + 12 > n:
                    raise _Short
                (length,) = unpack("<I", buf, pos + 8)
                pos += 12
            elif vr.isalpha() and vr.isupper():
                (length,) = unpack("<H", buf, pos + 6)
                pos += 8
            else:
                raise _Unsupported("not explicit VR where explicit VR was expected")
            if length == _UNDEFINED:
                if vr not in (b"", b"SQ", b"UN"):
                    raise _Unsupported(f"undefined length for VR {vr!r}")
                open_.append(inside_implicit or vr == b"UN")
                continue
        if pos + length > n:
            raise _Short
        pos += length
    return pos


def _parse_file(buf: bytes, kind: str) -> tuple[Header, Header]:
    """Parse (file meta, dataset) from the start of a file. Raises _Short or _Unsupported."""
    meta = Header()
    pos = 0
    if kind == "part10":
        pos = 132
        n = len(buf)
        while pos + 8 <= n and struct.unpack_from("<H", buf, pos)[0] == 0x0002:
            element, vr = struct.unpack_from("<H", buf, pos + 2)[0], buf[pos + 4 : pos + 6]
            if vr in _LONG_VRS:
                (length,) = struct.unpack_from("<I", buf, pos + 8)
                pos += 12
            else:
                (length,) = struct.unpack_from("<H", buf, pos + 6)
                pos += 8
            if length == _UNDEFINED or pos + length > n:
                raise _Short
            meta.values[0x00020000 | element] = buf[pos : pos + length]
            pos += length
        syntax = meta.values.get(0x00020010, b"").decode("ascii", "replace").strip(" \0")
        if syntax in _SLOW_SYNTAXES:
            raise _Unsupported(f"transfer syntax {syntax}")
        implicit = syntax == _IMPLICIT_LE
    else:
        vr = buf[4:6]
        implicit = not (vr.isalpha() and vr.isupper())
    dataset, _ = _parse(buf, pos, len(buf), implicit, top=True)
    dataset.set_encodings()
    return meta, dataset


_WANTED_SET = {int(t) for t in _WANTED}


def _text(h: Header, tag: int) -> str | None:
    """An element's value as stripped text, or None when absent or empty.

    No type conversion, so that a malformed IS/DA/TM cannot raise; text VRs are decoded with the
    dataset's (0008,0005) Specific Character Set.
    """
    raw = h.values.get(tag)
    if not raw:
        return None
    if tag in _CHARSET_TEXT and (b"\x1b" in raw or not raw.isascii()):  # ESC: ISO 2022
        from pydicom.charset import decode_bytes

        with _decoding(tag):
            text = decode_bytes(raw, h.encodings, _PN_DELIMS if tag in _PN else _TEXT_DELIMS)
    else:
        text = raw.decode("ascii", "replace")
    text = text.strip(" \0")
    return text or None


def _multi(h: Header, tag: int) -> tuple[str, ...]:
    """A multi-valued element (values separated by backslash) as a tuple of non-empty strings."""
    text = _text(h, tag)
    if not text:
        return ()
    return tuple(v for v in (p.strip(" \0") for p in text.split("\\")) if v)


def _us(h: Header, tag: int) -> int | None:
    """A binary US value (Rows, Columns, ...), in the dataset's byte order."""
    raw = h.values.get(tag)
    if raw is None or len(raw) < 2:
        return None
    return int(struct.unpack("<H" if h.little_endian else ">H", raw[:2])[0])


def _issuer(h: Header | None) -> Issuer | None:
    """An HL7 v2 HD from a sequence item: (0040,0031), (0040,0032), (0040,0033)."""
    if h is None:
        return None
    issuer = Issuer(_text(h, 0x00400031), _text(h, 0x00400032), _text(h, 0x00400033))
    return issuer if (issuer.local or issuer.universal) else None


def _first_item(h: Header, tag: int) -> Header | None:
    items = h.items.get(tag)
    return items[0] if items else None


def _concept_name(h: Header) -> str | None:
    """(0040,A043) Concept Name Code Sequence > (0008,0104) Code Meaning (SR document titles)."""
    item = _first_item(h, 0x0040A043)
    return _text(item, 0x00080104) if item is not None else None


def _codes(h: Header, tag: int) -> tuple[Code, ...]:
    out = []
    for item in h.items.get(tag, ()):
        code = Code(_text(item, 0x00080100), _text(item, 0x00080102), _text(item, 0x00080104))
        if code.value or code.meaning:
            out.append(code)
    return tuple(out)


def _uid(h: Header, tag: int) -> str | None:
    value = _text(h, tag)
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

    The common encodings (little endian, explicit or implicit VR) are parsed by a small parser of
    fhirimg's that reads only the tags it needs; big endian, deflate and anything that parser
    does not recognise go through pydicom (:func:`read_header`, shared with objects in object
    storage, :mod:`fhirimg.objects`).
    """
    try:
        not_regular = not_a_file(path)
        if not_regular is not None:
            return not_regular
        with open_regular(path) as (fh, size):
            return read_header(path, fh, size, _LOCAL_FIRST_READ)
    except NotRegular as exc:
        return skipped_kind(path, str(exc))
    except OSError as exc:
        return os_problem(path, exc)


def read_header(
    path: str, fh: BinaryIO, size: int, first_read: int = _FIRST_READ
) -> InstanceRecord | FileProblem:
    """The header of the DICOM bytes ``fh`` (``size`` bytes long), named ``path``: the one parser
    for local files and objects. Reads the first ``first_read`` bytes (256 KiB, or the whole of a
    smaller file), more only when the header goes on (up to 16 MiB), so an object store serves
    it with one or two ranged GETs. Never raises for bad bytes; an ``OSError`` of ``fh`` is left
    to the caller."""
    try:
        buf = fh.read(min(first_read, size) if size > 0 else first_read)
        kind = sniff(buf[:132])
        if kind is None:
            return FileProblem(path, FileStatus.SKIPPED, "not a DICOM file (no DICM marker)")
        with _listening() as heard:
            parsed = _fast(fh, buf, size, kind)
            if isinstance(parsed, FileProblem):
                return FileProblem(path, parsed.status, parsed.reason)
            if parsed is None:
                fh.seek(0)
                parsed = _slow(fh, size, kind)
                if isinstance(parsed, FileProblem):
                    return FileProblem(path, parsed.status, parsed.reason)
            meta, header = parsed
            record = _record(path, size, header, meta, kind)
            if isinstance(record, InstanceRecord) and is_sr(record.sop_class_uid):
                # An SR's content tree: this one file is read in full (fhirimg.srread).
                fh.seek(0)
                record = _with_content(record, read_content(fh))
    except OSError:
        raise
    except (EOFError, struct.error) as exc:
        return FileProblem(path, FileStatus.FAILED, f"truncated DICOM file: {exc}".rstrip(": "))
    except Exception as exc:  # pydicom raises many types for corrupt input; none may stop a run
        return FileProblem(
            path, FileStatus.FAILED, f"unreadable DICOM: {type(exc).__name__}: {exc}"
        )
    if isinstance(record, FileProblem):
        return record
    if heard.notes:
        for said in dict.fromkeys(heard.said):  # pydicom's words may quote header values: -vv
            logger.debug("%s: pydicom said: %s", path, said)
        record = _with_warnings(record, tuple(heard.notes))
    return record


# --- pydicom's complaints: collected per file, never printed -------------------------------------
#
# pydicom reports odd input both to its "pydicom" logger and with warnings.warn (misc.warn_and_log),
# and its words may quote raw header bytes: a patient's name in a field of the wrong VR, say. While
# a file is read, both go to :class:`_Heard` instead of stderr (the logger does not propagate, the
# warnings are not shown); what they said becomes the record's warnings, with quoted values
# replaced and the tag being decoded named (in report.json's file entries, and at INFO, -v, when
# the study is written: fhirimg.convert); pydicom's words as said only at DEBUG (-vv).

_PYDICOM = logging.getLogger("pydicom")
_QUOTED = re.compile(r"b?'(?:[^'\\]|\\.)*'" + r'|b?"(?:[^"\\]|\\.)*"')  # '...', "...", b'...'
_AFTER_COLON = re.compile(r"(ignoring)\s*:\s*\S.*$", re.IGNORECASE)  # "ignoring: <terms>"
_NOTE_MAX = 200


def without_values(message: str) -> str:
    """pydicom's message with the values it quotes left out: what went wrong, not what was there.

    >>> without_values("Invalid value for VR DA: 'Doe^Jane'.")
    "Invalid value for VR DA: '…'."
    >>> without_values("Value 'ISO_IR 100' for Specific Character Set does not allow code "
    ...                "extensions, ignoring: Doe")
    "Value '…' for Specific Character Set does not allow code extensions, ignoring: …"
    """
    text = _QUOTED.sub("'…'", message)
    text = _AFTER_COLON.sub(lambda m: f"{m.group(1)}: …", text)
    text = "".join(c if c.isprintable() else " " for c in text)
    return text if len(text) <= _NOTE_MAX else text[: _NOTE_MAX - 1] + "…"


class _Heard(logging.Handler):
    """What pydicom logged or warned while one file was read (:func:`_listening`)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.tag: int | None = None  # the element being decoded, when fhirimg knows it
        self.said: list[str] = []
        self._notes: dict[str, None] = {}  # in order, once each (a log line and a warning)

    @property
    def notes(self) -> list[str]:
        return list(self._notes)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.hear(record.getMessage())
        except Exception:  # a malformed log call of pydicom's must not cost the file
            self.hear(str(record.msg))

    def hear(self, message: str) -> None:
        self.said.append(message)
        where = f"({self.tag >> 16:04X},{self.tag & 0xFFFF:04X}) " if self.tag is not None else ""
        self._notes[f"pydicom: {where}{without_values(message)}"] = None

    def show(self, message: Warning | str, *args: object, **kwargs: object) -> None:
        """``warnings.showwarning`` while listening."""
        self.hear(str(message))


_heard: _Heard | None = None  # the file being read (one at a time per process)


@contextmanager
def _listening() -> Iterator[_Heard]:
    global _heard
    heard = _Heard()
    propagate = _PYDICOM.propagate
    _PYDICOM.addHandler(heard)
    _PYDICOM.propagate = False
    outer, _heard = _heard, heard
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = heard.show
            yield heard
    finally:
        _heard = outer
        _PYDICOM.propagate = propagate
        _PYDICOM.removeHandler(heard)


@contextmanager
def _decoding(tag: int) -> Iterator[None]:
    """Name ``tag`` in what pydicom says while it is decoded."""
    heard = _heard
    if heard is None:
        yield
        return
    before, heard.tag = heard.tag, tag
    try:
        yield
    finally:
        heard.tag = before


_TRUNCATED = FileProblem("", FileStatus.FAILED, "truncated DICOM file: it ends inside an element")


def _fast(
    fh: BinaryIO, buf: bytes, size: int, kind: str
) -> tuple[Header, Header] | FileProblem | None:
    """The fast parser; None when the file needs pydicom."""
    for _ in range(2):
        try:
            return _parse_file(buf, kind)
        except _Short as short:
            if len(buf) >= size:  # the whole file is read and it ends inside an element
                if short.tag is None:
                    return _TRUNCATED
                where = f"({short.tag >> 16:04X},{short.tag & 0xFFFF:04X})"
                return FileProblem(
                    "", FileStatus.FAILED, f"truncated DICOM file: the header ends inside {where}"
                )
            if len(buf) >= _MAX_HEADER:
                return None
            buf += fh.read(_MAX_HEADER - len(buf))
        except (_Unsupported, struct.error, UnicodeDecodeError):
            return None
    return None


def _slow(fh: BinaryIO, size: int, kind: str) -> tuple[Header, Header] | FileProblem:
    """pydicom's reader, for what the fast parser leaves alone.

    pydicom parses sequences recursively (several frames a level), so a crafted file nested a few
    hundred levels deep exhausts the recursion limit: that is reported as such, like any other
    file that cannot be read.
    """
    try:
        return _slow_read(fh, size, kind)
    except RecursionError:
        return FileProblem(
            "",
            FileStatus.FAILED,
            "unreadable DICOM: sequences nested too deep (pydicom's reader ran out of "
            f"recursion depth, limit {sys.getrecursionlimit()} frames)",
        )


def _slow_read(fh: BinaryIO, size: int, kind: str) -> tuple[Header, Header] | FileProblem:
    from pydicom.filereader import read_partial

    ds = read_partial(fh, _stop, defer_size=_DEFER, force=(kind == "bare"), specific_tags=_WANTED)
    if fh.tell() > size:  # pydicom seeked past the end over a cut value
        return _TRUNCATED
    cut = _truncated_at(ds)
    if cut is not None:
        return FileProblem(
            "", FileStatus.FAILED, f"truncated DICOM file: the header ends inside {cut}"
        )
    header = _header_from_dataset(ds)
    header.set_encodings()
    file_meta = getattr(ds, "file_meta", None)
    meta = _header_from_dataset(file_meta) if file_meta is not None else Header()
    for t in (0x00020002, 0x00020003, 0x00020010):
        raw = _raw_bytes(file_meta, t) if file_meta is not None else None
        if raw is not None:
            meta.values[t] = raw
    return meta, header


def _with_content(record: InstanceRecord, content: SrContent) -> InstanceRecord:
    from dataclasses import replace

    return replace(record, sr=content)


def _with_warnings(record: InstanceRecord, notes: tuple[str, ...]) -> InstanceRecord:
    from dataclasses import replace

    return replace(record, warnings=record.warnings + notes)


def _record(
    path: str, size: int, ds: Header, meta: Header, kind: str
) -> InstanceRecord | FileProblem:
    media_class = _uid(meta, 0x00020002)
    if media_class == MEDIA_STORAGE_DIRECTORY or 0x00041200 in ds.values:
        return FileProblem(path, FileStatus.SKIPPED, "DICOMDIR (a media directory; holds no image)")
    uids = {tag: _uid(ds, tag) for tag, _ in _REQUIRED}
    if uids[0x00080018] is None:
        uids[0x00080018] = _uid(meta, 0x00020003)  # (0002,0003) Media Storage SOP Instance UID
    if uids[0x00080016] is None:
        uids[0x00080016] = media_class
    missing = [name for tag, name in _REQUIRED if not uids[tag]]
    if missing:
        if size and not any(uids.values()) and not ds.values:
            return FileProblem(path, FileStatus.FAILED, "truncated or empty DICOM dataset")
        return FileProblem(path, FileStatus.FAILED, "missing " + ", ".join(missing))
    transfer_syntax = _uid(meta, 0x00020010)
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
        has_pixels=bool(rows and columns and 0x00280100 in ds.values),
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


def record_from_dataset(
    ds: Dataset, path: str, size: int = 0, transfer_syntax_uid: str | None = None
) -> InstanceRecord | FileProblem:
    """The record :func:`read_file` would make of a file holding ``ds``: for datasets that come
    from a network peer instead of a file (a DIMSE C-FIND answer, :mod:`fhirimg.dimse`). Values
    are read the same way (raw bytes, the dataset's (0008,0005) Specific Character Set), so the
    same attributes give the same record. ``path`` names the source; ``transfer_syntax_uid``
    stands in for the file meta's (0002,0010).
    """
    header = _header_from_dataset(ds)
    header.set_encodings()
    meta = Header()
    if transfer_syntax_uid:
        meta.values[0x00020010] = transfer_syntax_uid.encode("ascii", "replace")
    record = _record(path, size, header, meta, "file")
    if (
        isinstance(record, InstanceRecord)
        and is_sr(record.sop_class_uid)
        and "ContentSequence" in ds
    ):
        record = _with_content(record, content_of(ds))  # a peer that sent the content tree
    return record


def _truncated_at(ds: Dataset) -> str | None:
    """The last element's tag when its value is shorter than its declared length (a cut file)."""
    from pydicom.dataelem import RawDataElement

    if not len(ds):
        return None
    tag = list(ds.keys())[-1]
    elem = ds.get_item(tag)
    if isinstance(elem, RawDataElement) and elem.value is not None and elem.length != 0xFFFFFFFF:
        if len(elem.value) < elem.length:
            return f"({tag.group:04X},{tag.element:04X})"
    return None


__all__ = ["Header", "iter_files", "read_file", "record_from_dataset", "sniff"]
