"""Pushing one transaction Bundle (and the DICOM Binaries stored beside it) to a FHIR server.

Skip it if the journal says this server already confirmed these exact bytes; otherwise resolve the
Patient's server id (a one-entry transaction of the bundle's own conditional Patient create),
upload each Binary raw (``PUT Binary/<id>``, ``X-Security-Context: Patient/<id>``), read the
server's ImagingStudy of the study and merge the bundle's into it (:mod:`fhirimg.push.merge`;
written conditionally on the version read, re-merged on a conflict), send the transaction (split
into pieces when the server caps its size), and journal the confirmation. Every step is
idempotent, so a retry, a re-run or a resume never duplicates anything, and a push never removes
a series or instance the server's study already lists.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from fhirimg import jsonio
from fhirimg.errors import (
    AuthError,
    FhirimgError,
    InputError,
    JournalError,
    PushError,
    ServerUnreachableError,
)
from fhirimg.fhir.detect import detect_version
from fhirimg.http.fhir import FhirClient, outcome_issues
from fhirimg.push.files import check_id, transaction_problem
from fhirimg.push.journal import Journal
from fhirimg.push.merge import (
    SERVER_META,
    create_study_entry,
    current_from_search,
    imaging_study_problem,
    merge_bundle,
)
from fhirimg.push.results import BundleResult, PlannedRequest, PushObserver
from fhirimg.push.split import (
    conditional_reference,
    make_piece,
    plan_pieces,
    reference_from_location,
    rewrite_references,
    too_large_limit,
    urn_references,
)
from fhirimg.safetext import clean

log = logging.getLogger(__name__)

__all__ = [
    "MERGE_ATTEMPTS",
    "CreateFirst",
    "CreateGate",
    "conditional_keys",
    "push_bundle",
    "resolve_conditional_references",
    "resolve_patient",
]

_CONDITIONAL_REF = re.compile(r"^[A-Z][A-Za-z]+\?")


class CreateGate:
    """Keeps two bundles of one run from racing to create the same resource.

    Two concurrent transactions that both conditionally create ``Patient?identifier=X`` can both
    find nothing and both create. So the first bundle that names a conditional key claims it; others
    naming it wait until that bundle is confirmed (then the resource exists and their conditional
    create finds it) or failed (then the next one claims it). Keys are claimed in sorted order, so
    two bundles never wait on each other.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._busy: set[str] = set()
        self._done: set[str] = set()

    def claim(self, keys: Iterable[str]) -> list[str]:
        claimed: list[str] = []
        for key in sorted(set(keys)):
            with self._cond:
                while key in self._busy:
                    self._cond.wait()
                if key in self._done:
                    continue
                self._busy.add(key)
                claimed.append(key)
        return claimed

    def release(self, keys: Iterable[str], confirmed: bool) -> None:
        with self._cond:
            for key in keys:
                self._busy.discard(key)
                if confirmed:
                    self._done.add(key)
            self._cond.notify_all()


class CreateFirst:
    """A run's choice to send each study's ImagingStudy as a conditional create before reading
    the server's, instead of reading first (:func:`_send_merging`): one request per bundle
    instead of two while the run's studies are new to the server (a backfill).

    Merge safety holds (issue 10): the create carries ``ifNoneExist`` on the study's
    ``urn:dicom:uid`` identifier, so a study the server already holds is never replaced: the
    server answers ``200 OK`` for that entry and writes nothing of it, and the bundle then goes
    the reading way (read, merge, write on the version read) like a create that met another
    writer. The bundle's other entries are conditional too, so their being sent twice changes
    nothing. Only for a server whose CapabilityStatement declares ``conditionalCreate`` for
    ImagingStudy (one that would ignore ``ifNoneExist`` would make a second study), and only
    until a study of the run turns out to exist: the rest of the run reads first, so a run
    re-pushing known studies costs at most one transaction per job more than reading first.
    """

    def __init__(self) -> None:
        self.active = True

    def met_existing(self) -> None:
        """A study of this run was on the server already: read first from now on."""
        self.active = False


def conditional_keys(bundle: Mapping[str, Any]) -> list[str]:
    keys = []
    for entry in bundle.get("entry") or []:
        ref = conditional_reference(entry)
        if ref and "?" in ref:
            keys.append(ref)
    return keys


