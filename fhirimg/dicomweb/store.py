"""``push --dicomweb``: store the converted studies' instances in a PACS with STOW-RS, then push the
bundles whose ImagingStudy points at that PACS.

Which files are sent: ``report.json`` in the convert output folder lists every input file with its
status and, for converted ones, its bundle; those are the instances of that bundle's study. A path
in it is used as written (absolute, or relative to the current folder, as ``convert`` was given it).
When a listed file is gone or changed, the instance's Binary beside the bundle
(``<stem>.binaries/<id>.dcm``, written by ``convert`` with Binaries) is used instead: the same
bytes. Each file's header is read (``fhirimg.scan.read_file``) to match it to the ImagingStudy's
instance by SOP Instance UID; files converted from a PACS (paths that are URLs) are not sent again.

Every instance the server confirms is journalled (DICOMweb URL, SOP Instance UID, sha256 of the
bytes) in the push journal, so a re-run sends only what is not yet confirmed; requests are retried
like FHIR pushes (same client, same policy). A bundle is pushed to the FHIR server only when all of
its study's instances are confirmed in the PACS and its ImagingStudy references an Endpoint of
type ``dicom-wado-rs`` at the PACS's base URL: FHIR never points at images the PACS lacks.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx

from fhirimg import jsonio
from fhirimg.convert import REPORT_NAME, Progress
from fhirimg.dicomweb.client import (
    DicomwebClient,
    FilePart,
    MultipartFiles,
    new_boundary,
    scan_file,
)
from fhirimg.errors import InputError, PushError
from fhirimg.model import InstanceRecord
from fhirimg.push.auth import AuthError
from fhirimg.push.client import RetryPolicy, ServerUnreachableError
from fhirimg.push.journal import Journal
from fhirimg.push.pusher import (
    BINARY_EXTENSION_URL,
    DEFAULT_FOLDER,
    BundleResult,
    PushObserver,
    PushOptions,
    PushReport,
    default_journal_path,
    discover,
    push_paths,
)
from fhirimg.scan import read_file

log = logging.getLogger(__name__)

__all__ = [
    "FAILURE_REASONS",
    "DicomwebPushReport",
    "StoreOptions",
    "StoreReport",
    "StudyStore",
    "endpoint_addresses",
    "store_and_push",
    "store_instances",
]

WADO_RS = "dicom-wado-rs"
# (0008,1197) Failure Reason values of PS3.18 Table I.2-3 / PS3.4 Annex GG.
FAILURE_REASONS = {
    0x0110: "processing failure",
    0x0119: "class-instance conflict",
    0x0122: "SOP class not supported",
    0xA700: "out of resources",
    0xA900: "data set does not match SOP class",
    0xC000: "cannot understand",
    0xC122: "referenced transfer syntax not supported",
}


@dataclass(frozen=True)
class StoreOptions:
    """How to store instances in the PACS (``push --dicomweb`` options, as data).

    A batch (one STOW-RS request) holds at most ``batch_instances`` instances and, unless one
    instance alone is larger, ``batch_bytes`` bytes. Batches are streamed from the files, so these
    bound the size of a request, not the memory used (one chunk per request in flight). ``journal``, ``use_journal`` and ``force``
    mean what they mean for :class:`fhirimg.push.PushOptions` (same journal file by default).
    """

    dicomweb_url: str
    auth: httpx.Auth | None = None
    timeout: float = 60.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    verify: bool | str | Path = True
    jobs: int = 4
    batch_instances: int = 50
    batch_bytes: int = 64 * 1024 * 1024
    journal: Path | None = None
    use_journal: bool = True
    force: bool = False
    dry_run: bool = False


@dataclass
class StudyStore:
    """What became of one bundle's study in the PACS."""

    bundle: str
    path: Path
    study_instance_uid: str
    instances: int
    has_endpoint: bool
    stored: int = 0
    skipped: int = 0
    planned: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    """``(instance, reason)``: the SOP Instance UID (or file) and why it is not in the PACS."""

    @property
    def ok(self) -> bool:
        # planned: --dry-run counts what it would store as fine
        return not self.failed and self.stored + self.skipped + self.planned == self.instances

    def to_json(self) -> dict[str, Any]:
        return {
            "bundle": self.bundle,
            "studyInstanceUid": self.study_instance_uid,
            "instances": self.instances,
            "stored": self.stored,
            "skipped": self.skipped,
            "planned": self.planned,
            "failed": [{"instance": i, "reason": r} for i, r in self.failed],
            "endpoint": self.has_endpoint,
        }


