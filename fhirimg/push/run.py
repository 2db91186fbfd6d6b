"""Pushing many bundles: every transaction Bundle under the given paths, ``jobs`` at a time, with
one journal, one client and one run-wide view of the server (its size limit, whether it still
answers, whether it still takes the credentials).

A study ``convert`` split into part files is pushed in an order in which every reference
resolves; a refusal of one bundle is reported and the run goes on, a refused credential or a
server that stopped answering aborts it (confirmed work stays in the journal).
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import httpx

from fhirimg import jsonio
from fhirimg.errors import AuthError, FhirimgError, InputError, JournalError, PushError
from fhirimg.http.client import requests_for
from fhirimg.http.fhir import FhirClient, outcome_issues
from fhirimg.push.capability import (
    RELEASE_NAMES,
    check_release,
    read_capabilities,
    server_release,
)
from fhirimg.push.files import (
    DEFAULT_FOLDER,
    BundleFile,
    Ignored,
    Listing,
    default_journal_path,
    iter_discover,
    list_inputs,
    load_bundle,
    transaction_problem,
)
from fhirimg.push.journal import Journal
from fhirimg.push.results import BundleResult, PushObserver, PushOptions, PushReport
from fhirimg.push.transaction import (
    CreateFirst,
    CreateGate,
    conditional_keys,
    push_bundle,
    resolve_conditional_references,
    resolve_patient,
)
from fhirimg.safetext import refuse_url_credentials

__all__ = ["push_paths"]


SYNC_INTERVAL = 0.05
"""Seconds between the starts of two journal fsyncs while bundles are in flight; the bundles
a fsync covers are reported pushed when it is over (workers never wait for it)."""

_CREDENTIALS = "give credentials with --token, --user or --token-url (PushOptions.auth)"


def _refused(f: BundleFile) -> BundleResult:
    """The result of a bundle discovery found unusable (a crafted Binary id, ...)."""
    return BundleResult(file=f.path.name, status="failed", error=f.problem)


def _other_release(f: BundleFile, version: str) -> BundleFile:
    """``f`` refused: a bundle of another FHIR release than the server's, in a run whose other
    bundles are of the server's (a mixed folder); the run goes on with those."""
    if f.problem is not None:
        return f
    want = RELEASE_NAMES.get(f.release, f.release)
    why = f"a {want} bundle, and the server speaks FHIR {version}: not sent"
    return dataclasses.replace(f, problem=why)


def _releases(files: Sequence[BundleFile]) -> dict[str, str]:
    """release -> the bundles of that release, as a message names them."""
    names: dict[str, list[str]] = {}
    for f in files:
        if f.problem is None:
            names.setdefault(f.release, []).append(f.path.name)
    return {
        release: f"{len(found)} bundles, e.g. {found[0]}" if len(found) > 1 else found[0]
        for release, found in names.items()
    }


