"""Splitting a transaction Bundle into smaller ones whose references still resolve.

Some servers cap the entries of a transaction (Azure FHIR service: 500; hosted Medplum: a small
number of strict entries). A transaction's ``urn:uuid:`` references only resolve inside the same
transaction (FHIR R4 http.html#trules), so the pieces are made like this:

1. Order the entries so that every entry comes after the entries it references (a stable
   topological sort: Patient and Endpoint before ImagingStudy, ImagingStudy before Media), then cut
   that order into pieces of at most ``max_entries``.
2. Send the pieces one after the other. After each, map every entry's ``fullUrl`` to the server id
   from its ``response.location`` (``Patient/123``), or, when the server gave none, to a conditional
   reference built from the entry's own request (``Patient?identifier=sys|val``).
3. Before sending a piece, replace every ``urn:uuid:`` string that names an entry of an earlier
   piece with that reference (``Reference.reference`` and ``Attachment.url`` alike).

Each piece is idempotent on its own (conditional create/update, Binary PUT), so re-sending pieces
after a failure or crash converges to the same server state as one whole transaction.
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from fhirimg.errors import ConfigError

__all__ = [
    "conditional_reference",
    "dependency_order",
    "make_piece",
    "plan_pieces",
    "reference_from_location",
    "rewrite_references",
    "too_large_limit",
    "urn_references",
]

_URN = "urn:uuid:"
# FHIR datatypes id, not only dots (see fhirimg.push.files.is_fhir_id; split imports no sibling).
_ID = re.compile(r"(?!\.+$)[A-Za-z0-9\-.]{1,64}")


def _strings(obj: Any) -> Iterator[str]:
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from _strings(value)
    elif isinstance(obj, list):
        for value in obj:
            yield from _strings(value)


def urn_references(resource: Mapping[str, Any]) -> set[str]:
    """Every ``urn:uuid:`` string inside ``resource`` (References and Attachment urls).

    >>> sorted(urn_references({"subject": {"reference": "urn:uuid:1"}, "id": "x"}))
    ['urn:uuid:1']
    """
    return {s for s in _strings(resource) if s.startswith(_URN)}


def dependency_order(entries: Sequence[Mapping[str, Any]]) -> list[int]:
    """Indexes of ``entries``, each after the entries it references; otherwise in bundle order.

    Entries caught in a reference cycle (none in fhirimg output) keep their bundle order at the end.

    >>> p = {"fullUrl": "urn:uuid:p", "resource": {"resourceType": "Patient"}}
    >>> s = {"fullUrl": "urn:uuid:s",
    ...      "resource": {"resourceType": "ImagingStudy", "subject": {"reference": "urn:uuid:p"}}}
    >>> dependency_order([s, p])
    [1, 0]
    """
    index = {e.get("fullUrl"): i for i, e in enumerate(entries) if e.get("fullUrl")}
    needs: list[set[int]] = []
    needed_by: list[list[int]] = [[] for _ in entries]
    for i, entry in enumerate(entries):
        deps = {index[r] for r in urn_references(entry.get("resource") or {}) if r in index} - {i}
        needs.append(deps)
        for d in deps:
            needed_by[d].append(i)
    ready = [i for i, deps in enumerate(needs) if not deps]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for j in needed_by[i]:
            needs[j].discard(i)
            if not needs[j]:
                heapq.heappush(ready, j)
    placed = set(order)
    order.extend(i for i in range(len(entries)) if i not in placed)
    return order


def plan_pieces(
    entries: Sequence[Mapping[str, Any]], max_entries: int
) -> list[list[Mapping[str, Any]]]:
    """Cut ``entries`` (in dependency order) into pieces of at most ``max_entries``.

    >>> entries = [{"fullUrl": f"urn:uuid:{i}", "resource": {}} for i in range(5)]
    >>> [len(p) for p in plan_pieces(entries, 2)]
    [2, 2, 1]
    """
    if max_entries < 1:
        raise ConfigError("max_entries must be at least 1")
    ordered = [entries[i] for i in dependency_order(entries)]
    return [ordered[k : k + max_entries] for k in range(0, len(ordered), max_entries)]


def rewrite_references(obj: Any, mapping: Mapping[str, str]) -> Any:
    """A copy of ``obj`` with every string equal to a key of ``mapping`` replaced by its value.

    >>> rewrite_references({"subject": {"reference": "urn:uuid:p"}}, {"urn:uuid:p": "Patient/7"})
    {'subject': {'reference': 'Patient/7'}}
    """
    if isinstance(obj, str):
        return mapping.get(obj, obj)
    if isinstance(obj, dict):
        return {k: rewrite_references(v, mapping) for k, v in obj.items()}
    if isinstance(obj, list):
        return [rewrite_references(v, mapping) for v in obj]
    return obj


def make_piece(bundle: Mapping[str, Any], entries: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """A transaction Bundle holding ``entries``, of the same type as ``bundle``."""
    return {
        "resourceType": "Bundle",
        "type": bundle.get("type", "transaction"),
        "entry": list(entries),
    }


def reference_from_location(location: str | None) -> str | None:
    """``Type/id`` from a ``response.location`` (absolute or relative, with or without history).

    >>> reference_from_location("http://s/fhir/R4/Patient/12/_history/3")
    'Patient/12'
    >>> reference_from_location("ImagingStudy/ab-1")
    'ImagingStudy/ab-1'
    >>> reference_from_location(None) is None
    True
    >>> reference_from_location("http://s/fhir/Patient/..") is None
    True
    """
    if not location:
        return None
    parts = [p for p in urlsplit(location).path.split("/") if p]
    if "_history" in parts:
        parts = parts[: parts.index("_history")]
    if len(parts) < 2 or not parts[-2][:1].isupper() or not _ID.fullmatch(parts[-1]):
        return None  # not Type/id with a FHIR id: the server's answer is not used
    return f"{parts[-2]}/{parts[-1]}"


def conditional_reference(entry: Mapping[str, Any]) -> str | None:
    """A reference that finds ``entry``'s resource on the server without knowing its id.

    ``POST`` with ``ifNoneExist`` gives ``Type?<query>``; ``PUT Type/id`` gives ``Type/id``; a
    conditional ``PUT Type?query`` gives ``Type?query``. A plain POST gives None.

    >>> conditional_reference({"resource": {"resourceType": "Patient"},
    ...     "request": {"method": "POST", "url": "Patient", "ifNoneExist": "identifier=s|1"}})
    'Patient?identifier=s|1'
    """
    request = entry.get("request") or {}
    method = str(request.get("method", "")).upper()
    url = str(request.get("url", ""))
    rtype = (entry.get("resource") or {}).get("resourceType") or url.split("?")[0].split("/")[0]
    if method == "POST" and request.get("ifNoneExist"):
        return f"{rtype}?{request['ifNoneExist']}"
    if method == "PUT" and url:
        return url
    return None


# What servers say when a transaction is too big, e.g. Azure "Bundle contains 600 entries, which
# exceeds the maximum of 500", HAPI "... exceeds maximum bundle size", fhirimg's Medplum-like test
# server "Transaction requires strict isolation but has too many entries (12 > 8)". Both a size
# word and an entry/bundle word must appear (or the issue code is too-costly).
_TOO_LARGE = re.compile(
    r"(too (many|large|big)|exceed|maximum|more than|limit|at most)", re.IGNORECASE
)
_ABOUT_BUNDLE = re.compile(r"(entr(y|ies)|bundle|transaction|batch|payload|size)", re.IGNORECASE)
_LIMIT_NUMBER = re.compile(
    r"(?:maximum(?: of| is|:)?|max(?:imum)?\s*(?:entries|size)?\s*(?:of|is|=|:)?|more than|"
    r"limit(?:ed)?(?: of| to| is|:)?|at most|exceeds?|\d\s*>)\s*(\d+)",
    re.IGNORECASE,
)


def too_large_limit(status: int | None, outcome: Mapping[str, Any] | None) -> int | None:
    """If the refusal says the transaction was too large, the entry limit it names (0 if none).

    None means the refusal is about something else. Looked at: HTTP 413 always; 400 and 422
    when an OperationOutcome issue's text talks about both size (too many, exceeds, maximum, more
    than, limit) and the bundle (entries, bundle, transaction).

    >>> oo = {"resourceType": "OperationOutcome", "issue": [{"severity": "error",
    ...       "code": "too-costly", "diagnostics": "Transaction has more than 8 strict entries"}]}
    >>> too_large_limit(400, oo)
    8
    >>> too_large_limit(400, {"resourceType": "OperationOutcome", "issue": [{"severity": "error",
    ...     "code": "too-costly", "details": {"text": "too many entries (12 > 8)"}}]})
    8
    >>> too_large_limit(413, None)
    0
    >>> too_large_limit(400, {"resourceType": "OperationOutcome", "issue": [
    ...     {"severity": "error", "code": "invalid", "diagnostics": "Missing name"}]}) is None
    True
    """
    if status == 413:
        limit = 0
    elif status not in (400, 422) or not outcome:
        return None
    else:
        limit = -1
    for issue in (outcome or {}).get("issue") or []:
        if not isinstance(issue, dict):
            continue
        texts = [
            str(issue.get("diagnostics") or ""),
            str((issue.get("details") or {}).get("text") or ""),
        ]
        for text in texts:
            if issue.get("code") == "too-costly" or (
                _TOO_LARGE.search(text) and _ABOUT_BUNDLE.search(text)
            ):
                found = _LIMIT_NUMBER.search(text)
                if found and int(found.group(1)) > 0:
                    return int(found.group(1))
                limit = max(limit, 0)
    return limit if limit >= 0 else None