@dataclass
class StoreReport:
    """The outcome of :func:`store_instances`, one :class:`StudyStore` per bundle."""

    dicomweb_url: str
    studies: list[StudyStore] = field(default_factory=list)
    aborted: str | None = None
    elapsed_s: float = 0.0
    requests: int = 0
    retries: int = 0
    journal: str | None = None

    def total(self, attr: str) -> int:
        return sum(int(getattr(s, attr)) for s in self.studies)

    @property
    def failed(self) -> int:
        return sum(len(s.failed) for s in self.studies)

    @property
    def ok(self) -> bool:
        return self.aborted is None and all(s.ok for s in self.studies)

    def to_json(self) -> dict[str, Any]:
        return {
            "dicomweb": self.dicomweb_url,
            "instances": self.total("instances"),
            "stored": self.total("stored"),
            "skipped": self.total("skipped"),
            "failed": self.failed,
            "aborted": self.aborted,
            "elapsed_s": round(self.elapsed_s, 3),
            "requests": self.requests,
            "retries": self.retries,
            "journal": self.journal,
            "studies": [s.to_json() for s in self.studies],
        }


@dataclass
class DicomwebPushReport:
    """``push --dicomweb``: the PACS part, and the FHIR part when a FHIR server was given."""

    store: StoreReport
    fhir: PushReport | None = None
    not_pushed: list[tuple[str, str]] = field(default_factory=list)
    """Bundles kept from the FHIR server, with the reason."""

    @property
    def ok(self) -> bool:
        return self.store.ok and not self.not_pushed and (self.fhir is None or self.fhir.ok)

    def to_json(self) -> dict[str, Any]:
        return {
            "dicomweb": self.store.to_json(),
            "fhir": self.fhir.to_json() if self.fhir else None,
            "notPushed": [{"file": f, "reason": r} for f, r in self.not_pushed],
        }


# --------------------------------------------------------------------------- planning
def endpoint_addresses(bundle: Mapping[str, Any]) -> set[str]:
    """The addresses of the ``dicom-wado-rs`` Endpoints the bundle's ImagingStudy references.

    >>> endpoint_addresses({"entry": [
    ...   {"fullUrl": "urn:uuid:e", "resource": {"resourceType": "Endpoint",
    ...    "connectionType": {"code": "dicom-wado-rs"}, "address": "http://pacs/dw"}},
    ...   {"resource": {"resourceType": "ImagingStudy", "endpoint": [{"reference": "urn:uuid:e"}]}}]})
    {'http://pacs/dw'}
    """
    endpoints: dict[str, str] = {}
    for entry in bundle.get("entry") or []:
        resource = entry.get("resource") or {}
        if resource.get("resourceType") != "Endpoint":
            continue
        types = resource.get("connectionType")
        codings = types if isinstance(types, list) else [types]  # R5: a list of Codings
        codes = set()
        for c in codings:
            if isinstance(c, Mapping):
                codes.add(c.get("code"))
                codes.update(x.get("code") for x in c.get("coding") or [] if isinstance(x, Mapping))
        if WADO_RS in codes and entry.get("fullUrl"):
            endpoints[str(entry["fullUrl"])] = str(resource.get("address", "")).rstrip("/")
    found: set[str] = set()
    for entry in bundle.get("entry") or []:
        resource = entry.get("resource") or {}
        if resource.get("resourceType") != "ImagingStudy":
            continue
        refs = list(resource.get("endpoint") or [])
        for series in resource.get("series") or []:
            refs += series.get("endpoint") or []
        for ref in refs:
            address = endpoints.get(str((ref or {}).get("reference", "")))
            if address:
                found.add(address)
    return found


@dataclass(frozen=True)
class _Source:
    sop_instance_uid: str
    path: Path
    size: int


@dataclass
class _StudyPlan:
    result: StudyStore
    sources: list[_Source]


