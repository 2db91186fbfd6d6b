"""The fuzzers of issue 11 ("nothing breaks, nothing is lost"), shared by the test suite
(``tests/test_fuzz.py``, ``tests/test_validate_fuzz.py``) and the long campaigns of
``bench/fuzz.py``: one module, so a failure the bench finds is reproduced by the same code.

Four kinds of input, each from real seeds:

* ``headers``: DICOM files of ``sample_data/dicom`` (the synthetic sample data) and a few of
  pydicom's own test files, with header elements replaced by hostile bytes (NBSP, C0 controls,
  0x85, wrong lengths, wrong VRs, bad UIDs and dates), removed, re-typed, nested deep, and the
  encoded bytes flipped, cut or padded (:func:`mutate_header`);
* ``pixels``: image files whose pixel module lies (Rows/Columns, BitsAllocated, SamplesPerPixel,
  PhotometricInterpretation, NumberOfFrames), whose Pixel Data is shorter or longer than declared,
  whose RLE segment table is corrupt, whose JPEG stream is cut (:func:`mutate_pixels`);
* ``validate`` and ``push``: fhirimg's own bundles (``tests/golden``) with subtrees replaced by
  arbitrary JSON, as a hypothesis strategy (:func:`mutated_bundles`), drawn with a fixed seed
  outside hypothesis' runner by :func:`draw`.

The DICOM mutators are plain functions of a :class:`random.Random`: the same seed gives the same
bytes, so a CI failure is reproduced by its seed. The ``check_*`` functions run an input batch
through fhirimg and return what went wrong (:class:`Failure`), never raise for a finding: the
test asserts the list is empty, the bench counts it.
"""

from __future__ import annotations

import copy
import io
import json
import os
import random
import re
import struct
import subprocess
import sys
import traceback
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

import orjson
import pydicom
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.tag import BaseTag, Tag
from pydicom.uid import UID

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "sample_data" / "dicom"
GOLDEN_BUNDLES = sorted((REPO / "tests" / "golden").glob("*/study-*.json"))
T = TypeVar("T")

# --------------------------------------------------------------------------- what went wrong

CRASH, HANG, UNACCOUNTED, INVALID = "crash", "hang", "unaccounted", "invalid bundle"
CATEGORIES = (CRASH, HANG, UNACCOUNTED, INVALID)


@dataclass(frozen=True)
class Failure:
    """One broken promise: ``category`` (one of :data:`CATEGORIES`), a one-line ``detail`` (the
    first line of a traceback, the file missing from report.json, ...), the ``inputs`` it is
    about (empty: the whole batch) and the full ``trace`` when an exception escaped."""

    category: str
    detail: str
    inputs: tuple[str, ...] = ()
    trace: str = ""

    def __str__(self) -> str:
        where = f" [{', '.join(Path(p).name for p in self.inputs[:3])}]" if self.inputs else ""
        return f"{self.category}: {self.detail}{where}"


def _crash(exc: BaseException) -> Failure:
    trace = "".join(traceback.format_exception(exc))
    return Failure(CRASH, f"{type(exc).__name__}: {exc}"[:300], trace=trace[-6000:])


# --------------------------------------------------------------------------- DICOM seeds


def _pydicom_test_file(name: str) -> Path | None:
    """One of pydicom's bundled test files, never downloaded (None when it is not there)."""
    path = Path(pydicom.data.__file__).parent / "test_files" / name
    return path if path.is_file() else None


_PYDICOM_HEADER_SEEDS = ("CT_small.dcm", "MR_small_bigendian.dcm", "MR_small_implicit.dcm")
_PYDICOM_PIXEL_SEEDS = (
    "CT_small.dcm",
    "MR_small_RLE.dcm",
    "SC_rgb_rle.dcm",
    "SC_rgb_rle_16bit_2frame.dcm",
    "SC_rgb_jpeg_dcmtk.dcm",  # JPEG baseline
    "JPEG-lossy.dcm",  # JPEG extended, 12 bit
    "SC_rgb_small_odd.dcm",
    "SC_rgb_small_odd_jpeg.dcm",
    "MR_small_jp2klossless.dcm",
)


@cache
def header_seeds() -> tuple[tuple[str, bytes], ...]:
    """(name, bytes) of every sample file (also the ones that are not DICOM) and a few of
    pydicom's (big endian, implicit VR)."""
    files = sorted(p for p in SAMPLE.rglob("*") if p.is_file())
    files += [p for n in _PYDICOM_HEADER_SEEDS if (p := _pydicom_test_file(n)) is not None]
    return tuple((p.name, p.read_bytes()) for p in files)


