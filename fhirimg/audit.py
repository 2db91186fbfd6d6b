"""report.json as an audit record: who ran what, when, with which options, over which inputs, and
what it warned about, by code.

fhirimg runs unattended (cron, CI, integration scripts); the report of a run is what is looked at
afterwards. Its ``audit`` section (the last one, after ``history``: it holds times, so it is not
part of what the golden files compare) says which fhirimg version ran, when it started and ended,
the command and the options given (from the command line, the environment or the config file;
secrets shown as ``***``, URLs without credentials), the input roots, and the warnings counted by
code. The same codes count warnings in the summary (``summary.warnings``), so a script can watch
for ``time-left-out`` without parsing English.

The codes are given here, from the text of each warning, in one table: the warnings are made in
many places (:mod:`fhirimg.values`, :mod:`fhirimg.mapping`, :mod:`fhirimg.scan`), and a new one
without a pattern here is ``other``.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from fhirimg.jsonio import JSON

__all__ = [
    "WARNING_CODES",
    "Invocation",
    "audit_json",
    "count_warnings",
    "fhirimg_version",
    "now_utc",
    "warning_code",
]

WARNING_CODES: tuple[tuple[str, str, str], ...] = (
    ("time-left-out", r"time \S+ left out: no time zone known", "a DICOM time without (0008,0201) "
     "Timezone Offset From UTC and no --timezone: only the date is kept"),
    ("patient-id-no-system", r"Patient ID has no issuer system", "a Patient ID without an "
     "identifier system: the Patient is not matched on the server"),
    ("date-invalid", r"date .* is not a valid DICOM DA|Birth Date is not a valid DA",
     "a date that does not parse (DA): left out"),
    ("time-invalid", r"time .* is not a valid DICOM TM", "a time that does not parse (TM): only "
     "the date is given"),
    ("tz-offset-invalid", r"Timezone Offset From UTC", "a malformed (0008,0201): ignored"),
    ("text-cleaned", r"text cleaned in ", "text FHIR does not allow was cleaned"),
    ("no-file-meta", r"no PS3.10 preamble/file meta|without preamble/File Meta", "a file without the PS3.10 preamble and "
     "file meta information, read as a bare dataset"),
    ("read-warning", r"pydicom: |character set", "what reading the file met (pydicom's "
     "complaint, a character set), without the values"),
    ("patient-id-conflict", r"different Patient IDs in one study", "one study, several Patient "
     "IDs: the first is used"),
    ("no-patient-id", r"no Patient ID", "no (0010,0020): the Patient's id is derived"),
    ("value-invalid", r"is not a valid|is not M, F or O|is not L, R or B",
     "another value that is not valid for its VR or enumeration: left out or defaulted"),
    ("modality-missing", r"has no Modality", "a series without (0008,0060): OT"),
    ("sr-content", r"^SR \S+: |content item ", "an SR content item that could not be read or "
     "mapped to an Observation: left out, the rest converts (docs/measurements.md)"),
)  # fmt: skip
"""(code, pattern, meaning) of each kind of warning, the first match wins (docs/cli.md)."""

_PATTERNS = [(code, re.compile(pattern)) for code, pattern, _ in WARNING_CODES]


def warning_code(text: str) -> str:
    """The code of a warning's text (``other`` when no pattern matches).

    >>> warning_code("time 101500 left out: no time zone known (no (0008,0201), no --timezone)")
    'time-left-out'
    >>> warning_code("Patient ID has no issuer system: ...")
    'patient-id-no-system'
    >>> warning_code("something new")
    'other'
    """
    return next((code for code, pattern in _PATTERNS if pattern.search(text)), "other")


def count_warnings(texts: Iterable[str]) -> dict[str, int]:
    """Warnings counted by code, codes sorted (deterministic).

    >>> count_warnings(["date '2020' is not a valid DICOM DA; left out", "x", "y"])
    {'date-invalid': 1, 'other': 2}
    """
    counts = Counter(warning_code(t) for t in texts)
    return dict(sorted(counts.items()))


def now_utc() -> str:
    """The time now, UTC, to the second: ``2026-01-31T02:00:00Z``."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def fhirimg_version() -> str:
    """fhirimg's version (:data:`fhirimg._version.__version__`, ``project.version``)."""
    from fhirimg._version import __version__

    return __version__


@dataclass(frozen=True)
class Invocation:
    """How a run was asked for, as the caller (the CLI) knows it: the command, the options given
    (already redacted: secrets ``***``, URLs without credentials) with where each came from, the
    input roots, the config file read, and when the run started."""

    command: str
    options: Mapping[str, JSON] = field(default_factory=dict)
    inputs: tuple[str, ...] = ()
    config_file: str | None = None
    started: str = field(default_factory=now_utc)


def audit_json(invocation: Invocation, warnings: Iterable[str]) -> JSON:
    """The ``audit`` section of report.json for a run asked for by ``invocation`` that warned
    ``warnings``; ``ended`` is now."""
    out: JSON = {
        "fhirimgVersion": fhirimg_version(),
        "command": invocation.command,
        "started": invocation.started,
        "ended": now_utc(),
        "inputs": list(invocation.inputs),
        "options": dict(invocation.options),
    }
    if invocation.config_file is not None:
        out["configFile"] = invocation.config_file
    out["warnings"] = count_warnings(warnings)
    return out