def push_paths(
    paths: Sequence[Path],
    options: PushOptions,
    observer: PushObserver | None = None,
    *,
    transport: httpx.BaseTransport | None = None,
) -> PushReport:
    """Push every transaction Bundle under ``paths`` (default: ``fhirimg-out/``) to the server.

    Discovery streams (:func:`~fhirimg.push.files.iter_discover`): the folders are listed once,
    then each file is read, parsed once and pushed while the next ones are still being read.

    Raises :class:`InputError` when a path does not exist, :class:`PushError` (or its child
    :class:`AuthError`) when the server cannot be used at all (before the first bundle: not
    reachable, not a FHIR server, another FHIR release than the bundles', see
    :mod:`fhirimg.push.capability`), and re-raises
    ``KeyboardInterrupt`` after stopping cleanly (confirmed work is in the journal). Refusals of
    single bundles are in the report; no bundle at all gives an empty report
    (:attr:`PushReport.exit_code` 4) and sends nothing.
    """
    started = time.monotonic()
    observer = observer or PushObserver()
    refuse_url_credentials(options.server, "the FHIR server URL", _CREDENTIALS)
    paths = list(paths) or [DEFAULT_FOLDER]
    listing = list_inputs(paths)
    found = _Found(iter_discover(listing))
    report = PushReport(server=options.server.rstrip("/"), ignored=found.ignored)
    if not found.look_ahead(lambda f: True):
        return report  # nothing to push, no request sent: exit_code 4
    journal_path = (options.journal or default_journal_path(paths)) if options.use_journal else None
    report.journal = str(journal_path) if journal_path else None
    journal = Journal(
        journal_path,
        ignore_existing=options.force,
        read_only=options.dry_run,
        mode=jsonio.modes(options.group_readable),
    )
    # The totals from the listing's file sizes: the bar starts before any file is read.
    observer.started(listing.bundles, listing.total_bytes)

    if options.dry_run:
        for _, f in found:
            if f.problem is not None:
                result = _refused(f)
            elif journal.bundle_done(report.server, _sha256(f)):
                result = BundleResult(file=f.path.name, status="skipped")
            else:
                result = push_bundle(
                    None, _bundle(f), f.binaries, name=f.path.name,
                    max_entries=options.max_entries, dry_run=True,
                )  # fmt: skip
            report.results.append(result)
            observer.finished(result)
        found.correct_totals(observer, listing)
        report.elapsed_s = time.monotonic() - started
        return report

    client = options.client(max_connections=max(options.jobs, 1) + 2, transport=transport)
    try:
        create_first: CreateFirst | None = None
        if options.check_server:
            # Before the first bundle: the base URL is a FHIR server of the bundles' release.
            if _match_release(client, found):
                create_first = CreateFirst()
        with journal:
            _push_all(client, found, options, journal, report, observer, create_first)
        found.correct_totals(observer, listing)
    finally:
        report.requests = client.stats_requests
        report.retries = client.stats_retries
        client.close()
        report.elapsed_s = time.monotonic() - started
    return report


def _match_release(client: FhirClient, found: _Found) -> bool:
    """Read the server's FHIR release, then read ahead to the first bundle of that release
    (nothing is sent meanwhile). When there is none and some bundle is of another release, the
    run stops here (:class:`PushError`, as :func:`~fhirimg.push.capability.check_server`);
    otherwise the bundles of another release (a mixed folder) are refused one by one. Returns
    whether the server declares conditional create for ImagingStudy (:class:`CreateFirst`)."""
    capabilities = read_capabilities(client)
    version = capabilities.fhir_version
    takes = server_release(version)
    looked = found.look_ahead(lambda f: f.problem is None and f.release == takes)
    if not any(f.problem is None and f.release == takes for f in looked):
        check_release(client, version, _releases(looked))
    found.refuse = lambda f: _other_release(f, version) if f.release != takes else f
    return "ImagingStudy" in capabilities.conditional_create


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
        with requests_for(name):  # a part's requests name the part file (-vv)
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
                raw, part = load_bundle(path)
            except (OSError, ValueError) as exc:
                raise InputError(f"{path.name}: cannot read: {exc}") from exc
            problem = transaction_problem(part)
            if problem is not None:
                raise InputError(f"{path.name}: {problem}")
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
            resolve_patient(client, bundle)
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


