"""Converters from DICOM value representations to FHIR primitive values.

Pure functions with no pydicom dependency, so that they can be property-tested on their own. Each
returns ``None`` (and the caller records a warning) when the DICOM value is malformed: a bad value
leaves one element out, it never stops a conversion.

References: DICOM PS3.5 section 6.2 (DA, TM, DT, PN, UI, IS), FHIR R4 datatypes (date, dateTime,
HumanName) and ``fhir-imaging-spec.md`` "Dates and times".
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from enum import StrEnum
from urllib.parse import quote
from zoneinfo import ZoneInfo

_DA = re.compile(r"^(\d{4})(\d{2})(\d{2})$")
# TM: HH[MM[SS[.F{1,6}]]] (PS3.5 Table 6.2-1); partial values are legal.
_TM = re.compile(r"^(\d{2})(?:(\d{2})(?:(\d{2})(?:\.(\d{1,6}))?)?)?$")
# DT: YYYY[MM[DD[HH[MM[SS[.F{1,6}]]]]]][&ZZXX]
_DT = re.compile(
    r"^(\d{4})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:\.(\d{1,6}))?)?)?)?)?)?"
    r"([+-]\d{4})?$"
)
_OFFSET = re.compile(r"^([+-])(\d{2})(\d{2})$")
_UID = re.compile(r"^(0|[1-9]\d*)(\.(0|[1-9]\d*))*$")
_IS = re.compile(r"^[+-]?\d{1,12}$")


def parse_da(value: str) -> str | None:
    """DICOM DA ``YYYYMMDD`` to FHIR date ``YYYY-MM-DD``; ``None`` when malformed or not a real day.

    >>> parse_da("20240229")
    '2024-02-29'
    >>> parse_da("1996.06.11") is None
    True
    """
    m = _DA.match(value.strip())
    if not m:
        return None
    y, mo, d = (int(g) for g in m.groups())
    try:
        return date(y, mo, d).isoformat()
    except ValueError:
        return None


@dataclass(frozen=True)
class Time:
    """A DICOM TM with its precision: minute and second may be absent (partial TM)."""

    hour: int
    minute: int | None = None
    second: int | None = None
    fraction: str | None = None  # the digits after the dot, as written


def parse_tm(value: str) -> Time | None:
    """DICOM TM to :class:`Time`; ``None`` when malformed (``11:20:``, ``25``, ``1261``).

    >>> parse_tm("143005.25")
    Time(hour=14, minute=30, second=5, fraction='25')
    >>> parse_tm("11:20:") is None
    True
    """
    m = _TM.match(value.strip())
    if not m:
        return None
    hh, mm, ss, frac = m.groups()
    hour = int(hh)
    minute = int(mm) if mm is not None else None
    second = int(ss) if ss is not None else None
    # PS3.5: hours 00-23, minutes 00-59, seconds 00-60 (leap second).
    if hour > 23 or (minute is not None and minute > 59) or (second is not None and second > 60):
        return None
    return Time(hour, minute, second, frac)


def parse_offset(value: str) -> timedelta | None:
    """``&ZZXX`` UTC offset (DT suffix or (0008,0201) Timezone Offset From UTC) to a timedelta.

    >>> parse_offset("-0500")
    datetime.timedelta(days=-1, seconds=68400)
    >>> parse_offset("+2500") is None
    True
    """
    m = _OFFSET.match(value.strip())
    if not m:
        return None
    sign, hh, mm = m.groups()
    hours, minutes = int(hh), int(mm)
    if minutes > 59:
        return None
    delta = timedelta(hours=hours, minutes=minutes)
    delta = -delta if sign == "-" else delta
    # PS3.5 Table 6.2-1 (DT): offsets range from -1200 to +1400 (FHIR dateTime also ends at +14:00).
    if not timedelta(hours=-12) <= delta <= timedelta(hours=14):
        return None
    return delta


def format_offset(delta: timedelta) -> str:
    """A timedelta as FHIR's ``+hh:mm`` (``Z`` for zero, as fhir.resources writes it).

    >>> format_offset(timedelta(hours=1))
    '+01:00'
    >>> format_offset(timedelta(0))
    'Z'
    """
    total = int(delta.total_seconds()) // 60
    if total == 0:
        return "Z"
    sign = "-" if total < 0 else "+"
    hours, minutes = divmod(abs(total), 60)
    return f"{sign}{hours:02d}:{minutes:02d}"


def fhir_datetime(
    da: str | None,
    tm: str | None,
    tz_offset: str | None = None,
    zone: str | None = None,
) -> tuple[str | None, list[str]]:
    """Combine DICOM DA + TM into a FHIR dateTime; returns ``(value, warnings)``.

    FHIR R4 dateTime: "If hours and minutes are specified, a time zone SHALL be populated", and
    seconds are required with a time. So a partial TM is completed with zeros, and the zone comes
    from (0008,0201) Timezone Offset From UTC (``tz_offset``), else from the IANA ``zone`` the user
    configured (DST-aware for that date), else the time is left out and only the date is given.

    >>> fhir_datetime("20240105", "0930", "+0100")
    ('2024-01-05T09:30:00+01:00', [])
    >>> fhir_datetime("20240105", "0930")
    ('2024-01-05', ['time 0930 left out: no time zone known (no (0008,0201), no --timezone)'])
    """
    warnings: list[str] = []
    if not da:
        return None, warnings
    day = parse_da(da)
    if day is None:
        warnings.append(f"date {da!r} is not a valid DICOM DA; left out")
        return None, warnings
    if not tm:
        return day, warnings
    t = parse_tm(tm)
    if t is None:
        warnings.append(f"time {tm!r} is not a valid DICOM TM; only the date is given")
        return day, warnings
    clock = f"{t.hour:02d}:{t.minute or 0:02d}:{t.second or 0:02d}"
    if t.fraction:
        clock += "." + t.fraction
    offset: timedelta | None = None
    if tz_offset:
        offset = parse_offset(tz_offset)
        if offset is None:
            warnings.append(f"Timezone Offset From UTC {tz_offset!r} is malformed; ignored")
    if offset is None and zone:
        local = datetime.fromisoformat(
            f"{day}T{t.hour:02d}:{t.minute or 0:02d}:{t.second or 0:02d}"
        )
        offset = local.replace(tzinfo=ZoneInfo(zone)).utcoffset()
    if offset is None:
        warnings.append(f"time {tm} left out: no time zone known (no (0008,0201), no --timezone)")
        return day, warnings
    return f"{day}T{clock}{format_offset(offset)}", warnings


def fhir_datetime_from_dt(
    dt: str, tz_offset: str | None = None, zone: str | None = None
) -> tuple[str | None, list[str]]:
    """DICOM DT (``YYYY[MM[DD[HH[MM[SS[.F]]]]]][&ZZXX]``) to a FHIR dateTime.

    The DT's own offset wins over (0008,0201), which wins over ``zone``. Precision is kept:
    ``2024`` stays a year, ``202401`` a month.

    >>> fhir_datetime_from_dt("20240105093000.5-0500")
    ('2024-01-05T09:30:00.5-05:00', [])
    >>> fhir_datetime_from_dt("2024")
    ('2024', [])
    """
    m = _DT.match(dt.strip())
    if not m:
        return None, [f"date-time {dt!r} is not a valid DICOM DT; left out"]
    y, mo, d, hh, mi, ss, frac, own = m.groups()
    if int(y) == 0:  # FHIR date/dateTime patterns have no year 0000
        return None, [f"date-time {dt!r} has year 0000; left out"]
    if mo is None:
        return y, []
    if d is None:
        if not 1 <= int(mo) <= 12:
            return None, [f"date-time {dt!r} has no valid month; left out"]
        return f"{y}-{mo}", []
    da = f"{y}{mo}{d}"
    if hh is None:
        day = parse_da(da)
        return (day, []) if day else (None, [f"date-time {dt!r} is not a real day; left out"])
    tm = hh + (mi or "") + (ss or "") + (f".{frac}" if frac else "")
    notes: list[str] = []
    if own and parse_offset(own) is None:
        # An unusable own offset is no offset: (0008,0201) is next in line, then the zone.
        notes.append(f"date-time {dt!r} has a malformed UTC offset; ignored")
        own = None
    value, warnings = fhir_datetime(da, tm, own or tz_offset, zone)
    return value, notes + warnings


# (0010,0040) Patient's Sex -> Patient.gender (administrative-gender, required binding).
_GENDER = {"M": "male", "F": "female", "O": "other"}


def fhir_gender(sex: str | None) -> str:
    """DICOM Patient's Sex to FHIR gender: M/F/O to male/female/other, anything else ``unknown``.

    >>> fhir_gender("F"), fhir_gender(""), fhir_gender("X")
    ('female', 'unknown', 'unknown')
    """
    return _GENDER.get((sex or "").strip().upper(), "unknown")


# iso21090-EN-representation codes for the three PN component groups (PS3.5 6.2.1.1).
_REPRESENTATION = ("ABC", "IDE", "SYL")
EN_REPRESENTATION_URL = "http://hl7.org/fhir/StructureDefinition/iso21090-EN-representation"


def human_names(pn: str) -> list[dict[str, object]]:
    """A decoded DICOM PN (``Family^Given^Middle^Prefix^Suffix``, up to three ``=`` groups) to
    FHIR HumanName dicts: one per non-empty group; family from component 1, given from 2 and 3,
    prefix from 4, suffix from 5 (``fhir-imaging-spec.md``, Patient). When the name has more than
    one group, or its only group is not the first (``=山田^太郎``), each HumanName carries the
    iso21090-EN-representation extension (ABC, IDE, SYL) so a reader can tell the alphabetic from
    the ideographic and phonetic forms.

    >>> human_names("Doe^John^Q^Dr^Jr")
    [{'family': 'Doe', 'given': ['John', 'Q'], 'prefix': ['Dr'], 'suffix': ['Jr']}]
    >>> [n["family"] for n in human_names("Yamada^Tarou=山田^太郎")]
    ['Yamada', '山田']
    """
    groups = pn.split("=")[:3]
    multi = sum(1 for g in groups if g.strip("^ ")) > 1
    names: list[dict[str, object]] = []
    for index, group in enumerate(groups):
        parts = [p.strip() for p in group.split("^")]
        parts += [""] * (5 - len(parts))
        family, given, middle, prefix, suffix = parts[:5]
        name: dict[str, object] = {}
        # PS3.5 6.2.1.1: the group's position says its form; a lone ideographic or phonetic
        # group without its code would read as the alphabetic name.
        if multi or index > 0:
            name["extension"] = [
                {"url": EN_REPRESENTATION_URL, "valueCode": _REPRESENTATION[index]}
            ]
        if family:
            name["family"] = family
        givens = [g for g in (given, middle) if g]
        if givens:
            name["given"] = givens
        if prefix:
            name["prefix"] = [prefix]
        if suffix:
            name["suffix"] = [suffix]
        if any(k != "extension" for k in name):
            names.append(name)
    return names


def display_name(pn: str) -> str | None:
    """A PN as a readable display string (first group, ``Given Middle Family``) for references.

    >>> display_name("Smith^Anna^^Dr")
    'Dr Anna Smith'
    """
    names = human_names(pn)
    if not names:
        return None
    n = names[0]
    words = [*n.get("prefix", []), *n.get("given", []), n.get("family", "")]  # type: ignore[misc]
    text = " ".join(str(w) for w in words if w)
    return text or None


def is_valid_uid(uid: str) -> bool:
    """A DICOM UID (PS3.5 9.1): digits and dots, no empty or zero-led component, <= 64 chars.

    >>> is_valid_uid("1.2.840.10008.5.1.4.1.1.2"), is_valid_uid("1.02.3"), is_valid_uid("1..2")
    (True, False, False)
    """
    return 0 < len(uid) <= 64 and _UID.match(uid) is not None


def parse_is(value: str) -> int | None:
    """DICOM IS (integer string, up to 12 characters) to int; ``None`` when malformed (``1A``).

    >>> parse_is(" 42 "), parse_is("1A")
    (42, None)
    """
    v = value.strip()
    return int(v) if _IS.match(v) else None


class TextKind(StrEnum):
    """The FHIR primitive a DICOM text value becomes: what :func:`fhir_text` may keep.

    ``string`` (and ``markdown``): FHIR R4 ``[ \\r\\n\\t\\S]+``, tab, CR and LF allowed;
    ``code``: no leading or trailing whitespace, single spaces inside (R5 ``[^\\s]+( [^\\s]+)*``);
    ``uri``: no whitespace at all (``\\S*``).
    """

    STRING = "string"
    CODE = "code"
    URI = "uri"


# What the three kinds never keep. FHIR datatypes, "string": "Strings SHALL NOT contain Unicode
# character points below 32, except for u0009 (horizontal tab), u0010 (carriage return) and u0013
# (line feed)"; the JSON Schema's string pattern ([ \r\n\t\S]) refuses every other whitespace
# (NBSP, U+2028, U+0085, ...). So: C0 controls but tab, CR, LF, DEL and the C1 controls (U+0085
# NEL too: a Latin-1 decode of a stray 0x85) are dropped; Unicode space separators (Zs: NBSP
# U+00A0, U+2000..U+200A, U+3000, ...) become a space; the line and paragraph separators
# U+2028/U+2029 a line feed; lone surrogates (a bad decode, a JSON "\ud800") U+FFFD.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_SPACE_SEPARATOR = re.compile(r"[\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]")
_LINE_SEPARATOR = re.compile(r"[\u2028\u2029]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")
_WHITESPACE_RUN = re.compile(r"\s+")
# What a code or a uri must not have inside, once the characters above are gone.
_INNER_SPACE = {TextKind.CODE: re.compile(r"\s\s|[\t\n\r]"), TextKind.URI: re.compile(r"\s")}
_NOT_ALLOWED = re.compile(
    r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f"
    r"\u3000\ud800-\udfff]"
)


def as_is(texts: Sequence[str], kind: TextKind = TextKind.STRING) -> bool:
    """Whether :func:`fhir_text` gives each of ``texts`` back unchanged and without a note, in
    one pass over them all (the common case: a header with nothing to clean).

    >>> as_is(["CT", "MR"], TextKind.CODE), as_is(["CT", "M\tR"], TextKind.CODE), as_is([""])
    (True, False, False)
    """
    for text in texts:
        if not text or text != text.strip():
            return False
    joined = "|".join(texts)  # "|" is allowed anywhere and is no space: nothing found across
    if _NOT_ALLOWED.search(joined) is not None:
        return False
    return kind is TextKind.STRING or _INNER_SPACE[kind].search(joined) is None


def fhir_text(value: str, kind: TextKind = TextKind.STRING) -> tuple[str | None, tuple[str, ...]]:
    """A decoded DICOM text value made fit for a FHIR primitive of ``kind``; returns
    ``(value, changes)``: ``value`` None when nothing is left, ``changes`` what was done, in
    words that never quote the value (for a warning).

    Leading and trailing whitespace is removed without a note (DICOM pads with spaces); a
    ``code`` has its inner whitespace runs made single spaces, a ``uri`` its inner whitespace
    percent-encoded (RFC 3986 2.1).

    >>> fhir_text("M\\u00fcller\\u00a0Anna")
    ('Müller Anna', ('no-break or other Unicode space made a plain space',))
    >>> fhir_text("CT\\x00", TextKind.CODE)
    ('CT', ('control character removed',))
    >>> fhir_text("line one\\r\\nline two")
    ('line one\\r\\nline two', ())
    >>> fhir_text("\\x85\\x1b")
    (None, ('control character removed', 'nothing left: left out'))
    """
    if _NOT_ALLOWED.search(value) is None and value == value.strip():  # the common case
        if kind is TextKind.STRING or _INNER_SPACE[kind].search(value) is None:
            return (value or None), ()
    changes: list[str] = []
    text = value
    if _NOT_ALLOWED.search(text) is not None:
        if _SURROGATE.search(text):
            text = _SURROGATE.sub("\ufffd", text)
            changes.append("undecodable character (lone surrogate) made U+FFFD")
        if _CONTROL.search(text):
            text = _CONTROL.sub("", text)
            changes.append("control character removed")
        if _SPACE_SEPARATOR.search(text):
            text = _SPACE_SEPARATOR.sub(" ", text)
            changes.append("no-break or other Unicode space made a plain space")
        if _LINE_SEPARATOR.search(text):
            text = _LINE_SEPARATOR.sub("\n", text)
            changes.append("Unicode line or paragraph separator made a line feed")
    text = text.strip()
    if kind is TextKind.CODE:
        squeezed = _WHITESPACE_RUN.sub(" ", text)
        if squeezed != text:
            changes.append("tab, line break or repeated space in a code made one space")
            text = squeezed
    elif kind is TextKind.URI and _WHITESPACE_RUN.search(text):
        text = _WHITESPACE_RUN.sub(lambda m: quote(m.group(0), safe=""), text)
        changes.append("space in a URI percent-encoded")
    if not text:
        if changes:
            changes.append("nothing left: left out")
        return None, tuple(changes)
    return text, tuple(changes)


NON_ACQUISITION_MODALITIES = frozenset(
    {
        "ANN", "AU", "DOC", "FID", "KO", "PLAN", "POS", "PR", "REG", "RESP", "RTDOSE",
        "RTINTENT", "RTPLAN", "RTRAD", "RTRECORD", "RTSEGANN", "RTSTRUCT", "RWV", "SEG", "SMR",
        "SR", "STAIN", "TEXTUREMAP",
    }
)  # fmt: skip
"""Modality (0008,0060) values that describe no acquisition: documents, reports, annotations,
presentation states, plans, registrations (DICOM PS3.16 CID 32 "Non-Acquisition Modality").
R4's ImagingStudy.modality lists acquisition modalities only (extensible binding to CID 29,
fhir-imaging-spec.md "Facts"); such series keep their own series.modality. R5 lists every
distinct modality (CID 33)."""


def study_modalities(codes: list[str], fhir_version: str) -> list[str]:
    """ImagingStudy.modality codes: ``codes`` without repeats, in order; for R4 (``4.x``) the
    acquisition modalities only.

    >>> study_modalities(["CT", "SR", "CT", "KO"], "4.0.1"), study_modalities(["CT", "SR"], "5.0.0")
    (['CT'], ['CT', 'SR'])
    """
    unique = list(dict.fromkeys(codes))
    if fhir_version.startswith("4"):
        return [c for c in unique if c not in NON_ACQUISITION_MODALITIES]
    return unique