@cache
def pixel_seeds() -> tuple[tuple[str, bytes], ...]:
    """(name, bytes) of the image files: the sample's (native, RGB, MONOCHROME1, RLE,
    multi-frame, no file meta) and pydicom's RLE, JPEG and odd-sized ones."""
    names = [
        "study_a_ct/ct_0001.dcm",
        "study_a_ct_localizer/localizer_0001.dcm",
        "study_b_mr/mr_0001.dcm",
        "study_b_mr/mr_enhanced_multiframe.dcm",
        "study_c_mixed/us_rgb.dcm",
        "study_c_mixed/sc_rle.dcm",
        "study_c_mixed/cr_mono1.dcm",
        "study_c_mixed/legacy_no_meta.dcm",
    ]
    files = [SAMPLE / n for n in names]
    files += [p for n in _PYDICOM_PIXEL_SEEDS if (p := _pydicom_test_file(n)) is not None]
    return tuple((p.name, p.read_bytes()) for p in files)


def _parse(data: bytes) -> Dataset | None:
    try:
        return pydicom.dcmread(io.BytesIO(data), force=True)
    except Exception:
        return None


@cache
def _parsed(data: bytes) -> Dataset | None:
    ds = _parse(data)
    if ds is not None:
        try:
            ds.decode()  # every element parsed now: copies need no more decoding
        except Exception:
            return None
    return ds


def _encode(ds: Dataset) -> bytes | None:
    buf = io.BytesIO()
    try:
        ds.save_as(buf, enforce_file_format=False)
    except Exception:
        return None
    return buf.getvalue()


def _put(
    ds: Dataset, tag: int | BaseTag, vr: str, value: bytes, *, undefined: bool = False
) -> None:
    """Put ``value`` as the element's raw bytes: written as they are, whatever they hold."""
    tag = Tag(tag)
    little = True if ds.is_little_endian is None else ds.is_little_endian
    implicit = False if ds.is_implicit_VR is None else ds.is_implicit_VR
    length = 0xFFFFFFFF if undefined else len(value)
    ds._dict[tag] = RawDataElement(tag, vr, length, value, 0, implicit, little)


# --------------------------------------------------------------------------- hostile values

_TEXT = [
    b"", b" ", b"\xa0", b"A\xa0B", b"x\x85y", b"\x00", b"\x01\x02\x1f", b"\x1b[31mred\x1b[0m",
    b"\x1b$B", b"\xff\xfe", b"\xc3", b"\xe5\xb1\xb1\xe7\x94\xb0", b"a\\b\\c", b"\\\\\\",
    b"^^^^^^", b"a^b^c^d^e^f^g", b"=", b"==", b"Yamada^Tarou=\x1b$B;3ED\x1b(B^\x1b$BB@O:\x1b(B",
    b"[/Patient]", b"<script>", b"%s%n", b"\r\n", b"\t", b"NaN", b"inf", b"-0", b"1e309",
    b"20241301", b"1996.06.11", b"00000000", b"99991231", b"2024", b"202401", b"0930",
    b"25:61:61", b"120000.1234567", b"+2500", b"-1500", b"0100", b"1.2.03", b"1..2", b"2.25.",
    b"2.25." + b"9" * 70, b".1.2", b"1.2.", b"1A", b"-1", b"0", b"2147483648", b"3.5", b"1\\2",
    b"ISO_IR 100", b"ISO 2022 IR 87", b"ISO_IR 192", b"GB18030", b"bogus",
]  # fmt: skip

_TEXT_TAGS: list[tuple[int, str]] = [
    (0x00100010, "PN"), (0x00100020, "LO"), (0x00100021, "LO"), (0x00100030, "DA"),
    (0x00100040, "CS"), (0x00080020, "DA"), (0x00080030, "TM"), (0x00080021, "DA"),
    (0x00080031, "TM"), (0x00080050, "SH"), (0x00081030, "LO"), (0x0008103E, "LO"),
    (0x00080060, "CS"), (0x00080061, "CS"), (0x00180015, "CS"), (0x00200010, "SH"),
    (0x00200011, "IS"), (0x00200013, "IS"), (0x00080090, "PN"), (0x00080080, "LO"),
    (0x00080070, "LO"), (0x00081090, "LO"), (0x00081010, "SH"), (0x00080201, "SH"),
    (0x00080005, "CS"), (0x0020000D, "UI"), (0x0020000E, "UI"), (0x00080018, "UI"),
    (0x00080016, "UI"), (0x00200060, "CS"), (0x00200062, "CS"), (0x00080008, "CS"),
    (0x00321060, "LO"), (0x00401002, "LO"), (0x00081050, "PN"), (0x00081070, "PN"),
    (0x00420010, "ST"), (0x00280008, "IS"), (0x00280030, "DS"), (0x00281050, "DS"),
    (0x00281051, "DS"), (0x00281052, "DS"), (0x00281053, "DS"), (0x00200032, "DS"),
    (0x00200037, "DS"), (0x00180050, "DS"),
]  # fmt: skip
_REQUIRED = [0x0020000D, 0x0020000E, 0x00080018, 0x00080016, 0x00080060, 0x00100020, 0x7FE00010]
_VRS = ["AE", "CS", "DA", "DS", "IS", "LO", "OB", "PN", "SH", "SQ", "UI", "UL", "UN", "US", "UT"]
_SYNTAXES = [
    "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.5",
    "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.1.99", "1.2.3", "",
]  # fmt: skip


