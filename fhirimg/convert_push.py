"""``convert --push``: convert and push study by study, keeping no bundle files.

Each study's bundle files are written to a private folder (``mkdtemp``: a new name, 0700, so no
link planted beforehand can be in its way) inside the output folder's state (``.fhirimg/tmp/``),
pushed at once with :func:`fhirimg.push.push_bundle` (Binaries beside the bundle are uploaded raw
first), and
deleted; the next study is only taken after that. Disk use follows one study, nothing is left
behind but ``report.json`` and the push journal, and a re-run skips what the journal says the
server already confirmed.

With ``--engine dask`` and ``concurrency`` (``--push-concurrency N``) the workers push instead
(docs/scale-out.md): each study is pushed by the worker that wrote it, right after writing it
(:func:`push_here`), with the same retries, and at most N transactions are in flight across the
cluster (a ``distributed.Semaphore`` named for the run). The client stays the journal's only
writer: the tasks get the digests it already holds for the server (skipped there, as here), and
send back the digests they pushed, which the client journals as each partition comes back. The
credentials travel inside the tasks' arguments only (:class:`WorkerPush`, whose ``repr`` hides
them); the workers hold them in memory while they run.
"""

from __future__ import annotations

import functools
import hashlib
import pickle
import shutil
import tempfile
import threading
import uuid
from collections.abc import Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from fhirimg import jsonio
from fhirimg.convert import (
    ConvertOptions,
    ConvertReport,
    Progress,
    StudyHook,
    StudyOutcome,
    convert,
)
from fhirimg.errors import ConfigError, FhirimgError
from fhirimg.folderlock import work_dir
from fhirimg.http import FhirClient
from fhirimg.http.client import requests_for
from fhirimg.push import (
    DEFAULT_JOURNAL_NAME,
    Journal,
    PushOptions,
    binaries_beside,
    push_bundle,
)
from fhirimg.push.capability import check_server
from fhirimg.safetext import redact_url, refuse_url_credentials


@dataclass(frozen=True, repr=False)
class WorkerPush:
    """What a Dask worker needs to push the studies it writes: the push options (the
    credentials among them: never logged, never in a task's key, hidden by ``repr``), the
    run's semaphore and its limit, and the bundle digests the client's journal holds for the
    server (pushed by an earlier run: skipped)."""

    push: PushOptions
    limit: int
    semaphore: str
    journaled: frozenset[str]

    def __repr__(self) -> str:
        return (
            f"WorkerPush(server={redact_url(self.push.server)!r}, limit={self.limit}, "
            f"semaphore={self.semaphore!r}, journaled={len(self.journaled)})"
        )


_semaphores: dict[str, Any] = {}  # per worker process: one per run, by name
_semaphores_lock = threading.Lock()


def _lease(wp: WorkerPush) -> AbstractContextManager[Any]:
    """The run's cluster-wide semaphore (created on first use by whichever side asks first;
    kept for the worker process's life: closing it would close it for every worker)."""
    from distributed import Semaphore

    with _semaphores_lock:
        if wp.semaphore not in _semaphores:
            made = Semaphore(max_leases=wp.limit, name=wp.semaphore)  # type: ignore[no-untyped-call]
            _semaphores[wp.semaphore] = made
        sem: AbstractContextManager[Any] = _semaphores[wp.semaphore]
        return sem


def push_here(wp: WorkerPush, outcome: StudyOutcome, folder: Path) -> StudyOutcome:
    """On a Dask worker: push one written study (its bundle, then its parts), each transaction
    under a lease of the run's semaphore, then delete its files. The outcome carries the
    digests pushed (``journal_lines``) for the client's journal."""
    client = wp.push.client()
    try:
        return _push_study(client, None, wp.push, outcome, folder, wp.journaled, _lease(wp))
    finally:
        client.close()