class _Found:
    """The discovery stream (:func:`~fhirimg.push.files.iter_discover`) as numbered bundle
    files: ignored files are collected on the way, files read ahead are kept until handed out,
    and the files handed out are remembered without their bytes (for the results of bundles an
    aborted run never got to, and the progress totals)."""

    def __init__(self, stream: Iterator[BundleFile | Ignored]) -> None:
        self._stream = stream
        self._ahead: deque[BundleFile] = deque()
        self.ignored: list[tuple[str, str]] = []
        self.files: list[BundleFile] = []
        self.refuse: Callable[[BundleFile], BundleFile] = lambda f: f
        """What becomes of each file handed out (a bundle of another release refused)."""

    def _next(self) -> BundleFile | None:
        for item in self._stream:
            if isinstance(item, Ignored):
                self.ignored.append((item.file, item.reason))
            else:
                return item
        return None

    def look_ahead(self, wanted: Callable[[BundleFile], bool]) -> list[BundleFile]:
        """Read on until a file is ``wanted`` or the stream ends; return the files read ahead
        so far (kept for iteration), empty when there is no file at all."""
        if not any(wanted(f) for f in self._ahead):
            while (f := self._next()) is not None:
                if wanted(f):
                    self._ahead.append(f)
                    break
                self._ahead.append(f.unloaded())  # only a bundle to send keeps its bytes
        return list(self._ahead)

    def __iter__(self) -> Iterator[tuple[int, BundleFile]]:
        while True:
            f = self._ahead.popleft() if self._ahead else self._next()
            if f is None:
                return
            f = self.refuse(f)
            self.files.append(f.unloaded())
            yield len(self.files) - 1, f

    def correct_totals(self, observer: PushObserver, listing: Listing) -> None:
        """Tell the observer the exact totals when the listing's estimate was off (JSON files
        that were no bundles, ``.binaries/`` folders holding other files)."""
        total = sum(f.size + f.binaries_size for f in self.files)
        if (len(self.files), total) != (listing.bundles, listing.total_bytes):
            observer.started(len(self.files), total)


def _sha256(f: BundleFile) -> str:
    return hashlib.sha256(f.data if f.data is not None else f.path.read_bytes()).hexdigest()


def _bundle(f: BundleFile) -> dict[str, Any]:
    return f.bundle if f.bundle is not None else load_bundle(f.path)[1]