def _text(rng: random.Random) -> bytes:
    roll = rng.random()
    if roll < 0.55:
        value = rng.choice(_TEXT)
    elif roll < 0.8:
        value = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40)))
    elif roll < 0.9:
        value = rng.choice(_TEXT) + rng.choice(_TEXT) + rng.choice(_TEXT)
    else:
        value = rng.choice([b"A", b"\xa0", b"1.", b"\\"]) * rng.choice([65, 200, 1025, 70000])
    return value


def _fresh_uid(rng: random.Random) -> str:
    return f"2.25.{rng.getrandbits(120)}"


def _deep_sequence(ds: Dataset, depth: int) -> bytes:
    """The value of (0040,0275) with items nested ``depth`` deep, undefined lengths, as raw bytes
    in the dataset's encoding (pydicom's writer overflows the C stack on such a Dataset)."""
    order = "<" if ds.is_little_endian in (None, True) else ">"
    explicit = b"" if ds.is_implicit_VR else b"SQ\0\0"
    undefined = struct.pack(order + "I", 0xFFFFFFFF)
    item = struct.pack(order + "HH", 0xFFFE, 0xE000) + undefined
    nested = struct.pack(order + "HH", 0x0040, 0x0275) + explicit + undefined
    end_item = struct.pack(order + "HHI", 0xFFFE, 0xE00D, 0)
    end_sequence = struct.pack(order + "HHI", 0xFFFE, 0xE0DD, 0)
    code = struct.pack(order + "HH", 0x0008, 0x0100) + (b"" if ds.is_implicit_VR else b"SH")
    code += struct.pack(order + ("I" if ds.is_implicit_VR else "H"), 2) + b"x "
    levels = depth - 1
    return (
        (item + nested) * levels
        + item
        + code
        + end_item
        + (end_sequence + end_item) * levels
        + end_sequence
    )


def _mutate_dataset(ds: Dataset, rng: random.Random, pool: Sequence[str]) -> None:
    """1 to 4 header edits (the file's UIDs are made its own first, most of the time)."""
    roll = rng.random()
    if roll < 0.75:  # a study of its own; else one of a few shared studies, or the seed's
        ds.StudyInstanceUID = _fresh_uid(rng)
        ds.SeriesInstanceUID = _fresh_uid(rng)
    elif roll < 0.95:
        ds.StudyInstanceUID = rng.choice(pool)
    if rng.random() < 0.9:
        ds.SOPInstanceUID = _fresh_uid(rng) if rng.random() < 0.9 else rng.choice(pool)
        if "MediaStorageSOPInstanceUID" in getattr(ds, "file_meta", ()):
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    for _ in range(rng.randint(1, 4)):
        try:
            _edit_dataset(ds, rng, rng.randrange(9))
        except Exception:
            pass  # an edit pydicom refuses (a value it cannot convert): the others stay


def _edit_dataset(ds: Dataset, rng: random.Random, action: int) -> None:
    """One header edit (``action`` 0-8)."""
    if action <= 2:
        tag, vr = rng.choice(_TEXT_TAGS)
        _put(ds, tag, vr, _text(rng))
    elif action == 3:
        tag = rng.choice(_REQUIRED) if rng.random() < 0.5 else rng.choice(list(ds.keys()))
        if tag in ds:
            del ds[tag]
    elif action == 4:  # the same bytes under another VR
        tag = rng.choice(list(ds.keys()))
        raw = ds.get_item(tag)
        if tag != 0x7FE00010 and raw is not None and raw.VR != "SQ":
            value = raw.value if isinstance(raw, RawDataElement) else None
            if isinstance(value, bytes):
                _put(ds, tag, rng.choice(_VRS), value)
    elif action == 5:  # sequences nested deep, or an item of junk
        depth = rng.choice([1, 2, 8, 64, 300, 700])
        _put(ds, 0x00400275, "SQ", _deep_sequence(ds, depth), undefined=True)
    elif action == 6:  # a code sequence whose item holds hostile text
        item = Dataset()
        _put(item, 0x00080100, "SH", _text(rng))
        _put(item, 0x00080102, "SH", _text(rng))
        _put(item, 0x00080104, "LO", _text(rng))
        tag = rng.choice([0x00081032, 0x00080051, 0x00400260, 0x0040A043, 0x00101002])
        ds.add_new(tag, "SQ", [item] * rng.randint(0, 3))
    elif action == 7:  # character set against the bytes
        _put(ds, 0x00080005, "CS", rng.choice(_TEXT[-5:] + [b"\\ISO 2022 IR 87", b""]))
        _put(ds, rng.choice([0x00100010, 0x00081030]), "PN", _text(rng))
    elif action == 8 and getattr(ds, "file_meta", None) is not None:
        ds.file_meta.TransferSyntaxUID = UID(rng.choice(_SYNTAXES))