def convert_and_push(
    paths: Iterable[str | Path],
    options: ConvertOptions,
    push: PushOptions,
    progress: Progress | None = None,
    concurrency: int | None = None,
) -> ConvertReport:
    """Convert ``paths`` and push each study's bundle(s) to ``push.server`` as soon as written.

    ``concurrency`` (with ``options.cluster``): the Dask workers push, at most this many
    transactions at a time across the cluster (module docstring); else this process pushes.

    Every study in the report carries its push status ("pushed", "skipped", "failed: ...").
    Raises :class:`~fhirimg.errors.PushError` (or :class:`~fhirimg.errors.AuthError`) when the
    server cannot be used at all; a refused study is reported, and the run goes on.
    """
    options.check()
    refuse_url_credentials(
        push.server, "the FHIR server URL", "give credentials with --token, --user or --token-url"
    )
    if concurrency is not None and options.cluster is not None:
        try:
            pickle.dumps(push)  # as the tasks' arguments travel (cloudpickle pickles these so)
        except (pickle.PicklingError, TypeError) as exc:
            raise ConfigError(
                f"--push-concurrency: these credentials cannot be sent to the workers "
                f"({type(exc).__name__}); leave it out and this process pushes"
            ) from None
    out_dir = Path(options.out_dir)
    if not out_dir.is_dir():
        jsonio.make_folder(out_dir, options.modes)
    journal_path = push.journal or out_dir / DEFAULT_JOURNAL_NAME
    client = push.client()
    try:
        if push.check_server:
            # Before converting anything: unreachable server, refused credentials, a wrong base
            # URL, a server of another FHIR release than the one convert writes.
            release = options.fhir_version
            check_server(client, {release: f"convert --fhir-version {release}"})
        with (
            Journal(journal_path, ignore_existing=push.force, mode=options.modes) as journal,
            # In the folder's private state (0700), where a run killed meanwhile leaves it for
            # the next run to remove (fhirimg.folderlock.clean_leftovers), not in the folder.
            tempfile.TemporaryDirectory(prefix="stream-", dir=work_dir(out_dir)) as tmp,
        ):
            worker_push: StudyHook | None = None
            if concurrency is not None and options.cluster is not None:
                name = f"fhirimg-push-{uuid.uuid4().hex}"  # names no server, holds no secret
                known = journal.bundle_digests(client.base_url)
                worker_push = functools.partial(
                    push_here, WorkerPush(push, concurrency, name, known)
                )

            def send(outcome: StudyOutcome, folder: Path) -> StudyOutcome:
                if outcome.push is None:  # not pushed by a worker (e.g. --deidentify runs)
                    return _push_study(client, journal, push, outcome, folder)
                for sha, name, entries in outcome.journal_lines:
                    journal.record_bundle(client.base_url, sha, file=name, entries=entries)
                return replace(outcome, journal_lines=())

            return convert(
                paths,
                options,
                progress,
                on_study=send,
                bundle_dir=Path(tmp),
                worker_push=worker_push,
            )
    finally:
        client.close()


def _push_study(
    client: FhirClient,
    journal: Journal | None,
    push: PushOptions,
    outcome: StudyOutcome,
    folder: Path,
    journaled: frozenset[str] = frozenset(),
    lease: AbstractContextManager[Any] | None = None,
) -> StudyOutcome:
    """Push one written study (its bundle, then its parts, in order), then delete its files.

    Without a ``journal`` (on a Dask worker): a bundle whose digest is in ``journaled`` is
    skipped, each pushed one is named in the outcome's ``journal_lines``; each push holds
    ``lease`` while it runs."""
    names = [str(outcome.bundle), *outcome.parts]
    status, issues = "pushed", tuple[str, ...]()
    lines: list[tuple[str, str, int]] = []
    try:
        for name in names:
            path = folder / name
            bundle = jsonio.loads(path.read_bytes())
            try:
                binaries = binaries_beside(path, bundle)
            except FhirimgError as exc:
                status = f"failed: {exc}"
                break
            # the digest push_bundle journals a bundle by (the hash of its canonical JSON)
            sha = hashlib.sha256(jsonio.dumps(bundle)).hexdigest()
            if journal is None and sha in journaled:
                if status == "pushed" and name == names[0]:
                    status = "skipped"
                continue
            with requests_for(name), lease or nullcontext():  # -vv names the bundle file
                result = push_bundle(
                    client,
                    bundle,
                    binaries,
                    name=name,
                    sha256=sha,
                    max_entries=push.max_entries,
                    auto_split=push.auto_split,
                    journal=journal,
                )
            if result.status == "failed":
                where = f"HTTP {result.http_status}: " if result.http_status else ""
                status, issues = f"failed: {where}{result.error}", tuple(result.issues)
                break
            if result.status == "skipped" and status == "pushed" and name == names[0]:
                status = "skipped"
            if result.status == "pushed" and journal is None:
                lines.append((sha, name, result.entries))
    finally:
        for name in names:
            (folder / name).unlink(missing_ok=True)
            shutil.rmtree(folder / f"{Path(name).stem}.binaries", ignore_errors=True)
    return replace(outcome, push=status, push_issues=issues, journal_lines=tuple(lines))