def _check_shape(bundle: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The bundle's entries, once its shape is pushable (:func:`~fhirimg.push.files.
    transaction_problem`) and every id in it is a FHIR id; :class:`InputError` otherwise."""
    problem = transaction_problem(bundle)
    if problem is not None:
        raise InputError(problem)
    entries: list[dict[str, Any]] = bundle["entry"]
    for n, entry in enumerate(entries):
        _check_request_url(n, entry["request"]["url"])
        resource = entry.get("resource")
        if isinstance(resource, dict) and "id" in resource:
            check_id(resource["id"], f"entry {n}: resource.id")
    return entries


_RESOURCE_TYPE = re.compile(r"[A-Z][A-Za-z]{0,63}")
_OPERATION = re.compile(r"\$[A-Za-z][A-Za-z0-9\-]{0,63}")


def _check_request_url(n: int, url: str) -> None:
    """``request.url`` is relative to the server base: ``Type``, ``Type/id``, ``Type?query``
    (and ``_history`` / ``$operation`` segments). Its ids must be FHIR ids: a ``..`` or a
    leading ``/`` would address another path on the server.
    """
    path = url.split("?", 1)[0]
    segments = path.split("/")
    if not _RESOURCE_TYPE.fullmatch(segments[0]):
        raise InputError(
            f"entry {n}: request.url {clean(repr(url))[:80]} is not relative to the server "
            "(Type, Type/id or Type?query)"
        )
    for segment in segments[1:]:
        if segment != "_history" and not _OPERATION.fullmatch(segment):
            check_id(segment, f"entry {n}: the id in request.url")


def _patient_entry(entries: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    for entry in entries:
        if (entry.get("resource") or {}).get("resourceType") == "Patient":
            return entry
    return None


def resolve_patient(client: FhirClient, bundle: Mapping[str, Any]) -> str | None:
    """The server reference (``Patient/<id>``) of the bundle's Patient, creating it if needed.

    Sends the bundle's own Patient entry alone as a transaction: its conditional create finds or
    makes the Patient, exactly as the whole bundle will a moment later. None when there is no
    Patient entry or it is not idempotent (a plain POST would make a duplicate).
    """
    entry = _patient_entry(bundle.get("entry") or [])
    if entry is None:
        return None
    if "?" not in (conditional_reference(entry) or "?") and not str(
        (entry.get("request") or {}).get("method", "")
    ).upper().startswith("PUT"):
        log.warning("the Patient entry is a plain POST; Binaries get no security context")
        return None
    if urn_references(entry.get("resource") or {}):
        log.warning("the Patient entry references other entries; Binaries get no security context")
        return None
    response = client.transaction(make_piece(bundle, [entry]))
    answers = response.get("entry") or [{}]
    location = (answers[0].get("response") or {}).get("location")
    return reference_from_location(location)


def _send_entries(
    client: FhirClient,
    bundle: Mapping[str, Any],
    entries: list[dict[str, Any]],
    max_entries: int | None,
    auto_split: bool,
    result: BundleResult,
    observer: PushObserver,
    raw: bytes | None = None,
) -> dict[str, str]:
    """Send the entries as one transaction, or as pieces (see :mod:`fhirimg.push.split`); return
    each entry's ``response.status`` by its ``fullUrl``. ``raw``: the bytes ``bundle`` was parsed
    from, sent instead of serialising it again when it goes whole."""
    whole = max_entries is None or len(entries) <= max_entries
    queue: deque[list[Mapping[str, Any]]] = deque(
        [list(entries)] if whole else plan_pieces(entries, max_entries or len(entries))
    )
    mapping: dict[str, str] = {}
    statuses: dict[str, str] = {}
    while queue:
        piece = queue.popleft()
        body: Mapping[str, Any] | bytes
        if whole and len(piece) == len(entries) and not mapping:
            body = raw if raw is not None else bundle  # the bundle as converted, untouched
        else:
            body = make_piece(bundle, rewrite_references(piece, mapping))
        try:
            response = client.transaction(body)
        except AuthError:
            raise
        except PushError as exc:
            limit = too_large_limit(exc.status, exc.outcome) if auto_split else None
            if limit is None or len(piece) <= 1:
                raise
            new_limit = limit if 0 < limit < len(piece) else max(1, (len(piece) + 1) // 2)
            log.info(
                "%s: the server refused %d entries as too many; splitting into pieces of %d",
                result.file,
                len(piece),
                new_limit,
            )
            result.learned_limit = new_limit
            whole = False
            queue.extendleft(reversed(plan_pieces(piece, new_limit)))
            continue
        result.pieces += 1
        answers = response.get("entry") or []
        if len(answers) != len(piece):
            raise PushError(
                f"the server answered {len(answers)} entries for a transaction of {len(piece)}"
            )
        for entry, answer in zip(piece, answers, strict=True):
            status = str((answer.get("response") or {}).get("status", ""))
            if status and not status.lstrip().startswith("2"):
                raise PushError(f"entry {entry.get('fullUrl')} answered {status}")
            if entry.get("fullUrl"):
                statuses[str(entry["fullUrl"])] = status.strip()
            ref = reference_from_location((answer.get("response") or {}).get("location"))
            ref = ref or conditional_reference(entry)
            if ref and entry.get("fullUrl"):
                mapping[str(entry["fullUrl"])] = ref
    result.references = mapping
    return statuses


def _plan_bundle(
    bundle: Mapping[str, Any],
    entries: list[dict[str, Any]],
    binaries: Sequence[tuple[str, Path]],
    max_entries: int | None,
    result: BundleResult,
) -> None:
    plan = result.planned
    patient = _patient_entry(entries)
    if binaries and patient is not None:
        one = len(jsonio.dumps(make_piece(bundle, [patient])))
        plan.append(PlannedRequest("POST", "", 1, one, "Patient alone, for X-Security-Context"))
    for binary_id, path in binaries:
        plan.append(PlannedRequest("PUT", f"Binary/{binary_id}", 0, path.stat().st_size))
    if max_entries is None or len(entries) <= max_entries:
        plan.append(PlannedRequest("POST", "", len(entries), len(jsonio.dumps(bundle))))
        return
    pieces = plan_pieces(entries, max_entries)
    for n, piece in enumerate(pieces, 1):
        size = len(jsonio.dumps(make_piece(bundle, piece)))
        plan.append(PlannedRequest("POST", "", len(piece), size, f"piece {n}/{len(pieces)}"))


def push_bundle(
    client: FhirClient | None,
    bundle: dict[str, Any],
    binaries: Sequence[tuple[str, Path]] = (),
    *,
    name: str = "bundle",
    sha256: str | None = None,
    raw: bytes | None = None,
    max_entries: int | None = None,
    auto_split: bool = True,
    journal: Journal | None = None,
    observer: PushObserver | None = None,
    dry_run: bool = False,
    _gate: CreateGate | None = None,
    _limit: Callable[[], int | None] | None = None,
    _commit_later: bool = False,
    _create_first: CreateFirst | None = None,
) -> BundleResult:
    """Push one in-memory transaction Bundle, and its Binary files first; return what happened.

    ``binaries`` are ``(binary id, file)`` pairs uploaded raw as ``PUT Binary/<id>``; every id
    taken from the bundle (entry ids, ``request.url``, the Binary ids) must be a FHIR id, or the
    bundle fails with the reason before anything is read or sent. ``journal``
    (optional) is consulted and appended to; ``sha256`` identifies the bundle there (default: the
    hash of its canonical JSON); ``raw`` (optional) is the file the bundle was parsed from, sent
    as it is where nothing of the bundle changes (no ImagingStudy to merge, one transaction).
    Raises :class:`AuthError` when the server refuses the credentials; every other failure is
    reported in the result (``status == "failed"``).
    """
    observer = observer or PushObserver()
    result = BundleResult(file=name, status="failed")
    try:
        entries = _check_shape(bundle)
        for binary_id, _ in binaries:
            check_id(binary_id, "Binary id")
    except InputError as exc:
        result.error = str(exc)
        return result
    result.entries = len(entries)
    result.bytes = sum(p.stat().st_size for _, p in binaries if p.is_file())
    if sha256 is None:
        sha256 = hashlib.sha256(jsonio.dumps(bundle)).hexdigest()
    if dry_run or client is None:
        _plan_bundle(bundle, entries, binaries, max_entries, result)
        result.status = "planned"
        return result
    server = client.base_url
    if journal is not None and journal.bundle_done(server, sha256):
        result.status = "skipped"
        observer.advanced(result.bytes)
        return result
    gate = _gate or CreateGate()
    claimed = gate.claim(conditional_keys(bundle))
    if _limit is not None:
        # Read after waiting on the gate: a bundle ahead of us may have learned the size limit.
        max_entries = _limit()
    confirmed = False
    try:
        _upload_binaries(client, bundle, binaries, journal, result, observer)
        _send_merging(
            client, bundle, entries, max_entries, auto_split, result, observer, raw, _create_first
        )
        confirmed = True
    except AuthError:
        raise
    except PushError as exc:
        result.error = str(exc)
        result.http_status = exc.status
        result.issues = outcome_issues(exc.outcome)
        result.unreachable = isinstance(exc, ServerUnreachableError)
        return result
    except (FhirimgError, OSError) as exc:
        result.error = str(exc)
        return result
    finally:
        gate.release(claimed, confirmed)
    if journal is not None:
        try:
            if _commit_later:
                # push_paths commits the line (one fsync for the lines of several bundles)
                # before it reports the bundle pushed; this worker goes on meanwhile.
                result.journal_ticket = journal.write_bundle(
                    server, sha256, file=name, entries=len(entries)
                )
            else:
                # Returns once an fsync covers the line (group commit): only then is it "pushed".
                journal.record_bundle(server, sha256, file=name, entries=len(entries))
        except JournalError as exc:
            result.error = f"the server confirmed it, but {exc}"
            return result
    result.status = "pushed"
    return result


def _upload_binaries(
    client: FhirClient,
    bundle: Mapping[str, Any],
    binaries: Sequence[tuple[str, Path]],
    journal: Journal | None,
    result: BundleResult,
    observer: PushObserver,
) -> None:
    missing = [str(p.name) for _, p in binaries if not p.is_file()]
    if missing:
        # Pushing the bundle would leave references to Binaries that do not exist: refuse.
        raise InputError(f"{len(missing)} Binary file(s) missing beside the bundle: {missing[:3]}")
    security_context: str | None = None
    resolved = False
    for binary_id, path in binaries:
        data = path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if journal is not None and journal.binary_done(client.base_url, binary_id, digest):
            result.binaries_skipped += 1
            observer.advanced(len(data))
            continue
        if not resolved:
            security_context = resolve_patient(client, bundle)
            resolved = True
        client.put_binary(binary_id, data, security_context=security_context)
        if journal is not None:
            journal.record_binary(client.base_url, binary_id, digest, size=len(data))
        result.binaries_uploaded += 1
        observer.advanced(len(data))


def resolve_conditional_references(
    client: FhirClient, bundle: dict[str, Any], cache: dict[str, str]
) -> dict[str, Any]:
    """``bundle`` with every conditional reference (``Patient?identifier=...``) replaced by the
    literal ``Type/id`` the server finds for it: exactly one match, or :class:`PushError`.

    Part files of a split study point at their study's Patient and ImagingStudy this way; not
    every server resolves conditional references itself (Medplum, for one, refuses them).
    """

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            out = {k: walk(v) for k, v in node.items()}
            ref = node.get("reference")
            if isinstance(ref, str) and _CONDITIONAL_REF.match(ref):
                out["reference"] = _resolve_one(client, ref, cache)
            return out
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    entries = [
        {**e, "resource": walk(e["resource"])} if isinstance(e.get("resource"), dict) else e
        for e in bundle.get("entry") or []
    ]
    return {**bundle, "entry": entries}


def _resolve_one(client: FhirClient, ref: str, cache: dict[str, str]) -> str:
    if ref not in cache:
        found = client.get_json(ref)
        matches = [
            e["resource"]
            for e in found.get("entry") or []
            if (e.get("search") or {}).get("mode", "match") == "match" and "resource" in e
        ]
        if len(matches) != 1:
            raise PushError(f"conditional reference {ref} matches {len(matches)} resources, not 1")
        cache[ref] = f"{matches[0]['resourceType']}/{matches[0]['id']}"
    return cache[ref]


# --------------------------------------------------------------------------- merging the study

MERGE_ATTEMPTS = 5
"""Read-merge-write rounds for one bundle's ImagingStudy before a version conflict fails it."""

_CONFLICT_STATUSES = (409, 412)  # 412 Precondition Failed (If-Match); some servers say 409


def _study_index(entries: Sequence[Mapping[str, Any]]) -> int | None:
    found = [
        i
        for i, e in enumerate(entries)
        if (e.get("resource") or {}).get("resourceType") == "ImagingStudy"
    ]
    return found[0] if len(found) == 1 else None


def _study_search(entry: Mapping[str, Any]) -> str | None:
    """The search that finds the entry's ImagingStudy on the server: the query of its conditional
    ``PUT ImagingStudy?identifier=urn:dicom:uid|...`` (or its ``ifNoneExist``), else one made from
    its ``urn:dicom:uid`` identifier (0020,000D) Study Instance UID."""
    ref = conditional_reference(entry)
    if ref and ref.startswith("ImagingStudy?"):
        return ref
    for identifier in (entry.get("resource") or {}).get("identifier") or []:
        if isinstance(identifier, Mapping) and identifier.get("system") == "urn:dicom:uid":
            if isinstance(identifier.get("value"), str):
                return f"ImagingStudy?identifier=urn:dicom:uid|{identifier['value']}"
    return None


def _uids(study: Mapping[str, Any]) -> set[tuple[str, str]]:
    out: set[tuple[str, str]] = set()
    for series in study.get("series") or []:
        out.add(("series", str(series.get("uid"))))
        for instance in series.get("instance") or []:
            out.add(("instance", str(instance.get("uid"))))
    return out


def _is_older(incoming: Mapping[str, Any], current: Mapping[str, Any]) -> bool:
    """Whether ``incoming`` is taken for an older conversion than the server's study: its series
    and instances are a proper subset of the server's (docs/push.md "Merging")."""
    return _uids(incoming) < _uids(current)


def _without_server_meta(resource: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(resource)
    meta = {k: v for k, v in (out.pop("meta", None) or {}).items() if k not in SERVER_META}
    if meta:
        out["meta"] = meta
    return out


def _same(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    return bool(jsonio.dumps(_sorted(a)) == jsonio.dumps(_sorted(b)))


def _sorted(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _sorted(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [_sorted(v) for v in value]
    return value


def _resolve_for_merge(
    client: FhirClient, entries: Sequence[Mapping[str, Any]], study: Mapping[str, Any]
) -> dict[str, str]:
    """Server references of the entries the ImagingStudy references (its Patient, its Endpoint),
    by ``fullUrl``, so that the bundle's ``urn:uuid:`` and the server's ``Endpoint/12`` count as
    one Endpoint in the merge. An entry the server holds none (or several) of is left out: the
    transaction creates it, and the merged study keeps its ``urn:uuid:`` reference."""
    wanted = urn_references(study.get("resource") or {})
    resolved: dict[str, str] = {}
    for entry in entries:
        full_url = entry.get("fullUrl")
        if entry is study or not isinstance(full_url, str) or full_url not in wanted:
            continue
        ref = conditional_reference(entry)
        if not ref:
            continue
        if "?" not in ref:
            resolved[full_url] = ref  # PUT Type/id: the id is the bundle's own
            continue
        found = client.get_json(ref)
        matches = [
            e["resource"]
            for e in found.get("entry") or []
            if (e.get("search") or {}).get("mode", "match") == "match"
            and isinstance(e.get("resource"), dict)
        ]
        if len(matches) == 1 and isinstance(matches[0].get("id"), str):
            resolved[full_url] = f"{matches[0]['resourceType']}/{matches[0]['id']}"
    return resolved


def _merged(
    client: FhirClient,
    bundle: Mapping[str, Any],
    entries: Sequence[Mapping[str, Any]],
    index: int,
    search: str,
    result: BundleResult,
) -> dict[str, Any]:
    """The bundle to send now: its ImagingStudy merged into the server's current one
    (:func:`fhirimg.push.merge.merge_bundle`); without the ImagingStudy entry at all when the
    server's already holds everything it would write."""
    current = current_from_search(client.get_json(search))
    if current is None:
        result.merge = "created"
        return merge_bundle(bundle, None, detect_version(bundle))
    study = entries[index]
    for whose, resource in (("the server's", current), ("the bundle's", study["resource"])):
        problem = imaging_study_problem(resource)
        if problem is not None:  # before _is_older walks them
            raise InputError(f"{whose} ImagingStudy cannot be merged: {problem}")
    resolved = _resolve_for_merge(client, entries, study)
    newer = not _is_older(study.get("resource") or {}, current)
    merged = merge_bundle(bundle, current, detect_version(bundle), newer=newer, resolved=resolved)
    resource = merged["entry"][index]["resource"]
    if not _same(resource, _without_server_meta(current)):
        result.merge = "merged"
        return merged
    # Nothing to write: an older or the same conversion pushed again. Its other entries point at
    # the server's study instead (a PUT would make a new version on servers that always do).
    result.merge = "unchanged"
    rest = [e for i, e in enumerate(merged["entry"]) if i != index]
    full_url = study.get("fullUrl")
    if isinstance(full_url, str):
        rest = rewrite_references(rest, {full_url: f"ImagingStudy/{current['id']}"})
    return {**merged, "entry": rest}


def _created(
    client: FhirClient,
    bundle: Mapping[str, Any],
    index: int,
    max_entries: int | None,
    auto_split: bool,
    result: BundleResult,
    observer: PushObserver,
) -> bool:
    """Send the bundle with its ImagingStudy entry as a conditional create (``ifNoneExist``),
    without reading the server's first (:class:`CreateFirst`); whether the server created it.
    False when it holds the study already (``200 OK`` for the entry: nothing of it written) or
    refused the condition (412: several studies match; the read that follows says which)."""
    # The bundle as merge_bundle(bundle, None, ...) gives it, without its copy of the study:
    # nothing here changes the resource, and copying 100 instances was most of this step.
    sent = list(bundle["entry"])
    sent[index] = create_study_entry(sent[index])
    merged = {**bundle, "entry": sent}
    try:
        statuses = _send_entries(client, merged, sent, max_entries, auto_split, result, observer)
    except PushError as exc:
        if exc.status != 412:  # http.html "Conditional create": 412 for multiple matches
            raise
        return False
    if statuses.get(str(sent[index].get("fullUrl")), "").startswith("200"):
        log.debug("%s: the server holds the study already; reading it to merge", result.file)
        return False
    result.merge = "created"
    return True


def _send_merging(
    client: FhirClient,
    bundle: Mapping[str, Any],
    entries: list[dict[str, Any]],
    max_entries: int | None,
    auto_split: bool,
    result: BundleResult,
    observer: PushObserver,
    raw: bytes | None = None,
    create_first: CreateFirst | None = None,
) -> None:
    """Send the bundle with its ImagingStudy merged into the server's, never replacing it (issue
    10): read the server's study, merge, write conditionally on the version read
    (``request.ifMatch``), or create conditionally (``ifNoneExist``) when there was none. A
    version conflict (409/412, or ``200 OK`` instead of ``201 Created`` for the create: another
    writer was first) re-reads and merges the original bundle again, after the retry policy's
    backoff, at most :data:`MERGE_ATTEMPTS` times; then :class:`PushError`. With an active
    ``create_first`` the conditional create goes first, without reading (:class:`CreateFirst`).
    """
    index = _study_index(entries)
    search = _study_search(entries[index]) if index is not None else None
    if index is None or search is None:
        _send_entries(client, bundle, entries, max_entries, auto_split, result, observer, raw)
        return
    if create_first is not None and create_first.active:
        if _created(client, bundle, index, max_entries, auto_split, result, observer):
            return
        create_first.met_existing()
    why = ""
    status: int | None = None
    for attempt in range(1, MERGE_ATTEMPTS + 1):
        merged = _merged(client, bundle, entries, index, search, result)
        sent = merged["entry"]
        try:
            statuses = _send_entries(
                client, merged, sent, max_entries, auto_split, result, observer
            )
        except PushError as exc:
            if exc.status not in _CONFLICT_STATUSES or result.merge != "merged":
                raise  # only a write conditional on the version read (ifMatch) can conflict
            why, status = f"HTTP {exc.status}", exc.status
        else:
            if result.merge != "created":
                return
            answer = statuses.get(str(sent[index].get("fullUrl")), "")
            if not answer.startswith("200"):
                return
            # The conditional create found a study: another writer created it after our read.
            why, status = "created by another writer meanwhile", 412
        result.conflicts += 1
        log.info(
            "%s: the ImagingStudy changed on the server while merging (%s); re-reading (%d/%d)",
            result.file,
            why,
            attempt,
            MERGE_ATTEMPTS,
        )
        if attempt < MERGE_ATTEMPTS:
            client.pause(attempt)
    raise PushError(
        f"the ImagingStudy changed on the server during each of {MERGE_ATTEMPTS} attempts to "
        f"merge into it (last: {why}); nothing of it was lost, push again later",
        status=status,
    )