def _mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    """Byte edits in the header (before Pixel Data): flips, a length set huge, a cut, junk."""
    raw = bytearray(data)
    end = data.rfind(b"\xe0\x7f\x10\x00")
    end = end if end > 132 else len(raw)
    if end <= 2:
        return bytes(raw) + bytes(rng.randrange(256) for _ in range(8))
    for _ in range(rng.randint(1, 3)):
        at = rng.randrange(min(132, end - 1), end) if end > 133 else rng.randrange(end)
        action = rng.randrange(5)
        if action == 0:
            raw[at] = rng.randrange(256)
        elif action == 1:
            raw[at : at + 4] = rng.choice([b"\xff\xff\xff\xff", b"\xfe\xff\xff\x7f", b"\0\0\0\0"])
        elif action == 2:
            return bytes(raw[:at])
        elif action == 3:
            raw[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        else:
            raw[at:at] = b"\xfe\xff\x00\xe0\xff\xff\xff\xff"  # a stray item of undefined length
    return bytes(raw)


def uid_pool(rng: random.Random, size: int = 4) -> list[str]:
    """UIDs shared by some mutants of a batch (studies, duplicated SOP Instance UIDs)."""
    return [_fresh_uid(rng) for _ in range(size)]


def mutate_header(rng: random.Random, pool: Sequence[str]) -> bytes:
    """A seed file with its header mutated (module docstring)."""
    _, data = rng.choice(header_seeds())
    template = _parsed(data)
    ds = _parse(data) if template is not None and rng.random() < 0.9 else None
    if ds is not None:  # parsed again, not copied: raw elements are written back as they are
        _mutate_dataset(ds, rng, pool)
        encoded = _encode(ds)
        if encoded is not None:
            data = encoded
    if rng.random() < 0.3:
        data = _mutate_bytes(data, rng)
    return data


# --------------------------------------------------------------------------- pixel mutations

_PIXEL_ATTRS: list[tuple[str, list[object]]] = [
    ("Rows", [0, 1, 3, 7, 2, 65535, 513]),
    ("Columns", [0, 1, 3, 5, 65535, 511]),
    ("BitsAllocated", [0, 1, 7, 8, 12, 16, 24, 32, 64]),
    ("BitsStored", [0, 1, 8, 12, 16, 17, 33]),
    ("HighBit", [0, 7, 11, 15, 16, 40]),
    ("SamplesPerPixel", [0, 1, 2, 3, 4]),
    ("PixelRepresentation", [0, 1, 2]),
    ("PlanarConfiguration", [0, 1, 2]),
    ("NumberOfFrames", ["0", "1", "2", "3", "-1", "1.5", "100000", "x"]),
    (
        "PhotometricInterpretation",
        [
            "MONOCHROME1",
            "MONOCHROME2",
            "RGB",
            "YBR_FULL",
            "YBR_FULL_422",
            "PALETTE COLOR",
            "ARGB",
            "CMYK",
            "HSV",
            "YBR_RCT",
            "XYZ",
            "",
        ],
    ),  # fmt: skip
    ("WindowCenter", ["0", "-1e308", "NaN", "40\\-600\\1", ""]),
    ("WindowWidth", ["0", "-1", "1e308", "inf", ""]),
    ("RescaleSlope", ["0", "-1", "1e300", "NaN"]),
    ("RescaleIntercept", ["1e300", "-32768", "NaN"]),
]


def _items(data: bytes) -> tuple[list[bytes], bool] | None:
    """The items of encapsulated Pixel Data (offset table first), and whether it ended with a
    sequence delimiter; None when it is not encapsulated in the plain form."""
    out: list[bytes] = []
    pos = 0
    while pos + 8 <= len(data):
        group, element, length = struct.unpack_from("<HHI", data, pos)
        if (group, element) == (0xFFFE, 0xE0DD):
            return out, True
        if (group, element) != (0xFFFE, 0xE000) or length == 0xFFFFFFFF:
            return None
        out.append(data[pos + 8 : pos + 8 + length])
        pos += 8 + length
    return (out, False) if out else None


def _join(items: list[bytes], delimiter: bool = True) -> bytes:
    body = b"".join(struct.pack("<HHI", 0xFFFE, 0xE000, len(i)) + i for i in items)
    return body + (struct.pack("<HHI", 0xFFFE, 0xE0DD, 0) if delimiter else b"")


def _mutate_fragment(frag: bytes, rng: random.Random) -> bytes:
    raw = bytearray(frag)
    is_rle = len(raw) >= 64 and struct.unpack_from("<I", raw, 4)[0] == 64  # first offset 64
    action = rng.randrange(6)
    if is_rle and action <= 2:  # the RLE header: segment count and offsets (PS3.5 G.5)
        which = rng.randrange(16)
        value = rng.choice([0, 1, 15, 16, 64, 65, len(raw) - 1, len(raw) + 100, 0xFFFFFFFF])
        struct.pack_into("<I", raw, 4 * which, value & 0xFFFFFFFF)
        return bytes(raw)
    if action <= 2 and len(raw) > 4:  # JPEG (or RLE) stream cut
        return bytes(raw[: rng.randrange(2, len(raw))])
    if action == 3 and raw:
        for _ in range(rng.randint(1, 8)):
            raw[rng.randrange(len(raw))] = rng.randrange(256)
        return bytes(raw)
    if action == 4:
        return bytes(raw).replace(b"\xff\xd9", b"")  # no EOI marker
    return bytes(raw) + bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))


