"""The de-identification options and the keyed functions: pseudonyms, UIDs, the date shift.

Everything that turns an identifying value into another goes through :class:`Keyed`, an
HMAC-SHA-256 (RFC 2104) under the user's key, with a domain per kind of value so that a UID and a
Patient ID of the same text give unrelated results. The same key and input give the same output on
every run and machine; without the key the mapping cannot be redone or reversed. The key itself is
never printed, logged or written: :class:`DeidOptions` leaves it out of its ``repr`` and output
folders record only :attr:`DeidOptions.fingerprint`.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
from dataclasses import dataclass, field

UID_ROOT = "2.25."  # PS3.5 B.2: a UID from a UUID, written as one decimal integer
_SHIFT_DAYS = 3650  # dates move back by 1 .. 3650 days, fixed per patient


@dataclass(frozen=True)
class DeidOptions:
    """How to de-identify; the option names are the profile's (PS3.15 E.3).

    The defaults are the issue's: Retain Longitudinal Temporal Information with Modified Dates
    on, patient characteristics limited to sex and age, descriptors removed, UIDs replaced,
    device and institution identity removed, private attributes removed.
    """

    key: bytes = field(repr=False)
    patient_system: str | None = None
    """Identifier.system of the pseudonymous Patient IDs (``--deid-patient-system``)."""
    retain_modified_dates: bool = True
    """Retain Longitudinal Temporal Information with Modified Dates: dates shifted per patient."""
    retain_patient_characteristics: bool = False
    """Retain Patient Characteristics in full; by default only sex and age are kept."""
    clean_descriptors: bool = False
    """Clean Descriptors: free text kept with the patient's identifying values taken out; by
    default free-text descriptions are removed."""
    retain_device_identity: bool = False
    retain_institution_identity: bool = False
    keep_private: tuple[int, ...] = ()
    """Private attributes to keep (tags); every other private attribute is removed."""
    allow_burned_in: bool = False
    """Put images that may carry burned-in text into Binaries and rendered images all the same."""

    def __post_init__(self) -> None:
        if len(self.key) < 16:
            from fhirimg.errors import ConfigError

            raise ConfigError("the de-identification key must be at least 16 bytes")

    @property
    def fingerprint(self) -> str:
        """A short digest that tells keys and options apart without revealing the key."""
        what = repr(self).encode() + hmac.new(self.key, b"fhirimg-fingerprint", "sha256").digest()
        return hashlib.sha256(what).hexdigest()[:16]


class Keyed:
    """The keyed functions of one key.

    >>> k = Keyed(b"0123456789abcdef")
    >>> k.uid("1.2.3") == k.uid("1.2.3") != k.uid("1.2.4"), k.uid("1.2.3").startswith("2.25.")
    (True, True)
    >>> len(k.pseudonym("patient", "12345"))
    16
    """

    def __init__(self, key: bytes) -> None:
        self._key = key

    def __repr__(self) -> str:
        return "Keyed(<key>)"

    def mac(self, domain: str, value: str) -> bytes:
        """HMAC-SHA-256 of ``value`` in ``domain``."""
        msg = domain.encode() + b"\0" + value.encode("utf-8", "surrogateescape")
        return hmac.new(self._key, msg, "sha256").digest()

    def uid(self, uid: str) -> str:
        """A new UID for ``uid``: ``2.25.`` and a 128-bit number with the bits of an RFC 9562
        UUID version 8 (custom), so it is a UUID-derived UID (PS3.5 B.2), at most 44 characters."""
        raw = bytearray(self.mac("uid", uid.strip("\0 "))[:16])
        raw[6] = (raw[6] & 0x0F) | 0x80  # version 8
        raw[8] = (raw[8] & 0x3F) | 0x80  # variant 10
        return UID_ROOT + str(int.from_bytes(raw, "big"))

    def pseudonym(self, domain: str, value: str) -> str:
        """16 characters of base32 (A-Z, 2-7): fits LO, SH and PN values."""
        return base64.b32encode(self.mac(domain, value)[:10]).decode("ascii")

    def shift_days(self, patient: str) -> int:
        """The date shift of one patient: back by 1 .. 3650 days."""
        return -(int.from_bytes(self.mac("date", patient)[:4], "big") % _SHIFT_DAYS + 1)


def shift_da(value: str, days: int) -> str | None:
    """A DA ``YYYYMMDD`` moved by ``days``; None when it is not a valid date (it then goes).

    >>> shift_da("20240301", -1), shift_da("2024", -1)
    ('20240229', None)
    """
    text = value.strip(" \0")
    if len(text) != 8 or not text.isdigit():
        return None
    try:
        day = dt.date(int(text[:4]), int(text[4:6]), int(text[6:]))
        return (day + dt.timedelta(days=days)).strftime("%Y%m%d")
    except (ValueError, OverflowError):
        return None


def shift_dt(value: str, days: int) -> str | None:
    """A DT moved by ``days``: its date part shifted, time and offset kept; a DT of less than a
    day's precision (a year, a month) goes, since it cannot be moved without lying.

    >>> shift_dt("20240301120000.5+0100", -1)
    '20240229120000.5+0100'
    """
    text = value.strip(" \0")
    moved = shift_da(text[:8], days)
    return None if moved is None else moved + text[8:]