def _study_of(bundle: Mapping[str, Any]) -> Mapping[str, Any]:
    for entry in bundle.get("entry") or []:
        resource = entry.get("resource") or {}
        if resource.get("resourceType") == "ImagingStudy":
            return resource
    raise InputError("no ImagingStudy in the bundle")


def _study_uid(study: Mapping[str, Any]) -> str:
    for ident in study.get("identifier") or []:
        if ident.get("system") == "urn:dicom:uid":
            return str(ident.get("value", "")).removeprefix("urn:oid:")
    return ""


def _instances(study: Mapping[str, Any]) -> dict[str, str | None]:
    """SOP Instance UID -> the Binary id its instance-binary extension names (or None)."""
    out: dict[str, str | None] = {}
    for series in study.get("series") or []:
        for instance in series.get("instance") or []:
            binary = None
            for ext in instance.get("extension") or []:
                ref = str((ext.get("valueReference") or {}).get("reference", ""))
                if ext.get("url") == BINARY_EXTENSION_URL and ref.startswith("Binary/"):
                    binary = ref.removeprefix("Binary/")
            out[str(instance.get("uid"))] = binary
    return out


def _report_files(folder: Path, cache: dict[Path, dict[str, list[str]]]) -> dict[str, list[str]]:
    """``report.json`` of a convert output folder: bundle name -> its converted files."""
    if folder not in cache:
        by_bundle: dict[str, list[str]] = {}
        report = folder / REPORT_NAME
        if report.is_file():
            try:
                doc = jsonio.loads(report.read_bytes())
            except ValueError:
                log.warning("%s is not JSON; using the Binaries beside the bundles", report)
                doc = {}
            for item in doc.get("files") or [] if isinstance(doc, dict) else []:
                if item.get("status") == "converted" and item.get("bundle"):
                    by_bundle.setdefault(str(item["bundle"]), []).append(str(item["path"]))
        cache[folder] = by_bundle
    return cache[folder]


def _plan(
    path: Path, bundle: Mapping[str, Any], dicomweb_url: str, cache: dict[Path, Any]
) -> _StudyPlan:
    study = _study_of(bundle)
    wanted = _instances(study)
    result = StudyStore(
        bundle=path.name,
        path=path,
        study_instance_uid=_study_uid(study),
        instances=len(wanted),
        has_endpoint=dicomweb_url in endpoint_addresses(bundle),
    )
    sources: dict[str, _Source] = {}
    for name in _report_files(path.parent, cache).get(path.name, []):
        if name.startswith(("http://", "https://")):
            continue  # converted from a PACS: the instance is not a local file
        record = read_file(name)
        if isinstance(record, InstanceRecord) and record.sop_instance_uid in wanted:
            sources.setdefault(
                record.sop_instance_uid, _Source(record.sop_instance_uid, Path(name), record.size)
            )
    binaries = path.with_name(f"{path.stem}.binaries")
    for sop, binary_id in wanted.items():
        if sop in sources:
            continue
        candidate = binaries / f"{binary_id}.dcm" if binary_id else None
        if candidate is not None and candidate.is_file():
            sources[sop] = _Source(sop, candidate, candidate.stat().st_size)
        else:
            result.failed.append((sop, "source file not found (report.json paths, Binaries)"))
    ordered = [sources[sop] for sop in wanted if sop in sources]
    return _StudyPlan(result, ordered)


# --------------------------------------------------------------------------- storing
def _batches(sources: Sequence[_Source], max_count: int, max_bytes: int) -> Iterator[list[_Source]]:
    batch: list[_Source] = []
    size = 0
    for source in sources:
        if batch and (len(batch) >= max_count or size + source.size > max_bytes):
            yield batch
            batch, size = [], 0
        batch.append(source)
        size += source.size
    if batch:
        yield batch


def _reason(code: int | None) -> str:
    if code is None:
        return "refused by the server"
    return f"refused by the server: 0x{code:04X} {FAILURE_REASONS.get(code, '')}".rstrip()


