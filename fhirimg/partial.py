"""A study written without its invalid instances: one bad instance no longer fails its study.

When a study's bundle does not validate, the locations of the errors
(:class:`fhirimg.validate.Finding`) say what they are about:

- ``Bundle.entry[k].resource.series[i].instance[j]...`` in the ImagingStudy entry: that instance
  (:func:`fhirimg.mapping.series_groups` says which record it was built from);
- ``Bundle.entry[k].resource.series[i]...`` outside any instance: every instance of that series
  (a Series Instance UID that is not a UID is in no other series);
- anywhere in an entry that belongs to one instance (its Binary, by fullUrl): that instance;
- anything else (the Patient, the Endpoint, the study's own elements, the bundle): the study.

:func:`settle` drops the instances the errors are traced to, builds the bundle of the rest and
validates it again, at most :data:`MAX_ROUNDS` times (a value that comes from the first instance
having it may come from another one once that is dropped). The study fails as a whole, as
before, when an error is about the study, when every instance would be dropped, or when errors
are left after the last round; ``all_or_nothing`` (``--all-or-nothing``) keeps the old rule: any
error fails the study.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from fhirimg.jsonio import JSON
from fhirimg.mapping import series_groups, sort_records
from fhirimg.model import InstanceRecord
from fhirimg.validate.findings import Finding
from fhirimg.validate.validator import error_text

MAX_ROUNDS = 3
"""Rebuilds of a study after dropping instances; errors left after the last fail the study."""

T = TypeVar("T")

_LOCATION = re.compile(
    r"^Bundle\.entry\[(?P<entry>\d+)\]"
    r"(?:\.resource\.series\[(?P<series>\d+)\](?:\.instance\[(?P<instance>\d+)\])?)?"
)


@dataclass(frozen=True)
class Attempt(Generic[T]):
    """One build of a study's bundle and its validation."""

    checked: JSON
    """The Bundle that was validated (the locations of ``errors`` point into it)."""
    errors: list[Finding]
    value: T
    """What the builder made (the bundle to write, its notes, ...)."""
    owners: Mapping[str, InstanceRecord] = field(default_factory=dict)
    """Entries that belong to one instance (its Binary), by fullUrl."""


@dataclass(frozen=True)
class Settled(Generic[T]):
    """The last attempt, the records it was built from and the files dropped on the way."""

    attempt: Attempt[T]
    records: list[InstanceRecord]
    dropped: list[tuple[str, str]]
    """(path, reason) of each instance file left out, in the order they were dropped."""

    @property
    def errors(self) -> list[str]:
        """The last attempt's errors (none: the bundle may be written)."""
        return [error_text(f) for f in self.attempt.errors]


def trace(
    attempt: Attempt[T], records: Sequence[InstanceRecord]
) -> tuple[dict[int, Finding], list[Finding]]:
    """The errors of ``attempt`` split into those about instances (the first error of each, by
    the index of its record in ``records``) and those about the study (module docstring)."""
    entries = attempt.checked.get("entry", [])
    groups = series_groups(sort_records(records))
    position = {id(rec): n for n, rec in enumerate(records)}
    instances: dict[int, Finding] = {}
    study: list[Finding] = []
    for finding in attempt.errors:
        blamed = _blamed(finding.location, entries, groups, attempt.owners)
        if not blamed:
            study.append(finding)
        for rec in blamed:
            instances.setdefault(position[id(rec)], finding)
    return instances, study


def _blamed(
    location: str,
    entries: list[JSON],
    groups: list[list[InstanceRecord]],
    owners: Mapping[str, InstanceRecord],
) -> list[InstanceRecord]:
    """The records an error at ``location`` is about (empty: the study's)."""
    m = _LOCATION.match(location)
    if m is None:
        return []
    k = int(m["entry"])
    if k >= len(entries) or not isinstance(entries[k], dict):
        return []
    owner = owners.get(str(entries[k].get("fullUrl")))
    if owner is not None:
        return [owner]
    resource = entries[k].get("resource")
    if m["series"] is None or not isinstance(resource, dict):
        return []
    if resource.get("resourceType") != "ImagingStudy":
        return []
    i = int(m["series"])
    if i >= len(groups):
        return []
    if m["instance"] is None:
        return list(groups[i])  # the series' own element: every instance of it
    j = int(m["instance"])
    return [groups[i][j]] if j < len(groups[i]) else []


def settle(
    records: Sequence[InstanceRecord],
    build: Callable[[list[InstanceRecord]], Attempt[T]],
    all_or_nothing: bool = False,
    rounds: int = MAX_ROUNDS,
) -> Settled[T]:
    """Build and validate a study with ``build``, dropping the instances its errors are traced
    to and building again, at most ``rounds`` times (module docstring). Deterministic: the same
    records give the same drops and the same bundle."""
    recs = list(records)
    dropped: list[tuple[str, str]] = []
    attempt = build(recs)
    for _ in range(rounds):
        if not attempt.errors or all_or_nothing:
            break
        instances, study = trace(attempt, recs)
        if study or not instances or len(instances) == len(recs):
            break
        for n in sorted(instances):
            dropped.append((recs[n].path, "instance not valid: " + error_text(instances[n])))
        recs = [rec for n, rec in enumerate(recs) if n not in instances]
        attempt = build(recs)
    return Settled(attempt, recs, dropped)
