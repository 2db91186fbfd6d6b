"""What Table E.1-1 and the options say for one attribute, and the new value of a text value.

Shared by the two paths (:mod:`fhirimg.deid.record` for the header records the mapping reads,
:mod:`fhirimg.deid.dataset` for whole datasets), so that an attribute gets the same value in the
FHIR output and in the DICOM output.

Actions are the standard's codes (PS3.15 E.1.1): K keep, X remove, Z zero length, D dummy, U new
UID, C clean (a date shifted, free text cleaned), plus P: the patient's pseudonym. A compound code
of the table is resolved to the weaker one that keeps the IOD valid without a value: X/Z, X/Z/D and
Z/D to Z, X/D to X, X/Z/U* to U (UIDs replaced, sequences kept and walked).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from fhirimg.deid.keys import DeidOptions, Keyed, shift_da, shift_dt
from fhirimg.deid.table import BASIC, BASIC_MASKED, OPTIONS

PATIENT_NAME = 0x00100010  # (0010,0010) Patient's Name: Z in the table, the pseudonym here
PATIENT_ID = 0x00100020  # (0010,0020) Patient ID: Z/D in the table, the pseudonym here
PATIENT_SEX = 0x00100040  # (0010,0040): kept by default (Retain Patient Characteristics: K)
PATIENT_AGE = 0x00101010  # (0010,1010): kept by default (Retain Patient Characteristics: K)
# Issuers of values that are replaced or emptied: a pseudonym has no issuer, an emptied Accession
# Number none either. Not in Table E.1-1 (they name institutions, not the patient), removed here.
_ISSUERS = {
    0x00100024,  # (0010,0024) Issuer of Patient ID Qualifiers Sequence
    0x00080051,  # (0008,0051) Issuer of Accession Number Sequence
}
_COMPOUND = {"X/Z": "Z", "X/Z/D": "Z", "Z/D": "Z", "X/D": "X", "X/Z/U*": "U"}
DUMMY = "ANONYMOUS"
_DUMMIES = {
    "DA": "19000101",
    "DT": "19000101000000",
    "TM": "000000",
    "IS": "0",
    "DS": "0",
    "AS": "000D",
    "PN": DUMMY,
}


def table_code(tag: int) -> str | None:
    """The Basic Profile's code for ``tag`` (Table E.1-1), None when the table does not list it.

    >>> table_code(0x00100010), table_code(0x60023000), table_code(0x00280010) is None
    ('Z', 'X', True)
    """
    code = BASIC.get(tag)
    if code is not None:
        return code
    for base, mask, masked in BASIC_MASKED:
        if tag & mask == base:
            return masked
    return None


@lru_cache(maxsize=4096)
def _action(tag: int, opts: DeidOptions) -> str:
    if tag in (PATIENT_NAME, PATIENT_ID):
        return "P"
    group = tag >> 16
    if group & 1:  # private attributes (PS3.15 E.3.10): only those kept, with their creator
        element = tag & 0xFFFF
        creators = {k & 0xFFFF0000 | (k & 0xFF00) >> 8 for k in opts.keep_private}
        return "K" if tag in opts.keep_private or (element <= 0xFF and tag in creators) else "X"
    if 0x5000 <= group <= 0x50FF or 0x6000 <= group <= 0x60FF:
        return "X"  # curves and overlays go whole (they may hold text drawn over the image)
    if tag in _ISSUERS:
        return "X"
    code = table_code(tag)
    if code is None:
        return "K"  # not listed: not identifying (PS3.15 E.1.1)
    chosen = (
        ("retain_device_identity", opts.retain_device_identity),
        ("retain_institution_identity", opts.retain_institution_identity),
        ("retain_modified_dates", opts.retain_modified_dates),
        (
            "retain_patient_characteristics",
            opts.retain_patient_characteristics or tag in (PATIENT_SEX, PATIENT_AGE),
        ),
    )
    for column, on in chosen:
        if on and tag in OPTIONS[column]:
            return OPTIONS[column][tag]
    if opts.clean_descriptors and OPTIONS["clean_descriptors"].get(tag) == "C":
        return "C"
    return _COMPOUND.get(code, code)


def action(tag: int, opts: DeidOptions) -> str:
    """The action for ``tag`` under ``opts``: K, X, Z, D, U, C or P (module docstring).

    >>> o = DeidOptions(key=b"k" * 16)
    >>> [action(t, o) for t in (0x00100010, 0x00080020, 0x00081030, 0x00100040, 0x00090010)]
    ['P', 'C', 'X', 'K', 'X']
    """
    return _action(tag, opts)


@dataclass(frozen=True)
class Patient:
    """The keyed values of one patient: what every instance of the patient gets."""

    pseudonym: str
    shift_days: int
    identity: tuple[str, ...]
    """The patient's identifying strings (name components, id), taken out of cleaned text."""


def patient_of(
    keyed: Keyed,
    patient_id: str | None,
    issuer: str | None,
    name: str | None,
    birth_date: str | None,
    study_uid: str,
) -> Patient:
    """The :class:`Patient` of an instance from its original values. A patient is its Patient ID
    within its Issuer of Patient ID (0010,0021); without an ID, its name and birth date; without
    those, the study (then every study is a patient of its own)."""
    if patient_id:
        key = "id\0" + patient_id + "\0" + (issuer or "")
    elif name or birth_date:
        key = "name\0" + (name or "") + "\0" + (birth_date or "")
    else:
        key = "study\0" + study_uid
    parts = [p for p in _name_parts(name or "") if len(p) > 1]
    if patient_id:
        parts.append(patient_id)
    return Patient(
        keyed.pseudonym("patient", key),
        keyed.shift_days(key),
        tuple(sorted(set(parts), key=lambda p: (-len(p), p))),
    )


def _name_parts(name: str) -> list[str]:
    out: list[str] = []
    for group in name.split("="):
        out += [p.strip() for p in group.split("^") if p.strip()]
    return out


def clean_text(text: str, identity: tuple[str, ...]) -> str:
    """Free text with the patient's identifying strings taken out (Clean Descriptors)."""
    lowered = text
    for value in identity:
        while True:
            at = lowered.lower().find(value.lower())
            if at < 0:
                break
            lowered = lowered[:at] + lowered[at + len(value) :]
    return " ".join(lowered.split())


def text_value(act: str, vr: str, value: str, keyed: Keyed, patient: Patient) -> str | None:
    """The new value of one text value under ``act``; None: the attribute goes (X). Z gives "".

    >>> k = Keyed(b"0123456789abcdef")
    >>> p = Patient("PSEUDO", -10, ("Doe",))
    >>> text_value("C", "DA", "20240111", k, p), text_value("Z", "SH", "A1", k, p)
    ('20240101', '')
    >>> text_value("C", "LO", "CT of Doe", k, p), text_value("P", "PN", "Doe^J", k, p)
    ('CT of', 'PSEUDO')
    """
    if act == "K":
        return value
    if act == "X":
        return None
    if act == "Z":
        return ""
    if act == "P":
        return patient.pseudonym
    if act == "U":
        return keyed.uid(value) if vr == "UI" else ""
    if act == "C":
        if vr == "DA":
            return shift_da(value, patient.shift_days) or ""
        if vr == "DT":
            return shift_dt(value, patient.shift_days) or ""
        if vr == "TM":
            return value  # a shift by whole days leaves the time of day
        return clean_text(value, patient.identity)
    # D: a dummy of the VR (a UID: a new one, since references must still resolve)
    if vr == "UI":
        return keyed.uid(value)
    return _DUMMIES.get(vr, DUMMY)