def _store_study(
    client: DicomwebClient,
    plan: _StudyPlan,
    options: StoreOptions,
    journal: Journal,
    observer: PushObserver,
    done: Callable[[int], None],
) -> None:
    """Store one study's instances, batch by batch; ``done(n)``: n more instances accounted for. Each file is read twice, a chunk at a time:
    once to hash it (the journal says whether it is already stored) and to check that the batch's
    multipart boundary is not in it, once more while it is streamed to the server."""
    result = plan.result
    server = client.base_url
    boundary = new_boundary()
    pending: list[tuple[_Source, FilePart]] = []
    size = 0

    def send() -> None:
        try:
            answer = client.store_files(MultipartFiles([part for _, part in pending], boundary))
        except (AuthError, ServerUnreachableError):
            raise
        except PushError as exc:
            result.failed += [(source.sop_instance_uid, str(exc)) for source, _ in pending]
            done(len(pending))
            pending.clear()
            return
        failed = dict(answer.failed)
        stored = set(answer.stored)
        for source, part in pending:
            uid = source.sop_instance_uid
            if uid in failed:
                result.failed.append((uid, _reason(failed[uid])))
            elif uid in stored or (answer.status == 200 and not answer.failed):
                journal.record_instance(server, uid, part.sha256, size=part.size)
                result.stored += 1
            else:
                result.failed.append((uid, f"not confirmed by the server (HTTP {answer.status})"))
            observer.advanced(part.size)
        done(len(pending))
        pending.clear()

    for source in plan.sources:
        try:
            part, clash = scan_file(source.path, boundary)
            if clash:
                # The boundary occurs in this file (never seen, but possible): send what is
                # pending with it, and draw one for the next batch that does not.
                if pending:
                    send()
                    size = 0
                while clash:
                    boundary = new_boundary()
                    part, clash = scan_file(source.path, boundary)
        except OSError as exc:
            reason = f"cannot read {source.path}: {exc.strerror or exc}"
            result.failed.append((source.sop_instance_uid, reason))
            done(1)
            continue
        if journal.instance_done(server, source.sop_instance_uid, part.sha256):
            result.skipped += 1
            observer.advanced(part.size)
            done(1)
            continue
        if options.dry_run:
            result.planned += 1
            done(1)
            continue
        if pending and (
            len(pending) >= options.batch_instances or size + part.size > options.batch_bytes
        ):
            send()
            size = 0
        pending.append((source, part))
        size += part.size
    if pending:
        send()


def _check_pacs(client: DicomwebClient) -> None:
    """Fail early when the PACS is unreachable or refuses the credentials (one tiny QIDO-RS)."""
    client._http.request(
        "GET", "studies", params={"limit": "1"}, headers={"Accept": "application/dicom+json"}
    )


def store_instances(
    paths: Sequence[Path],
    options: StoreOptions,
    observer: PushObserver | None = None,
    *,
    progress: Progress | None = None,
    transport: httpx.BaseTransport | None = None,
) -> StoreReport:
    """Store the instances of the studies of every bundle under ``paths`` (convert output) in the
    DICOMweb server with STOW-RS.

    ``progress("store", n, total)`` is called (from worker threads) as ``n`` more of the
    ``total`` instances that have a source file are stored, skipped as already stored, or fail.

    Raises :class:`InputError` when no bundle is found, :class:`PushError` (or :class:`AuthError`)
    when the server cannot be used at all. Refused instances are in the report.
    """
    started = time.monotonic()
    observer = observer or PushObserver()
    paths = list(paths) or [DEFAULT_FOLDER]
    files, _ = discover(paths)
    if not files:
        raise InputError(f"no transaction Bundle found in {', '.join(map(str, paths))}")
    url = options.dicomweb_url.rstrip("/")
    report = StoreReport(dicomweb_url=url)
    cache: dict[Path, Any] = {}
    plans: list[_StudyPlan] = []
    for f in files:
        try:
            bundle = jsonio.loads(f.path.read_bytes())
            plans.append(_plan(f.path, bundle, url, cache))
        except (OSError, ValueError, InputError) as exc:
            study = StudyStore(f.path.name, f.path, "", 0, False, failed=[(f.path.name, str(exc))])
            plans.append(_StudyPlan(study, []))
    report.studies = [p.result for p in plans]
    journal_path = (options.journal or default_journal_path(paths)) if options.use_journal else None
    report.journal = str(journal_path) if journal_path else None
    journal = Journal(journal_path, ignore_existing=options.force, read_only=options.dry_run)
    observer.started(len(plans), sum(s.size for p in plans for s in p.sources))
    total = sum(len(p.sources) for p in plans)

    def done(n: int) -> None:
        if progress is not None and n:
            progress("store", n, total)

    client = DicomwebClient(
        url,
        auth=options.auth,
        timeout=options.timeout,
        retry=options.retry,
        verify=options.verify,
        max_connections=max(options.jobs, 1) + 2,
        transport=transport,
    )
    try:
        if not options.dry_run:
            _check_pacs(client)
        with journal:
            _store_all(client, plans, options, journal, report, observer, done)
    finally:
        report.requests = client.stats_requests
        report.retries = client.stats_retries
        client.close()
        report.elapsed_s = time.monotonic() - started
    return report