def _mutate_pixel_data(ds: Dataset, rng: random.Random) -> None:
    if "PixelData" not in ds:
        return
    value = ds.PixelData
    split = _items(value)
    if split is None:  # native: shorter, longer, odd
        cut = rng.choice([0, 1, len(value) // 2, len(value) - 1, len(value) + 1, len(value) * 2])
        value = value[:cut] + bytes(rng.randrange(256) for _ in range(max(0, cut - len(value))))
        ds.PixelData = value
        return
    items, delimited = split
    if len(items) > 1:
        i = rng.randrange(1, len(items))
        roll = rng.random()
        if roll < 0.7:
            items[i] = _mutate_fragment(items[i], rng)
        elif roll < 0.85:
            del items[i]
        else:
            items.append(items[i])
    if rng.random() < 0.15:  # an offset table that points anywhere
        items[0] = struct.pack("<4I", *(rng.getrandbits(32) for _ in range(4)))
    ds.PixelData = _join(items, delimited or rng.random() < 0.9)
    ds["PixelData"].is_undefined_length = True


def _set_attr(ds: Dataset, name: str, value: object) -> None:
    try:
        setattr(ds, name, value)
    except Exception:
        pass


def _edit_pixels(
    ds: Dataset, rng: random.Random, action: int, meta: FileMetaDataset | None
) -> FileMetaDataset | None:
    """One edit of the pixel module; the file meta left (None once it is removed)."""
    if action <= 3:
        attr, values = rng.choice(_PIXEL_ATTRS)
        _set_attr(ds, attr, rng.choice(values))
    elif action <= 6:
        _mutate_pixel_data(ds, rng)
    elif action == 7 and meta is not None:
        meta.TransferSyntaxUID = UID(rng.choice(_SYNTAXES[:9]))
    elif action == 8:  # a bare dataset: no preamble, no file meta (issue 11, item 2)
        ds.file_meta = FileMetaDataset()
        ds.preamble = None
        return None
    elif action == 9:  # a palette without its lookup tables, or with short ones
        ds.PhotometricInterpretation = "PALETTE COLOR"
        if rng.random() < 0.5:
            _put(ds, 0x00281101, "US", struct.pack("<3H", 256, 0, 16))
            _put(ds, 0x00281201, "OW", b"\0\1" * rng.choice([0, 3, 255]))
    return meta


def mutate_pixels(rng: random.Random, pool: Sequence[str]) -> bytes:
    """An image seed with its pixel module made to lie (module docstring)."""
    name, data = rng.choice(pixel_seeds())
    template = _parsed(data)
    ds = _parse(data) if template is not None else None
    if ds is None:
        return data
    ds.StudyInstanceUID = _fresh_uid(rng) if rng.random() < 0.8 else rng.choice(pool)
    ds.SeriesInstanceUID = _fresh_uid(rng)
    ds.SOPInstanceUID = _fresh_uid(rng)
    meta = getattr(ds, "file_meta", None)
    if meta is not None and "MediaStorageSOPInstanceUID" in meta:
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    for _ in range(rng.randint(1, 3)):
        try:
            meta = _edit_pixels(ds, rng, rng.randrange(10), meta)
        except Exception:
            pass  # an edit pydicom refuses: the others stay
    encoded = _encode(ds)
    if encoded is None and meta is None:  # a bare dataset needs its encoding said
        try:
            buf = io.BytesIO()
            ds.save_as(buf, enforce_file_format=False, implicit_vr=False, little_endian=True)
            encoded = buf.getvalue()
        except Exception:
            encoded = None
    return encoded if encoded is not None else data


# --------------------------------------------------------------------------- JSON mutations

# Raw JSON that orjson.dumps cannot write (nesting past its 254 levels, integers past 64 bits,
# escapes of lone surrogates): a marker string is dumped in its place and then replaced.
_RAW = {
    f"@@raw{i}@@": raw
    for i, raw in enumerate(
        [
            b"[" * 129 + b"]" * 129,
            b"[" * 990 + b"]" * 990,
            b'{"a":' * 600 + b"1" + b"}" * 600,
            b"[" * 1100 + b"]" * 1100,  # past orjson's own limit: not well-formed JSON
            b"123456789012345678901234567890",
            b"18446744073709551615",
            b"1e400",
            b"-0",
            b'"\\ud800"',
            b'"\\u0000"',
        ]
    )
}
_KEYS = [
    "resourceType", "id", "entry", "resource", "contained", "extension", "url", "reference",
    "_description", "description", "modality", "series", "instance", "uid", "data", "contentType",
    "valueReference", "coding", "system", "code", "fullUrl", "request", "method", "identifier",
    "value", "_given", "given", "size", "hash", "content", "attachment", "meta", "profile", "text",
]  # fmt: skip
_TYPES = [
    "Bundle", "Patient", "ImagingStudy", "Endpoint", "Binary", "Media", "DocumentReference",
    "ImagingSelection", "OperationOutcome", "Observation", "Foo", "", "patient", "Binary/x",
    "Coding", "Resource", "É",
]  # fmt: skip
_STRINGS = [
    "", " ", "x", "é", "\u00a0", "\x1b[31m", "urn:uuid:x", "#", "#a", "Binary/x", "1.02.3",
    "aGk=", "aGk\u00e9", "urn:oid:1.2", "http://dicom.nema.org/resources/ontology/DCM", "Patient?",
    "PUT", "transaction", "2024-01-01", "\ud7ff", "x" * 300,
]  # fmt: skip

text = st.text(st.characters(codec="utf-8"), max_size=12)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | text
    | st.sampled_from(_STRINGS)
)
keys = st.sampled_from(_KEYS) | text
resource_types = st.sampled_from(_TYPES) | scalars | st.lists(st.sampled_from(_TYPES), max_size=2)
json_values = st.recursive(
    scalars | st.fixed_dictionaries({"resourceType": resource_types}, optional={"id": scalars}),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=16,
)


@cache
def golden_bundles() -> tuple[dict[str, Any], ...]:
    """fhirimg's own bundles (``tests/golden``): the seeds of the JSON fuzzers."""
    return tuple(orjson.loads(p.read_bytes()) for p in GOLDEN_BUNDLES)


def _slots(doc: Any) -> Iterator[tuple[Any, Any]]:
    """(container, key or index) of every value in ``doc``, iteratively."""
    stack = [doc]
    while stack:
        node = stack.pop()
        pairs = node.items() if isinstance(node, dict) else enumerate(node)
        for key, value in pairs:
            yield node, key
            if isinstance(value, dict | list):
                stack.append(value)


@st.composite
def mutated_bundles(draw: st.DrawFn) -> bytes:
    """A golden bundle with 1 to 4 subtrees replaced, renamed or doubled, as file bytes."""
    doc = copy.deepcopy(draw(st.sampled_from(golden_bundles())))
    for _ in range(draw(st.integers(1, 4))):
        slots = list(_slots(doc))
        if not slots:
            break
        parent, key = draw(st.sampled_from(slots))
        action = draw(st.sampled_from(["replace", "replace", "twin", "type", "drop"]))
        if action == "replace":
            parent[key] = draw(json_values)
        elif action == "twin" and isinstance(parent, dict):
            parent[f"_{key}"] = draw(json_values)  # a primitive's extension twin, any shape
        elif action == "type" and isinstance(parent, dict):
            parent["resourceType"] = draw(resource_types)
        elif action == "drop" and isinstance(parent, dict):
            del parent[key]
    if draw(st.integers(0, 9)) == 9:
        doc = draw(json_values)  # not a bundle at all
    slots = list(_slots(doc)) if isinstance(doc, dict | list) else []
    if slots and draw(st.integers(0, 5)) == 5:
        parent, key = draw(st.sampled_from(slots))
        parent[key] = draw(st.sampled_from(sorted(_RAW)))
    data = orjson.dumps(doc)
    for marker, raw in _RAW.items():
        data = data.replace(f'"{marker}"'.encode(), raw)
    cut = draw(st.integers(0, 19))  # hypothesis favours small values: rare cases at the top
    if cut == 19:
        data = data[: draw(st.integers(0, len(data)))]  # truncated
    elif cut == 18:
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.sampled_from([b"\xff", b"\x00", b"]", b"{"])) + data[at:]
    return data


