"""What a validation layer reports: one :class:`Finding` per problem, with a precise location.

Locations are FHIRPath-like paths from the root resource, with list indices:
``Bundle.entry[3].resource.series[0].instance[2].uid``. The root is the ``resourceType`` of the
validated object (``$`` when it has none).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

_INVARIANT_KEY = re.compile(r"^([A-Za-z][A-Za-z0-9]*-\d+)\b")
"""An invariant finding's message starts with its key: ``dom-6: ...``."""


class Severity(str, Enum):  # noqa: UP042 - the public API names (str, Enum)
    """How bad a finding is (the OperationOutcome.issue.severity values, less ``fatal``)."""

    ERROR = "error"
    WARNING = "warning"
    INFORMATION = "information"


class Layer(str, Enum):  # noqa: UP042 - same shape as Severity
    """Which layer found a finding (see docs/validate.md for what each checks)."""

    JSON = "json"
    MODEL = "model"
    SCHEMA = "schema"
    INVARIANT = "invariant"
    BUNDLE = "bundle"
    IMAGING = "imaging"
    SERVER = "server"


@dataclass(frozen=True)
class Finding:
    """One problem found in one file.

    >>> f = Finding(Severity.ERROR, "a.json", "Bundle.entry[0]", "bad", "bundle")
    >>> f.as_dict()["severity"]
    'error'
    """

    severity: Severity
    file: str
    location: str
    message: str
    layer: str
    rule: str | None = None
    """The id of the rule it breaks (:mod:`fhirimg.validate.rules`), for the bundle and imaging
    layers; None for the layers whose rules are the HL7 definitions themselves."""

    def as_dict(self) -> dict[str, str]:
        """The finding as plain JSON-ready strings (the ``--json`` output shape), always with a
        ``rule`` code (:meth:`rule_code`)."""
        return {
            "severity": self.severity.value,
            "file": self.file,
            "location": self.location,
            "message": self.message,
            "layer": self.layer,
            "rule": self.rule_code(),
        }

    def rule_code(self) -> str:
        """The code of what this finding checks: the rule id of the bundle and imaging layers
        (``bdl-7``, ``img-series-modality-in-study``), the FHIRPath invariant's key that an
        invariant finding's message starts with (``dom-6``), else the layer (``json``,
        ``model``, ``schema``, ``server``).

        >>> Finding(Severity.ERROR, "f", "Bundle", "dom-6: A resource should have narrative", "invariant").rule_code()
        'dom-6'
        >>> Finding(Severity.ERROR, "f", "Bundle.type", "not a code", "schema").rule_code()
        'schema'
        """  # noqa: E501
        if self.rule is not None:
            return self.rule
        key = _INVARIANT_KEY.match(self.message)
        if self.layer == "invariant" and key:
            return key.group(1)
        return self.layer


def child(path: str, name: str | int) -> str:
    """The location of element ``name`` (or list index) below ``path``.

    >>> child(child("Bundle", "entry"), 3)
    'Bundle.entry[3]'
    """
    if isinstance(name, int):
        return f"{path}[{name}]"
    return f"{path}.{name}"


class Collector:
    """Accumulates findings of one file for one layer (a small helper so layers stay terse)."""

    __slots__ = ("file", "layer", "findings")

    def __init__(self, file: str, layer: Layer) -> None:
        self.file = file
        self.layer = layer
        self.findings: list[Finding] = []

    def add(self, severity: Severity, location: str, message: str, rule: str | None = None) -> None:
        self.findings.append(
            Finding(severity, self.file, location, message, self.layer.value, rule)
        )

    def error(self, location: str, message: str) -> None:
        self.add(Severity.ERROR, location, message)

    def warning(self, location: str, message: str) -> None:
        self.add(Severity.WARNING, location, message)

    def info(self, location: str, message: str) -> None:
        self.add(Severity.INFORMATION, location, message)


def has_errors(findings: list[Finding], *, strict: bool = False) -> bool:
    """Whether ``findings`` hold an error (or, with ``strict``, a warning)."""
    bad = {Severity.ERROR, Severity.WARNING} if strict else {Severity.ERROR}
    return any(f.severity in bad for f in findings)


CANNOT_CHECK = "validator could not check this file"
"""The start of the message of a finding that stands for a failure of the validator itself (a
layer that raised, a file that could not be read): the file's result, never the run's end."""


def cannot_check(file: str, exc: BaseException, layer: Layer = Layer.JSON) -> Finding:
    """The error finding that replaces what ``layer`` would have said had it not raised ``exc``.

    >>> cannot_check("a.json", KeyError("R4.FooType"), Layer.MODEL).message
    "validator could not check this file: KeyError: 'R4.FooType'"
    """
    if isinstance(exc, RecursionError):
        reason = "nested too deeply for this layer"
    elif isinstance(exc, MemoryError):
        reason = "out of memory"
    else:
        text = " ".join(str(exc).split())
        text = text if len(text) <= 200 else text[:197] + "..."
        reason = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return Finding(Severity.ERROR, file, "$", f"{CANNOT_CHECK}: {reason}", layer.value)
