"""Pushing transaction Bundles (and the DICOM Binaries stored beside them) to a FHIR server.

For each bundle: skip it if the journal says this server already confirmed these exact bytes;
otherwise resolve the Patient's server id (a one-entry transaction of the bundle's own conditional
Patient create), upload each Binary raw (``PUT Binary/<id>``, ``X-Security-Context: Patient/<id>``),
send the transaction (split into pieces when the server caps its size), and journal the
confirmation. Every step is idempotent, so a retry, a re-run or a resume never duplicates anything.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx

from fhirimg import jsonio
from fhirimg.errors import FhirimgError, InputError, PushError
from fhirimg.push.auth import AuthError
from fhirimg.push.client import FhirClient, RetryPolicy, ServerUnreachableError, outcome_issues
from fhirimg.push.journal import DEFAULT_JOURNAL_NAME, Journal
from fhirimg.push.split import (
    conditional_reference,
    make_piece,
    plan_pieces,
    reference_from_location,
    rewrite_references,
    too_large_limit,
    urn_references,
)

log = logging.getLogger(__name__)

__all__ = [
    "BINARY_EXTENSION_URL",
    "DEFAULT_FOLDER",
    "BundleFile",
    "BundleResult",
    "PlannedRequest",
    "PushObserver",
    "PushOptions",
    "PushReport",
    "binaries_beside",
    "default_journal_path",
    "discover",
    "push_bundle",
    "push_paths",
]

DEFAULT_FOLDER = Path("fhirimg-out")
# The project's extension linking ImagingStudy.series.instance to its Binary (see the spec notes:
# no HL7/IHE/DICOM extension exists for it).
BINARY_EXTENSION_URL = "https://fhirimg.dev/fhir/StructureDefinition/instance-binary"

Status = Literal["pushed", "skipped", "failed", "planned"]


# --------------------------------------------------------------------------- options and results
@dataclass(frozen=True)
class PushOptions:
    """Everything ``push_paths`` needs to know; the CLI builds one from its options.

    ``journal`` None means ``<first folder>/.fhirimg-push-journal.jsonl``; ``use_journal`` False
    keeps no journal at all; ``force`` ignores what the journal holds (and still appends to it).
    ``max_entries`` cuts every transaction to that many entries; ``auto_split`` retries a
    transaction in pieces when the server refuses it as too large.
    """

    server: str
    auth: httpx.Auth | None = None
    timeout: float = 30.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    verify: bool | str | Path = True
    jobs: int = 4
    max_entries: int | None = None
    auto_split: bool = True
    journal: Path | None = None
    use_journal: bool = True
    force: bool = False
    dry_run: bool = False
    check_server: bool = True


@dataclass(frozen=True)
class PlannedRequest:
    """One request ``--dry-run`` would send."""

    method: str
    url: str
    entries: int
    bytes: int
    note: str = ""


@dataclass
class BundleResult:
    """What happened to one bundle."""

    file: str
    status: Status
    entries: int = 0
    bytes: int = 0
    pieces: int = 0
    binaries_uploaded: int = 0
    binaries_skipped: int = 0
    http_status: int | None = None
    error: str | None = None
    issues: list[str] = field(default_factory=list)
    references: dict[str, str] = field(default_factory=dict)
    planned: list[PlannedRequest] = field(default_factory=list)
    learned_limit: int | None = None
    unreachable: bool = False

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("references")
        out.pop("learned_limit")
        out.pop("unreachable")
        if self.status != "planned":
            out.pop("planned")
        return out


@dataclass
class PushReport:
    """The outcome of ``push_paths``: one :class:`BundleResult` per bundle file, in file order."""

    server: str
    results: list[BundleResult] = field(default_factory=list)
    ignored: list[tuple[str, str]] = field(default_factory=list)
    aborted: str | None = None
    elapsed_s: float = 0.0
    journal: str | None = None
    requests: int = 0
    retries: int = 0

    def count(self, status: Status) -> int:
        return sum(1 for r in self.results if r.status == status)

    @property
    def pushed(self) -> int:
        return self.count("pushed")

    @property
    def skipped(self) -> int:
        return self.count("skipped")

    @property
    def failed(self) -> int:
        return self.count("failed")

    @property
    def ok(self) -> bool:
        return self.failed == 0 and self.aborted is None

    def to_json(self) -> dict[str, Any]:
        return {
            "server": self.server,
            "pushed": self.pushed,
            "skipped": self.skipped,
            "failed": self.failed,
            "planned": self.count("planned"),
            "aborted": self.aborted,
            "elapsed_s": round(self.elapsed_s, 3),
            "requests": self.requests,
            "retries": self.retries,
            "journal": self.journal,
            "bundles": [r.to_json() for r in self.results],
            "ignored": [{"file": f, "reason": why} for f, why in self.ignored],
        }


class PushObserver:
    """Hooks for progress display; the default does nothing. Called from worker threads."""

    def started(self, bundles: int, total_bytes: int) -> None:
        """Before the first bundle: how many bundles and bytes (bundle JSON + Binary files)."""

    def advanced(self, nbytes: int) -> None:
        """``nbytes`` more were sent, or skipped as already confirmed."""

    def finished(self, result: BundleResult) -> None:
        """One bundle is done (pushed, skipped or failed)."""


# --------------------------------------------------------------------------- finding the input
@dataclass(frozen=True)
class BundleFile:
    """A transaction Bundle file found by :func:`discover` and the Binary files beside it."""

    path: Path
    size: int
    binaries: tuple[tuple[str, Path], ...]
    binaries_size: int
    parts: tuple[Path, ...] = ()
    """The further files of a study convert split (``<stem>.part-N.json``), pushed with it."""


def binaries_beside(
    path: Path, bundle: Mapping[str, Any], elsewhere: Iterable[str] = ()
) -> list[tuple[str, Path]]:
    """The ``(binary id, file)`` pairs the bundle's instance-binary extensions point at.

    The files are ``<bundle stem>.binaries/<id>.dcm`` next to the bundle. Binaries carried inline
    as ``PUT Binary/<id>`` entries are not listed (they travel inside the transaction), nor those
    whose ids are in ``elsewhere`` (inline in the other part files of a split study).
    """
    folder = path.with_name(f"{path.stem}.binaries")
    inline = {
        str((e.get("request") or {}).get("url", ""))
        for e in bundle.get("entry") or []
        if (e.get("resource") or {}).get("resourceType") == "Binary"
    } | {f"Binary/{i}" for i in elsewhere}
    found: dict[str, Path] = {}
    for entry in bundle.get("entry") or []:
        resource = entry.get("resource") or {}
        if resource.get("resourceType") != "ImagingStudy":
            continue
        for series in resource.get("series") or []:
            for instance in series.get("instance") or []:
                for ext in instance.get("extension") or []:
                    if ext.get("url") != BINARY_EXTENSION_URL:
                        continue
                    ref = str((ext.get("valueReference") or {}).get("reference", ""))
                    if not ref.startswith("Binary/") or ref in inline:
                        continue
                    binary_id = ref.removeprefix("Binary/")
                    found.setdefault(binary_id, folder / f"{binary_id}.dcm")
    return list(found.items())


def _load_bundle(path: Path) -> tuple[bytes, dict[str, Any]]:
    data = path.read_bytes()
    bundle = jsonio.loads(data)
    if not isinstance(bundle, dict):
        raise InputError(f"{path.name}: not a JSON object")
    return data, bundle


def discover(paths: Sequence[Path]) -> tuple[list[BundleFile], list[tuple[str, str]]]:
    """The transaction Bundle files under ``paths`` (files, or folders searched one level deep,
    sorted by name), and the JSON files passed over with the reason (``report.json``, other JSON).

    Raises :class:`InputError` when a path does not exist.
    """
    candidates: list[Path] = []
    for p in paths:
        if p.is_dir():
            candidates.extend(
                sorted(c for c in p.glob("*.json") if c.is_file() and not c.name.startswith("."))
            )
        elif p.is_file():
            candidates.append(p)
        else:
            raise InputError(f"no such file or folder: {p}")
    files: list[BundleFile] = []
    ignored: list[tuple[str, str]] = []
    seen: set[Path] = set()
    heads = {p.name for p in candidates}
    for path in candidates:
        if path.resolve() in seen:
            continue
        seen.add(path.resolve())
        if _PART.search(path.name) and _PART.sub(".json", path.name) in heads:
            continue  # pushed together with its study's first file
        try:
            data, bundle = _load_bundle(path)
        except (OSError, ValueError, InputError) as exc:
            ignored.append((str(path), f"not readable JSON: {exc}"))
            continue
        if bundle.get("resourceType") != "Bundle":
            ignored.append((str(path), "not a FHIR Bundle"))
            continue
        if bundle.get("type") not in ("transaction", "batch"):
            ignored.append((str(path), f"Bundle of type {bundle.get('type')!r}, not a transaction"))
            continue
        parts = tuple(sorted(path.parent.glob(f"{path.stem}.part-*.json"), key=_part_number))
        in_parts = {i for part in parts for i in _inline_binary_ids(part)}
        binaries = tuple(binaries_beside(path, bundle, in_parts))
        size = sum(p.stat().st_size for _, p in binaries if p.is_file())
        size += sum(p.stat().st_size for p in parts)
        files.append(BundleFile(path, len(data), binaries, size, parts))
    return files, ignored


_PART = re.compile(r"\.part-\d+\.json$")
_BINARY_URL = re.compile(rb'"url":\s*"Binary/([A-Za-z0-9.\-]{1,64})"')
_CONDITIONAL_REF = re.compile(r"^[A-Z][A-Za-z]+\?")


def _part_number(path: Path) -> int:
    match = re.search(r"\.part-(\d+)\.json$", path.name)
    return int(match.group(1)) if match else 1


def _inline_binary_ids(path: Path) -> set[str]:
    """Ids of the Binary entries of a bundle file, from their request lines (no full parse)."""
    with path.open("rb") as fh:
        return {m.decode() for line in fh for m in _BINARY_URL.findall(line)}


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


def default_journal_path(paths: Sequence[Path]) -> Path:
    """``<folder>/.fhirimg-push-journal.jsonl`` for the first path (a folder or a file)."""
    first = paths[0] if paths else DEFAULT_FOLDER
    folder = first if first.is_dir() else first.parent
    return folder / DEFAULT_JOURNAL_NAME


# --------------------------------------------------------------------------- one bundle
class _CreateGate:
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


def _conditional_keys(bundle: Mapping[str, Any]) -> list[str]:
    keys = []
    for entry in bundle.get("entry") or []:
        ref = conditional_reference(entry)
        if ref and "?" in ref:
            keys.append(ref)
    return keys


def _check_shape(bundle: Mapping[str, Any]) -> list[dict[str, Any]]:
    if bundle.get("resourceType") != "Bundle" or bundle.get("type") not in ("transaction", "batch"):
        raise InputError("not a transaction Bundle")
    entries = bundle.get("entry")
    if not isinstance(entries, list) or not entries:
        raise InputError("the Bundle has no entries")
    for n, entry in enumerate(entries):
        request = entry.get("request") if isinstance(entry, dict) else None
        if not isinstance(request, dict) or not request.get("method") or not request.get("url"):
            raise InputError(f"entry {n} has no request.method and request.url")
    return entries


def _patient_entry(entries: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    for entry in entries:
        if (entry.get("resource") or {}).get("resourceType") == "Patient":
            return entry
    return None


def _resolve_patient(client: FhirClient, bundle: Mapping[str, Any]) -> str | None:
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
) -> None:
    """Send the entries as one transaction, or as pieces (see :mod:`fhirimg.push.split`)."""
    whole = max_entries is None or len(entries) <= max_entries
    queue: deque[list[Mapping[str, Any]]] = deque(
        [list(entries)] if whole else plan_pieces(entries, max_entries or len(entries))
    )
    mapping: dict[str, str] = {}
    while queue:
        piece = queue.popleft()
        body: Mapping[str, Any]
        if whole and len(piece) == len(entries) and not mapping:
            body = bundle  # the bytes as converted, untouched
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
            ref = reference_from_location((answer.get("response") or {}).get("location"))
            ref = ref or conditional_reference(entry)
            if ref and entry.get("fullUrl"):
                mapping[str(entry["fullUrl"])] = ref
    result.references = mapping


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
    max_entries: int | None = None,
    auto_split: bool = True,
    journal: Journal | None = None,
    observer: PushObserver | None = None,
    dry_run: bool = False,
    _gate: _CreateGate | None = None,
    _limit: Callable[[], int | None] | None = None,
) -> BundleResult:
    """Push one in-memory transaction Bundle, and its Binary files first; return what happened.

    ``binaries`` are ``(binary id, file)`` pairs uploaded raw as ``PUT Binary/<id>``. ``journal``
    (optional) is consulted and appended to; ``sha256`` identifies the bundle there (default: the
    hash of its canonical JSON). Raises :class:`AuthError` when the server refuses the
    credentials; every other failure is reported in the result (``status == "failed"``).
    """
    observer = observer or PushObserver()
    result = BundleResult(file=name, status="failed")
    try:
        entries = _check_shape(bundle)
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
    gate = _gate or _CreateGate()
    claimed = gate.claim(_conditional_keys(bundle))
    if _limit is not None:
        # Read after waiting on the gate: a bundle ahead of us may have learned the size limit.
        max_entries = _limit()
    confirmed = False
    try:
        _upload_binaries(client, bundle, binaries, journal, result, observer)
        _send_entries(client, bundle, entries, max_entries, auto_split, result, observer)
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
        journal.record_bundle(server, sha256, file=name, entries=len(entries))
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
            security_context = _resolve_patient(client, bundle)
            resolved = True
        client.put_binary(binary_id, data, security_context=security_context)
        if journal is not None:
            journal.record_binary(client.base_url, binary_id, digest, size=len(data))
        result.binaries_uploaded += 1
        observer.advanced(len(data))


# --------------------------------------------------------------------------- many bundles
def _check_server(client: FhirClient) -> None:
    """Fail early (and clearly) when the server is unreachable, refuses us, or is not R4."""
    try:
        capabilities = client.capabilities()
    except AuthError:
        raise
    except PushError as exc:
        if exc.status in (404, 405, 406):
            return  # no /metadata: not fatal, the first transaction will tell.
        raise
    version = str(capabilities.get("fhirVersion", "4.0.1"))
    if not version.startswith("4."):
        raise PushError(f"the server speaks FHIR {version}; fhirimg bundles are R4 (4.0.1)")


def push_paths(
    paths: Sequence[Path],
    options: PushOptions,
    observer: PushObserver | None = None,
    *,
    transport: httpx.BaseTransport | None = None,
) -> PushReport:
    """Push every transaction Bundle under ``paths`` (default: ``fhirimg-out/``) to the server.

    Raises :class:`InputError` when no bundle is found, :class:`PushError` (or its child
    :class:`AuthError`) when the server cannot be used at all, and re-raises
    ``KeyboardInterrupt`` after stopping cleanly (confirmed work is in the journal). Refusals of
    single bundles are in the report.
    """
    started = time.monotonic()
    observer = observer or PushObserver()
    paths = list(paths) or [DEFAULT_FOLDER]
    files, ignored = discover(paths)
    if not files:
        raise InputError(f"no transaction Bundle found in {', '.join(map(str, paths))}")
    report = PushReport(server=options.server.rstrip("/"), ignored=ignored)
    journal_path = (options.journal or default_journal_path(paths)) if options.use_journal else None
    report.journal = str(journal_path) if journal_path else None
    journal = Journal(journal_path, ignore_existing=options.force, read_only=options.dry_run)
    observer.started(len(files), sum(f.size + f.binaries_size for f in files))

    if options.dry_run:
        for f in files:
            data, bundle = _load_bundle(f.path)
            if journal.bundle_done(report.server, hashlib.sha256(data).hexdigest()):
                result = BundleResult(file=f.path.name, status="skipped")
            else:
                result = push_bundle(
                    None, bundle, f.binaries, name=f.path.name,
                    max_entries=options.max_entries, dry_run=True,
                )  # fmt: skip
            report.results.append(result)
            observer.finished(result)
        report.elapsed_s = time.monotonic() - started
        return report

    client = FhirClient(
        options.server,
        auth=options.auth,
        timeout=options.timeout,
        retry=options.retry,
        verify=options.verify,
        max_connections=max(options.jobs, 1) + 2,
        transport=transport,
    )
    try:
        if options.check_server:
            _check_server(client)
        with journal:
            _push_all(client, files, options, journal, report, observer)
    finally:
        report.requests = client.stats_requests
        report.retries = client.stats_retries
        client.close()
        report.elapsed_s = time.monotonic() - started
    return report


def _push_split_study(
    client: FhirClient,
    f: BundleFile,
    data: bytes,
    bundle: dict[str, Any],
    options: PushOptions,
    journal: Journal,
    observer: PushObserver,
    limit: Callable[[], int | None],
) -> BundleResult:
    """Push a study convert split into ``<stem>.json`` + ``<stem>.part-N.json``, in an order in
    which every reference resolves on a strict server: the Patient first (alone), then the
    parts' Binary entries, then the first file (its ImagingStudy links those Binaries), then the
    parts' other entries (Media/DocumentReference point at the ImagingStudy). The parts'
    conditional references are resolved to literal ids first. One part is in memory at a time.
    Stops at the first refusal."""
    total = BundleResult(file=f.path.name, status="pushed")
    server = client.base_url
    cache: dict[str, str] = {}
    statuses: list[str] = []

    def send(
        name: str, piece: dict[str, Any], sha: str, binaries: Sequence[tuple[str, Path]]
    ) -> bool:
        if not journal.bundle_done(server, sha) and name != f.path.name:
            piece = resolve_conditional_references(client, piece, cache)
        result = push_bundle(
            client, piece, binaries, name=name, sha256=sha, max_entries=limit(),
            auto_split=options.auto_split, journal=journal, observer=observer,
        )  # fmt: skip
        total.entries += result.entries
        total.pieces += result.pieces
        total.binaries_uploaded += result.binaries_uploaded
        total.binaries_skipped += result.binaries_skipped
        statuses.append(result.status)
        if result.status == "failed":
            total.status, total.error = "failed", f"{name}: {result.error}"
            total.http_status, total.issues = result.http_status, result.issues
            total.unreachable = result.unreachable
        return result.status != "failed"

    def part_pieces(binaries: bool) -> bool:
        for path in f.parts:
            try:
                raw, part = _load_bundle(path)
            except (OSError, ValueError) as exc:
                raise InputError(f"{path.name}: cannot read: {exc}") from exc
            entries = [
                e for e in part.get("entry") or []
                if ((e.get("resource") or {}).get("resourceType") == "Binary") == binaries
            ]  # fmt: skip
            if not entries:
                continue
            sha = hashlib.sha256(raw).hexdigest() + ("#binaries" if binaries else "#rest")
            if not send(path.name, {**part, "entry": entries}, sha, ()):
                return False
            if not binaries:
                observer.advanced(path.stat().st_size)
        return True

    try:
        if not journal.bundle_done(server, hashlib.sha256(data).hexdigest()):
            _resolve_patient(client, bundle)
        if (
            part_pieces(binaries=True)
            and send(f.path.name, bundle, hashlib.sha256(data).hexdigest(), f.binaries)
            and part_pieces(binaries=False)
            and all(s == "skipped" for s in statuses)
        ):
            total.status = "skipped"
    except AuthError:
        raise
    except PushError as exc:
        total.status, total.error, total.http_status = "failed", str(exc), exc.status
    except FhirimgError as exc:
        # An unreadable part file (InputError) fails this study, not the whole run.
        total.status, total.error = "failed", str(exc)
    return total


def _push_all(
    client: FhirClient,
    files: list[BundleFile],
    options: PushOptions,
    journal: Journal,
    report: PushReport,
    observer: PushObserver,
) -> None:
    gate = _CreateGate()
    learned: list[int | None] = [options.max_entries]
    lock = threading.Lock()
    results: dict[int, BundleResult] = {}

    def one(n: int, f: BundleFile) -> BundleResult:
        name = f.path.name
        try:
            data, bundle = _load_bundle(f.path)
        except (OSError, ValueError, InputError) as exc:
            return BundleResult(file=name, status="failed", error=f"cannot read: {exc}")

        def limit() -> int | None:
            with lock:
                return learned[0]

        if f.parts:
            claimed = gate.claim(_conditional_keys(bundle))
            ok = False
            try:
                result = _push_split_study(
                    client, f, data, bundle, options, journal, observer, limit
                )
                ok = result.status != "failed"
            finally:
                gate.release(claimed, ok)
            return result
        result = push_bundle(
            client,
            bundle,
            f.binaries,
            name=name,
            sha256=hashlib.sha256(data).hexdigest(),
            max_entries=limit(),
            auto_split=options.auto_split,
            journal=journal,
            observer=observer,
            _gate=gate,
            _limit=limit,
        )
        if result.learned_limit and result.status == "pushed":
            # Only a limit the pieces were then accepted at: a refusal that merely read like
            # "too large" must not cut every later bundle of the run.
            with lock:
                learned[0] = min(learned[0] or result.learned_limit, result.learned_limit)
        observer.advanced(f.size)
        return result

    executor = ThreadPoolExecutor(max_workers=max(1, options.jobs), thread_name_prefix="push")
    pending: dict[Future[BundleResult], int] = {}
    queue = deque(enumerate(files))
    try:
        while queue or pending:
            while queue and len(pending) < max(1, options.jobs) and report.aborted is None:
                n, f = queue.popleft()
                pending[executor.submit(one, n, f)] = n
            if not pending:
                break
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                n = pending.pop(future)
                try:
                    result = future.result()
                except AuthError as exc:
                    result = BundleResult(
                        file=files[n].path.name, status="failed", http_status=exc.status,
                        error=str(exc), issues=outcome_issues(exc.outcome),
                    )  # fmt: skip
                    report.aborted = f"the server refused the credentials: {exc}"
                    client.stop()
                results[n] = result
                observer.finished(result)
                if result.unreachable and report.aborted is None:
                    # The server went away: the remaining bundles would each wait out the retries.
                    report.aborted = f"the server stopped answering: {result.error}"
    except BaseException:
        client.stop()
        executor.shutdown(wait=True, cancel_futures=True)
        raise
    executor.shutdown(wait=True)
    for n, f in enumerate(files):
        if n not in results:
            results[n] = BundleResult(
                file=f.path.name, status="failed", error="not attempted: the run was aborted"
            )
    report.results = [results[n] for n in range(len(files))]