def _store_all(
    client: DicomwebClient,
    plans: list[_StudyPlan],
    options: StoreOptions,
    journal: Journal,
    report: StoreReport,
    observer: PushObserver,
    done: Callable[[int], None],
) -> None:
    lock = threading.Lock()

    def one(plan: _StudyPlan) -> None:
        with lock:
            if report.aborted:
                plan.result.failed.append(("*", "not attempted: the run was aborted"))
                return
        try:
            _store_study(client, plan, options, journal, observer, done)
        except (AuthError, ServerUnreachableError) as exc:
            with lock:
                report.aborted = report.aborted or f"the DICOMweb server cannot be used: {exc}"
            client.stop()
            plan.result.failed.append(("*", str(exc)))

    with ThreadPoolExecutor(max(1, options.jobs), thread_name_prefix="stow") as pool:
        try:
            list(pool.map(one, plans))
        except BaseException:
            client.stop()
            raise


def store_and_push(
    paths: Sequence[Path],
    store_options: StoreOptions,
    push_options: PushOptions | None = None,
    observer: PushObserver | None = None,
    *,
    progress: Progress | None = None,
    transport: httpx.BaseTransport | None = None,
) -> DicomwebPushReport:
    """``push --dicomweb``: :func:`store_instances`, then (with ``push_options``) push to the FHIR
    server the bundles whose study is complete in the PACS and whose ImagingStudy has a
    ``dicom-wado-rs`` Endpoint at the PACS's URL. Both steps share one journal.

    ``progress`` hears ``("store", n, instances)`` as :func:`store_instances` says, then
    ``("push", 1, bundles)`` as each bundle is done with on the FHIR server.
    """
    paths = list(paths) or [DEFAULT_FOLDER]
    journal = store_options.journal or default_journal_path(paths)
    store = store_instances(
        paths,
        replace(store_options, journal=journal),
        observer,
        progress=progress,
        transport=transport,
    )
    report = DicomwebPushReport(store)
    if push_options is None or store.aborted:
        return report
    eligible: list[Path] = []
    for study in store.studies:
        if not study.has_endpoint:
            report.not_pushed.append(
                (study.bundle, f"its ImagingStudy has no {WADO_RS} Endpoint at {store.dicomweb_url} "
                 f"(convert with --dicomweb-url {store.dicomweb_url})")
            )  # fmt: skip
        elif not study.ok and not store_options.dry_run:
            report.not_pushed.append((study.bundle, "not all of its instances are in the PACS"))
        else:
            eligible.append(study.path)
    if eligible:
        fhir_observer = _Counting(observer or PushObserver(), progress) if progress else observer
        report.fhir = push_paths(
            eligible, replace(push_options, journal=push_options.journal or journal), fhir_observer
        )
    return report


class _Counting(PushObserver):
    """Passes the FHIR push's events on, and each finished bundle to ``progress("push", 1, n)``."""

    def __init__(self, inner: PushObserver, progress: Progress) -> None:
        self._inner = inner
        self._progress = progress
        self._bundles: int | None = None

    def started(self, bundles: int, total_bytes: int) -> None:
        self._bundles = bundles
        self._inner.started(bundles, total_bytes)

    def advanced(self, nbytes: int) -> None:
        self._inner.advanced(nbytes)

    def finished(self, result: BundleResult) -> None:
        self._inner.finished(result)
        self._progress("push", 1, self._bundles)