def _push_all(
    client: FhirClient,
    found: _Found,
    options: PushOptions,
    journal: Journal,
    report: PushReport,
    observer: PushObserver,
    create_first: CreateFirst | None = None,
) -> None:
    gate = CreateGate()
    learned: list[int | None] = [options.max_entries]
    lock = threading.Lock()
    results: dict[int, BundleResult] = {}
    jobs = max(1, options.jobs)

    def one(n: int, f: BundleFile) -> BundleResult:
        name = f.path.name
        if f.problem is not None:
            return _refused(f)
        try:
            if f.data is not None and f.bundle is not None:
                data, bundle = f.data, f.bundle  # read and parsed once, by discovery
            else:
                data, bundle = load_bundle(f.path)
        except (OSError, ValueError, InputError) as exc:
            return BundleResult(file=name, status="failed", error=f"cannot read: {exc}")

        def limit() -> int | None:
            with lock:
                return learned[0]

        if f.parts:
            claimed = gate.claim(conditional_keys(bundle))
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
            raw=data,
            max_entries=limit(),
            auto_split=options.auto_split,
            journal=journal,
            observer=observer,
            _gate=gate,
            _limit=limit,
            _commit_later=True,
            _create_first=create_first,
        )
        if result.learned_limit and result.status == "pushed":
            # Only a limit the pieces were then accepted at: a refusal that merely read like
            # "too large" must not cut every later bundle of the run.
            with lock:
                learned[0] = min(learned[0] or result.learned_limit, result.learned_limit)
        observer.advanced(f.size)
        return result

    def named(n: int, f: BundleFile) -> BundleResult:
        with requests_for(f.path.name):  # the -vv request log names the bundle file
            return one(n, f)

    def finish(n: int, result: BundleResult) -> None:
        results[n] = result
        observer.finished(result)
        if result.unreachable and report.aborted is None:
            # The server went away: the remaining bundles would each wait out the retries.
            report.aborted = f"the server stopped answering: {result.error}"
        if journal.error is not None and report.aborted is None:
            # Nothing more can be recorded as confirmed: stop rather than redo it all later.
            report.aborted = f"the journal cannot be written: {journal.error}"
            client.stop()

    def committed(future: Future[None], batch: list[tuple[int, BundleResult]]) -> None:
        """Report a batch of bundles whose journal lines the workers wrote, now that the fsync
        covering them all is over: pushed, or failed when it did not succeed."""
        try:
            future.result()
        except JournalError as exc:
            for _, result in batch:
                result.status, result.error = "failed", f"the server confirmed it, but {exc}"
        for n, result in batch:
            result.journal_ticket = None
            finish(n, result)

    executor = ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="push")
    # The journal's fsyncs run on a thread of their own: neither the workers (on to their next
    # bundles) nor this loop (handing them out) wait for the disk; each fsync covers every line
    # written before it started, so the lines of the bundles done meanwhile share the next one.
    committer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="push-journal")
    # At most one fsync per SYNC_INTERVAL while bundles are in flight (each covers more lines:
    # less disk and kernel time); none waits once the run is winding down.
    winding_down = threading.Event()
    last_sync = [float("-inf")]

    def sync(ticket: int) -> None:
        winding_down.wait(last_sync[0] + SYNC_INTERVAL - time.monotonic())
        last_sync[0] = time.monotonic()
        journal.commit(ticket)

    pending: dict[Future[BundleResult], int] = {}
    stream = iter(found)
    ready: deque[tuple[int, BundleFile]] = deque()
    written: list[tuple[int, BundleResult]] = []  # lines written, no fsync started for them
    syncing: tuple[Future[None], list[tuple[int, BundleResult]]] | None = None
    more = True
    try:
        while more or ready or pending or written or syncing:
            # Discovery runs here, in step with the workers: ``jobs`` bundles in flight and as
            # many read ahead, so memory holds a few bundles, never the folder.
            while report.aborted is None and (ready or more) and len(pending) < jobs:
                if not ready:
                    item = next(stream, None)
                    if item is None:
                        more = False
                        break
                    ready.append(item)
                n, f = ready.popleft()
                pending[executor.submit(named, n, f)] = n
            while report.aborted is None and more and len(ready) < jobs:
                item = next(stream, None)
                if item is None:
                    more = False
                else:
                    ready.append(item)
            if report.aborted is not None and (more or ready):
                ready.clear()
                for _ in stream:  # every file left is accounted for (results below)
                    pass
                more = False
            if written and syncing is None:
                ticket = max(r.journal_ticket or 0 for _, r in written)
                syncing, written = (committer.submit(sync, ticket), written), []
            if not pending and not more and not ready:
                winding_down.set()  # the last lines: commit them now
            waiting: set[Future[Any]] = set(pending)
            if syncing is not None:
                waiting.add(syncing[0])
            if not waiting:
                break
            done, _ = wait(waiting, return_when=FIRST_COMPLETED)
            if syncing is not None and syncing[0] in done:
                committed(*syncing)
                syncing = None
            for future in done:
                if future not in pending:
                    continue
                n = pending.pop(future)
                try:
                    result = future.result()
                except AuthError as exc:
                    result = BundleResult(
                        file=found.files[n].path.name, status="failed", http_status=exc.status,
                        error=str(exc), issues=outcome_issues(exc.outcome),
                    )  # fmt: skip
                    report.aborted = f"the server refused the credentials: {exc}"
                    client.stop()
                if result.journal_ticket is not None:
                    written.append((n, result))
                else:
                    finish(n, result)
    except BaseException:
        client.stop()
        winding_down.set()
        executor.shutdown(wait=True, cancel_futures=True)
        committer.shutdown(wait=True)
        raise
    executor.shutdown(wait=True)
    committer.shutdown(wait=True)
    for n, f in enumerate(found.files):
        if n not in results:
            results[n] = BundleResult(
                file=f.path.name, status="failed", error="not attempted: the run was aborted"
            )
    report.results = [results[n] for n in range(len(found.files))]
