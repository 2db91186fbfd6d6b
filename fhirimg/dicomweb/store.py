"""``push --dicomweb``: store the converted studies' instances in a PACS with STOW-RS, then push the
bundles whose ImagingStudy points at that PACS.

Which files are sent is planned by :mod:`fhirimg.dicomweb.store_plan`; the options and reports are
:mod:`fhirimg.dicomweb.store_results`. Every instance the server confirms is journalled (DICOMweb
URL, SOP Instance UID, sha256 of the bytes) in the push journal, so a re-run sends only what is not
yet confirmed; requests are retried like FHIR pushes (same HTTP layer, same policy). A bundle is
pushed to the FHIR server only when all of its study's instances are confirmed in the PACS and its
ImagingStudy references an Endpoint of type ``dicom-wado-rs`` at the PACS's base URL: FHIR never
points at images the PACS lacks.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx

from fhirimg import jsonio
from fhirimg.convert import Progress
from fhirimg.dicomweb.client import (
    DicomwebClient,
    FilePart,
    MultipartFiles,
    new_boundary,
    scan_file,
)
from fhirimg.dicomweb.store_plan import WADO_RS, SourceFile, StudyPlan, plan_study
from fhirimg.dicomweb.store_results import (
    DicomwebPushReport,
    StoreOptions,
    StoreReport,
    StudyStore,
)
from fhirimg.errors import AuthError, InputError, PushError, ServerUnreachableError
from fhirimg.push import (
    DEFAULT_FOLDER,
    BundleResult,
    Journal,
    PushObserver,
    PushOptions,
    default_journal_path,
    discover,
    push_paths,
)

__all__ = ["FAILURE_REASONS", "store_and_push", "store_instances"]

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


def _reason(code: int | None) -> str:
    if code is None:
        return "refused by the server"
    return f"refused by the server: 0x{code:04X} {FAILURE_REASONS.get(code, '')}".rstrip()


def _store_study(
    client: DicomwebClient,
    plan: StudyPlan,
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
    pending: list[tuple[SourceFile, FilePart]] = []
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

    Raises :class:`InputError` when a path does not exist, :class:`PushError` (or
    :class:`AuthError`) when the server cannot be used at all. Refused instances are in the
    report; no bundle at all gives an empty one (nothing sent).
    """
    started = time.monotonic()
    observer = observer or PushObserver()
    paths = list(paths) or [DEFAULT_FOLDER]
    files, _ = discover(paths)
    url = options.dicomweb_url.rstrip("/")
    report = StoreReport(dicomweb_url=url)
    if not files:
        return report  # nothing to store, no request sent (exit 4)
    cache: dict[Path, Any] = {}
    plans: list[StudyPlan] = []
    for f in files:
        if f.problem is not None:  # not a bundle to push: refused with its reason
            study = StudyStore(f.path.name, f.path, "", 0, False, failed=[(f.path.name, f.problem)])
            plans.append(StudyPlan(study, []))
            continue
        try:
            bundle = jsonio.loads(f.path.read_bytes())
            plans.append(plan_study(f.path, bundle, url, cache))
        except (OSError, ValueError, InputError) as exc:
            study = StudyStore(f.path.name, f.path, "", 0, False, failed=[(f.path.name, str(exc))])
            plans.append(StudyPlan(study, []))
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
        client_cert=options.client_cert,
        deadline=options.deadline,
        allow_insecure_http=options.allow_insecure_http,
        max_connections=max(options.jobs, 1) + 2,
        transport=transport,
    )
    try:
        if not options.dry_run:
            client.check()
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
    plans: list[StudyPlan],
    options: StoreOptions,
    journal: Journal,
    report: StoreReport,
    observer: PushObserver,
    done: Callable[[int], None],
) -> None:
    lock = threading.Lock()

    def one(plan: StudyPlan) -> None:
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