def draw(strategy: st.SearchStrategy[T], count: int, seed: int) -> list[T]:
    """``count`` examples of ``strategy`` (fewer if it runs dry), the same for the same seed:
    hypothesis' generator without its runner (no shrinking, no example database)."""
    out: list[T] = []

    @hypothesis_seed(seed)
    @settings(
        max_examples=count,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def collect(value: T) -> None:
        out.append(value)

    collect()
    return out


# --------------------------------------------------------------------------- writing a batch


def write_inputs(folder: Path, blobs: Sequence[bytes], suffix: str) -> list[Path]:
    """Each blob as ``folder/NNNNN<suffix>`` (owner-only: mutants of sample patient data)."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    paths = []
    for i, blob in enumerate(blobs):
        path = folder / f"{i:05d}{suffix}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(blob)
        paths.append(path)
    return paths


def make_batch(kind: str, seed: int, count: int) -> list[bytes]:
    """``count`` mutants of one kind (``headers``, ``pixels``, ``validate``, ``push``), the
    same bytes for the same seed."""
    if kind in ("validate", "push"):
        return draw(mutated_bundles(), count, seed)
    rng = random.Random(f"{kind}:{seed}")
    pool = uid_pool(rng)
    mutate = mutate_header if kind == "headers" else mutate_pixels
    return [mutate(rng, pool) for _ in range(count)]


# --------------------------------------------------------------------------- the checks


def check_bundles(out_dir: Path) -> list[Failure]:
    """Every bundle file written validates with all layers of :mod:`fhirimg.validate`."""
    from fhirimg.validate import ALL_LAYERS, Severity, validate_bytes

    failures = []
    for path in sorted(out_dir.glob("study-*.json")):
        data = path.read_bytes()  # Binaries beside it (BinaryMode.BESIDE) are looked for there
        result = validate_bytes(data, source=str(path), layers=ALL_LAYERS, beside=path.parent)
        errors = [f for f in result.findings if f.severity is Severity.ERROR]
        if errors:
            shown = "; ".join(f"{f.location}: {f.message}" for f in errors[:3])
            failures.append(Failure(INVALID, f"{path.name}: {shown}"[:500], (str(path),)))
    return failures


def check_report(report_path: Path, inputs: Sequence[Path]) -> list[Failure]:
    """Every input is in ``report.json`` exactly once, with a reason unless converted."""
    try:
        doc = orjson.loads(report_path.read_bytes())
        entries = doc["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return [Failure(UNACCOUNTED, f"no usable report.json: {exc}")]
    counts = Counter(e.get("path") for e in entries)
    by_path = {e.get("path"): e for e in entries}
    failures = []
    for path in map(str, inputs):
        if counts[path] != 1:
            failures.append(Failure(UNACCOUNTED, f"in report.json {counts[path]} times", (path,)))
        elif by_path[path].get("status") != "converted" and not by_path[path].get("reason"):
            failures.append(Failure(UNACCOUNTED, f"{by_path[path]} has no reason", (path,)))
    extra = set(counts) - set(map(str, inputs))
    if extra:
        failures.append(Failure(UNACCOUNTED, f"report.json names files never given: {extra}"))
    return failures


PIXEL_VARIANTS: tuple[dict[str, Any], ...] = (
    {"binary": "inline"},
    {"binary": "beside", "fmt": "jpeg", "size": 17},
    {"binary": "inline", "per": "series", "frame": 2},
    {"binary": "inline", "fmt": "jpeg", "size": 1, "frame": 3},
)
"""The Binary and rendered-image options pixel batches cycle through (``variant`` below)."""


def check_convert(
    inputs: Sequence[Path], out_dir: Path, pixels: bool, variant: int = 0
) -> list[Failure]:
    """``fhirimg.convert`` (library, one process) over ``inputs``; with ``pixels``, Binaries and
    rendered images as :data:`PIXEL_VARIANTS` ``[variant % 4]`` says (the first: Binaries
    inline, PNG per instance). Nothing may escape; report and bundles are then checked."""
    from fhirimg import ConvertOptions, convert
    from fhirimg.images.binary import BinaryMode
    from fhirimg.images.rendered import MediaOptions, MediaPer

    chosen = dict(PIXEL_VARIANTS[variant % len(PIXEL_VARIANTS)])
    binary = BinaryMode(chosen.pop("binary"))
    per = MediaPer(chosen.pop("per", "instance"))
    options = ConvertOptions(
        out_dir=out_dir,
        jobs=1,
        binary=binary if pixels else None,
        media=MediaOptions(per=per, **chosen) if pixels else None,
    )
    try:
        convert([str(p) for p in inputs], options)
    except BaseException as exc:  # a decoder panic is a BaseException: the crash we look for
        if isinstance(exc, KeyboardInterrupt):
            raise
        return [_crash(exc)]
    return check_report(out_dir / "report.json", inputs) + check_bundles(out_dir)


def run_cli(args: Sequence[str], timeout: float) -> tuple[int, str, str]:
    """``python -m fhirimg ARGS`` in a child process: (exit code, stdout, stderr); a run past
    ``timeout`` is killed and gives exit code -9."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "fhirimg", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        out, err = proc.communicate()
        return -9, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")
    return proc.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")


_LOG_RECORD = re.compile(r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+: ")
_TRACEBACK = "Traceback (most recent call last):"


def unlogged_traceback(stderr: str) -> bool:
    """Whether ``stderr`` holds a traceback that is not part of a log record: an exception that
    escaped (in the command or one of its worker processes). A library that logs an error with
    its traceback (pydicom's decoders do, issue 11 item 19) is not a crash.

    >>> unlogged_traceback("ERROR pydicom: bad\\nTraceback (most recent call last):\\n  x\\nE: m")
    False
    >>> unlogged_traceback("ERROR pydicom: bad\\n" + _TRACEBACK + "\\n  x\\nE: m\\n" + _TRACEBACK)
    True
    """
    state = "free"  # free | record (a log message) | logged (its traceback)
    for line in stderr.splitlines():
        if _LOG_RECORD.match(line):
            state = "record"
        elif line.startswith(_TRACEBACK):
            if state == "free":
                return True
            state = "logged"
        elif state == "logged" and line and not line[0].isspace():
            if not line.startswith(("During handling", "The above exception")):
                state = "free"  # the exception line closes the logged traceback
    return False


def cli_failures(code: int, stderr: str, allowed: Sequence[int]) -> list[Failure]:
    """A crash is exit 70, a traceback on stderr (not one a library logged), or an exit code
    the command does not use."""
    if code == -9:
        return [Failure(HANG, "the command was killed after its time limit")]
    if code == 70 or unlogged_traceback(stderr) or code not in allowed:
        tail = stderr.strip().splitlines()[-1:] or [""]
        return [Failure(CRASH, f"exit {code}: {tail[0]}"[:300], trace=stderr[-6000:])]
    return []


def check_convert_cli(
    inputs: Sequence[Path], out_dir: Path, pixels: bool, timeout: float = 300
) -> list[Failure]:
    """``fhirimg convert`` as a user runs it (``-j 2``): exit 0 or 1, no traceback, then the
    same report and bundle checks as :func:`check_convert`."""
    args = ["convert", *map(str, inputs), "-o", str(out_dir), "-q", "-j", "2"]
    if pixels:
        args += ["--binary", "inline", "--media"]
    code, _, stderr = run_cli(args, timeout)
    failures = cli_failures(code, stderr, (0, 1))
    if failures:
        return failures
    return check_report(out_dir / "report.json", inputs) + check_bundles(out_dir)


def check_validate(inputs: Sequence[Path]) -> list[Failure]:
    """``fhirimg.validate`` (library) over the files: each gets exactly one well-formed result,
    and the ``--json`` document can always be written."""
    from fhirimg.validate import ALL_LAYERS, FileResult, iter_validate
    from fhirimg.validate.runner import findings_json

    results: list[FileResult] = []
    try:
        results = list(iter_validate(list(inputs), layers=ALL_LAYERS))
        findings_json(results)
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            raise
        return [_crash(exc)]
    failures = []
    counts = Counter(r.file for r in results)
    for path in map(str, inputs):
        if counts[path] != 1:
            failures.append(Failure(UNACCOUNTED, f"{counts[path]} results", (path,)))
    for r in results:
        if any(not f.location or not f.message for f in r.findings):
            failures.append(Failure(CRASH, "a finding without location or message", (r.file,)))
    return failures


def check_push(folder: Path, inputs: Sequence[Path], server: str | None) -> list[Failure]:
    """``fhirimg push --json`` on a folder of bundles: with ``server`` None a ``--dry-run``,
    else against that server. Every file is a bundle result or ignored with a reason, once."""
    from typer.testing import CliRunner

    from fhirimg.cli import app

    args = ["push", str(folder), "--json", "-q", "-j", "2", "--journal", str(folder / ".j")]
    args += ["--server", server, "--force"] if server else ["--dry-run"]
    result = CliRunner().invoke(app, args)
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        return [_crash(result.exception)]
    failures = cli_failures(result.exit_code, stderr, (0, 1))
    if failures:
        return failures
    try:
        doc = json.loads(result.stdout)["summary"]
    except ValueError as exc:
        return [Failure(CRASH, f"--json printed no JSON: {exc}", trace=result.stdout[-2000:])]
    names = Counter(b["file"] for b in doc["bundles"])
    names.update(Path(i["file"]).name for i in doc["ignored"])
    failures = []
    for path in inputs:
        if names[path.name] != 1:
            failures.append(Failure(UNACCOUNTED, f"in the push report {names[path.name]} times"))
    for bundle in doc["bundles"]:
        if bundle["status"] == "failed" and not bundle.get("error"):
            failures.append(Failure(UNACCOUNTED, f"{bundle['file']} failed without a reason"))
    return failures


KINDS = ("headers", "pixels", "validate", "push")


SUFFIX = {"headers": ".dcm", "pixels": ".dcm", "validate": ".json", "push": ".json"}


def write_batch(kind: str, seed: int, count: int, folder: Path) -> list[Path]:
    """:func:`make_batch` written into ``folder`` (the inputs, also a failure's reproducer)."""
    return write_inputs(folder, make_batch(kind, seed, count), SUFFIX[kind])


def check_inputs(
    kind: str, inputs: Sequence[Path], out_dir: Path, server: str | None = None, variant: int = 0
) -> list[Failure]:
    """Run written inputs of ``kind`` through fhirimg (output, if any, into ``out_dir``): the
    failures found. ``push`` takes the folder of the first input, with a good bundle added;
    ``variant`` picks the pixel options (:data:`PIXEL_VARIANTS`)."""
    if kind in ("headers", "pixels"):
        return check_convert(inputs, out_dir, pixels=kind == "pixels", variant=variant)
    if kind == "validate":
        return check_validate(inputs)
    folder = inputs[0].parent
    control = folder / "control.json"  # a good bundle: push never finds "nothing to push"
    control.write_bytes(GOLDEN_BUNDLES[0].read_bytes())
    return check_push(folder, [*inputs, control], server)
