"""``watch``: keep an output folder (and a FHIR server) in step with DICOM folders that grow.

Studies reach an archive in pieces, file by file and series by series, often over a network share
where inotify sees nothing. So :func:`watch` polls: every ``interval`` seconds it walks the paths
(:func:`fhirimg.scan.iter_files`) and stats every file. What it does itself is only noticing:

1. a file is *new* when its (size, mtime) differs from what was handled before (or it was never
   handled); it is read once the same (size, mtime) is seen on two polls in a row, so a file still
   being copied is never read half-written;
2. its header is read (:func:`fhirimg.scan.read_file`, pure) to learn its Study Instance UID, and
   the study's last arrival time is now;
3. a study is *settled* once no new file of it has arrived for ``settle`` seconds; the settled
   studies are converted together by :func:`fhirimg.convert.convert`, given their new files: with
   the output folder's catalog, convert adds each study's earlier files and rewrites its bundle
   whole. (Where convert keeps no catalog, watch gives it every file of the study it has seen.)
4. with ``push``, the bundles written are pushed with :func:`fhirimg.push.push_paths`, which merges
   each ImagingStudy with the server's and keeps the journal; a push that fails is tried again
   ``settle`` seconds later, and the bundle stays in the output folder meanwhile.

Restart-safe: all state lives in the output folder. On start, the catalog
(``<out>/.fhirimg/catalog.sqlite``) says which files were converted already, with their size and
mtime; those are not read again. With ``push``, a bundle of the folder that the push journal has
not confirmed (the previous run stopped between writing and pushing) is pushed first.

One writer: the folder's :class:`~fhirimg.folderlock.FolderLock` is held from start to end, let go
only while :func:`~fhirimg.convert.convert` runs (which takes it itself), so a second ``watch`` or
a ``convert`` into the same folder is refused with a message naming this process.

Filters (``options.select``: ``--modality/--since/--patient``) are applied as ``convert`` applies
them, to whole studies, but by watch itself, on the headers it has read anyway: a settled study is
converted when the files of it read so far match (:meth:`~fhirimg.select.StudySelection.reason`),
and convert is called without them, so that it keeps its catalog and converts only what is new.
A study left out keeps its files in memory: a file arriving later (a CT series after the
localizer) may make it match, and then the whole study is converted. A study written once (by this
run, or in the catalog of an earlier one) is kept whole: its later files are converted whatever
they are (the dose SR after its CT). Files of studies left out are not in the catalog: a restarted
watch, and each ``once`` run, reads them again.

Stopping: set ``stop_event`` (the CLI does it on SIGINT / SIGTERM); the batch of studies being
converted and pushed is finished first. ``once``: one pass for cron, settle ignored: convert
everything under the paths now (exactly ``convert``), push, return.

Nothing here prints: each study handled is given to ``on_study`` as a :class:`StudyHandled`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from fhirimg import jsonio
from fhirimg.catalog import CATALOG_NAME, Catalog
from fhirimg.convert import ConvertOptions, ConvertReport, StudyOutcome, convert
from fhirimg.errors import FhirimgError, InputError, PushError
from fhirimg.exitcodes import ExitCode
from fhirimg.folderlock import STATE_DIR, FolderLock, FolderLockedError
from fhirimg.jsonio import JSON
from fhirimg.model import FileProblem, FileStatus, InstanceRecord
from fhirimg.push import PushOptions, push_paths
from fhirimg.push.capability import check_server
from fhirimg.safetext import refuse_url_credentials
from fhirimg.select import StudySelection
from fhirimg.walk import iter_files

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_INTERVAL",
    "DEFAULT_SETTLE",
    "StudyHandled",
    "WatchReport",
    "watch",
]

DEFAULT_SETTLE = 60.0
"""Seconds without a new file of a study before it is converted."""
DEFAULT_INTERVAL = 5.0
"""Seconds between two walks of the paths."""

_NO_STUDY = ""  # the group of files that gave no record (skipped, failed): reported, no bundle

Signature = tuple[int, int]
"""(size, mtime_ns) of a file: what tells a new or growing file from a handled one."""


@dataclass(frozen=True)
class StudyHandled:
    """One study converted (and pushed) by :func:`watch`: what its log line says.

    ``new_files``: files of the study read since it was last converted (None in ``once`` mode,
    where ``convert`` itself finds them). ``push``: None without ``push``, else "pushed",
    "skipped" (the journal had it), or "failed: <why>" (tried again later, the bundle is kept).
    ``action``: "converted", or "pushed" for a bundle written by an earlier run and pushed now.
    """

    study_instance_uid: str
    action: str
    status: str  # "written" or "failed"
    bundle: str | None
    parts: tuple[str, ...] = ()
    series: int = 0
    instances: int = 0
    new_files: int | None = None
    errors: int = 0
    push: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "written" and not (self.push or "").startswith("failed")

    def as_json(self) -> JSON:
        """The study's NDJSON line (``watch --json``): UIDs, counts and names, no patient data."""
        out: JSON = {
            "studyInstanceUid": self.study_instance_uid,
            "action": self.action,
            "status": self.status,
        }
        if self.bundle:
            out["bundle"] = self.bundle
        if self.parts:
            out["parts"] = list(self.parts)
        out["series"] = self.series
        out["instances"] = self.instances
        if self.new_files is not None:
            out["newFiles"] = self.new_files
        if self.errors:
            out["errors"] = self.errors
        if self.push is not None:
            out["push"] = self.push
        return out

    def line(self) -> str:
        """The study's log line (stderr): study UID, counts, bundle, pushed or not.

        >>> StudyHandled("1.2.3", "converted", "written", "study-x.json", series=2, instances=6,
        ...     new_files=1, push="pushed").line()
        'study 1.2.3: 1 new file(s), 6 instance(s) in 2 series -> study-x.json, pushed'
        """
        head = f"study {self.study_instance_uid}: "
        if self.new_files is not None:
            head += f"{self.new_files} new file(s), "
        if self.status != "written":
            return head + f"not written ({self.errors} error(s), see report.json)"
        text = f"{head}{self.instances} instance(s) in {self.series} series -> {self.bundle}"
        if self.parts:
            text += f" (+{len(self.parts)} part file(s))"
        if self.action == "pushed":
            text = f"study {self.study_instance_uid}: {self.bundle} (written before)"
        return text + (f", {self.push}" if self.push is not None else ", not pushed")


@dataclass
class WatchReport:
    """What a :func:`watch` run did. ``exit_code``: in ``once`` mode convert's (1 when a push
    failed too); otherwise 0 (failures were reported study by study)."""

    out_dir: Path
    once: bool = False
    converted: int = 0
    failed: int = 0
    pushed: int = 0
    push_failed: int = 0
    convert_exit: ExitCode = ExitCode.OK

    @property
    def exit_code(self) -> ExitCode:
        if not self.once:
            return ExitCode.OK
        if self.convert_exit != ExitCode.OK or self.push_failed:
            return max(self.convert_exit, ExitCode.PARTIAL)
        return ExitCode.OK

    def count(self, event: StudyHandled) -> None:
        if event.action == "converted":
            if event.status == "written":
                self.converted += 1
            else:
                self.failed += 1
        if event.push == "pushed":
            self.pushed += 1
        elif event.push is not None and event.push.startswith("failed"):
            self.push_failed += 1

    def summary(self) -> JSON:
        return {
            "output": str(self.out_dir),
            "studies": {"converted": self.converted, "failed": self.failed},
            "pushed": {"pushed": self.pushed, "failed": self.push_failed},
            "exitCode": int(self.exit_code),
        }


OnStudy = Callable[[StudyHandled], None]


def watch(
    paths: Sequence[str | Path],
    options: ConvertOptions,
    *,
    settle: float = DEFAULT_SETTLE,
    interval: float = DEFAULT_INTERVAL,
    once: bool = False,
    push: PushOptions | None = None,
    stop_event: threading.Event | None = None,
    on_study: OnStudy | None = None,
) -> WatchReport:
    """Convert (and push) the studies under ``paths`` as they arrive, until ``stop_event`` is set;
    with ``once``, one pass over everything there now.

    Raises :class:`~fhirimg.errors.ConfigError` for bad options,
    :class:`~fhirimg.folderlock.FolderLockedError` when another process writes to the output
    folder, :class:`~fhirimg.errors.PushError` when the push server cannot be used at the start,
    :class:`~fhirimg.catalog.CatalogError` for an unusable catalog, ``OSError`` when the output
    folder cannot be written. Later push failures are reported per study and retried.

    >>> import tempfile
    >>> out = Path(tempfile.mkdtemp())
    >>> watch([out / "nothing-yet"], ConvertOptions(out_dir=out, jobs=1), once=True).exit_code
    <ExitCode.PARTIAL: 1>
    """
    options.check()
    if settle < 0 or interval <= 0:
        raise ValueError("settle must be >= 0 and interval > 0")
    if push is not None:
        refuse_url_credentials(
            push.server,
            "the FHIR server URL",
            "give credentials with --token, --user or --token-url",
        )
    run = _Watcher(
        [Path(p) for p in paths],
        options,
        settle=settle,
        push=push,
        stop=stop_event or threading.Event(),
        on_study=on_study or (lambda event: None),
        report=WatchReport(Path(options.out_dir), once=once),
    )
    with run.holding_lock():
        if push is not None and push.check_server:
            _check_server(push, options.fhir_version)
        if once:
            run.once()
        else:
            run.loop(interval)
    return run.report


def _check_server(push: PushOptions, release: str) -> None:
    """Fail at the start, not at the first settled study, when the server cannot be used: not
    reachable, credentials refused, no FHIR server at the URL, or one of another release than
    ``release``, the one the studies are converted to (:mod:`fhirimg.push.capability`)."""
    client = push.client()
    try:
        check_server(client, {release: f"watch --fhir-version {release}"})
    finally:
        client.close()


@dataclass
class _Study:
    """A study with files read and not converted yet (without a catalog: every file seen)."""

    files: set[str] = field(default_factory=set)
    new: int = 0  # files read since the last conversion
    last_arrival: float = 0.0
    due: bool = False
    # What the filters look at, one record per distinct (Modality, Study Date, Patient ID): a
    # study's files are tracked, not its records (memory follows the number of files).
    traits: dict[tuple[str | None, str | None, str | None], InstanceRecord] = field(
        default_factory=dict
    )


class _Watcher:
    """The state of one :func:`watch` run (the loop's bookkeeping, nothing persistent)."""

    def __init__(
        self,
        roots: list[Path],
        options: ConvertOptions,
        *,
        settle: float,
        push: PushOptions | None,
        stop: threading.Event,
        on_study: OnStudy,
        report: WatchReport,
    ) -> None:
        self.roots = roots
        # The filters are watch's to apply (per study, on the headers it reads): convert, given
        # only the studies that match, keeps its catalog and reads only what is new.
        self.select = options.select
        self.options = replace(options, select=StudySelection())
        self.written: set[str] = set()  # studies with a bundle: kept whole, filters or not
        self.out = Path(options.out_dir)
        self.settle = settle
        self.push = push
        self.stop = stop
        self.on_study = on_study
        self.report = report
        self.handled: dict[str, Signature] = {}  # abspath -> signature when read or catalogued
        self.seen: dict[str, Signature] = {}  # abspath -> signature at the last poll, not read
        self.studies: dict[str, _Study] = {}
        self.unpushed: dict[str, tuple[str, float]] = {}  # bundle -> (study, when to retry)
        self.lock: FolderLock | None = None

    # --- the folder lock: held while idle, let go while convert (which takes it) runs ---

    @contextlib.contextmanager
    def holding_lock(self) -> Iterator[None]:
        if not self.out.is_dir():
            jsonio.make_folder(self.out, self.options.modes)
        self.lock = FolderLock(self.out).acquire()  # another writer: FolderLockedError
        try:
            yield
        finally:
            if self.lock is not None:
                self.lock.release()
                self.lock = None

    @contextlib.contextmanager
    def lock_released(self) -> Iterator[None]:
        if self.lock is not None:
            self.lock.release()
            self.lock = None
        try:
            yield
        finally:
            try:
                self.lock = FolderLock(self.out).acquire()
            except FolderLockedError:  # someone took it meanwhile: run unlocked, retry next poll
                log.info("output folder %s taken by another process meanwhile", self.out)

    # --- once ---

    def once(self) -> None:
        if self.select.active:
            self._once_selected()
            return
        outcomes: list[StudyOutcome] = []
        report = self._convert(self.roots, outcomes)
        # An idle watch folder is normal: convert's "nothing to do" (4) is 0 here (docs/cli.md).
        code = report.exit_code
        self.report.convert_exit = ExitCode.OK if code == ExitCode.NOTHING_DONE else code
        failed = [s for s in report.studies if not s.ok]
        events = [self._event(o, None) for o in _unique(outcomes + failed)]
        self._push_and_tell(events, catch_up=True)

    def _once_selected(self) -> None:
        """``once`` with filters: read every file the catalog does not list unchanged, convert
        the studies that match (as the loop does, settle ignored)."""
        self._load_catalog()
        now = time.monotonic()
        for key, sig in self._unhandled():
            self._read(key, sig, now)
        uids = self._selected(list(self.studies))
        files = sorted({f for uid in uids for f in self.studies[uid].files})
        if not files:
            self.report.convert_exit = ExitCode.OK  # nothing new that matches: an idle folder
            return
        outcomes: list[StudyOutcome] = []
        report = self._convert(files, outcomes)
        code = report.exit_code
        self.report.convert_exit = ExitCode.OK if code == ExitCode.NOTHING_DONE else code
        failed = [s for s in report.studies if not s.ok]
        events = [
            self._event(o, len(self.studies[o.study_instance_uid].files))
            if o.study_instance_uid in self.studies
            else self._event(o, None)
            for o in _unique(outcomes + failed)
        ]
        self._push_and_tell(events, catch_up=True)

    def _selected(self, uids: list[str]) -> list[str]:
        """The studies of ``uids`` to convert: those the filters keep, the files that gave no
        study (convert reports them), and studies written before. The others wait, with their
        files, for a file that makes them match."""
        if not self.select.active:
            return uids
        kept = []
        for uid in uids:
            study = self.studies[uid]
            why = None
            if uid != _NO_STUDY and uid not in self.written:
                why = self.select.reason(study.traits.values())
            if why is None:
                kept.append(uid)
                continue
            log.info("study %s: %s: %d file(s) not converted", uid, why, len(study.files))
            study.due = False  # until a file of it arrives; its files count as new till then
        return kept

    # --- the loop ---

    def loop(self, interval: float) -> None:
        self._load_catalog()
        if self.push is not None:
            self._push_and_tell([], catch_up=True)
        while not self.stop.is_set():
            started = time.monotonic()
            self._poll()
            if self.lock is None:
                with contextlib.suppress(FolderLockedError):
                    self.lock = FolderLock(self.out).acquire()
            due = [
                uid
                for uid, study in self.studies.items()
                if study.due and started - study.last_arrival >= self.settle
            ]
            due = self._selected(due)
            if due and not self.stop.is_set():
                self._convert_studies(due)
            self._retry_pushes()
            self.stop.wait(max(0.0, interval - (time.monotonic() - started)))

    def _load_catalog(self) -> None:
        """What earlier runs converted: files the catalog holds with an outcome, unchanged since."""
        if not (self.out / STATE_DIR / CATALOG_NAME).is_file():
            return
        with Catalog.open(self.out) as catalog:
            for entry in catalog.entries():
                if entry.status is None or entry.size is None or entry.mtime_ns is None:
                    continue  # read by a run that stopped before writing its study: read again
                self.handled[os.path.abspath(entry.path)] = (entry.size, entry.mtime_ns)
                if entry.status == FileStatus.CONVERTED and entry.study_instance_uid:
                    self.written.add(entry.study_instance_uid)
        log.info("catalog: %d file(s) converted by earlier runs", len(self.handled))

    def _study(self, uid: str) -> _Study:
        return self.studies.setdefault(uid, _Study())

    def _unhandled(self) -> Iterator[tuple[str, Signature]]:
        """Walk the paths: each regular file not handled with its present size and mtime."""
        for path in iter_files(self.roots, exclude=[self.out]):
            if self.stop.is_set():
                break  # a long first walk (a backlog) need not end before stopping
            key = os.path.abspath(path)
            try:
                st = os.stat(key)
            except OSError:
                continue  # gone, or a path that never existed (convert reports those)
            if not stat.S_ISREG(st.st_mode):
                continue
            sig = (st.st_size, st.st_mtime_ns)
            if self.handled.get(key) != sig:
                yield key, sig

    def _poll(self) -> None:
        """Walk the paths; read the files that are new and the same size and mtime as at the
        last poll (no longer being written)."""
        now = time.monotonic()
        current: dict[str, Signature] = {}
        for key, sig in self._unhandled():
            if self.seen.get(key) != sig:
                current[key] = sig  # new or still growing: look again next poll
                continue
            self._read(key, sig, now)
        self.seen = current

    def _read(self, key: str, sig: Signature, now: float) -> None:
        from fhirimg.scan import read_file  # pydicom, once the first file arrives

        result = read_file(key)
        uid = _NO_STUDY if isinstance(result, FileProblem) else result.study_instance_uid
        study = self._study(uid)
        if not isinstance(result, FileProblem):
            trait = (result.modality, result.study_date, result.patient_id)
            study.traits.setdefault(trait, result)
        study.files.add(key)
        study.new += 1
        study.last_arrival = now
        study.due = True
        self.handled[key] = sig

    def _convert_studies(self, uids: list[str]) -> None:
        files = sorted({f for uid in uids for f in self.studies[uid].files if os.path.lexists(f)})
        if not files:
            for uid in uids:
                self.studies[uid].due = False
            return
        outcomes: list[StudyOutcome] = []
        try:
            report = self._convert(files, outcomes)
        except FolderLockedError as exc:  # a convert into our folder: try again next poll
            log.warning("%s", exc)
            return
        wanted = set(uids)
        failed = [s for s in report.studies if not s.ok and s.study_instance_uid in wanted]
        events = []
        for outcome in _unique(outcomes + failed):
            study = self.studies.get(outcome.study_instance_uid)
            events.append(self._event(outcome, study.new if study is not None else 0))
        # With the catalog, convert knows each study's earlier files: only new ones are given
        # next time, and nothing is kept here. Without it, every file of the study is given.
        incremental = (self.out / STATE_DIR / CATALOG_NAME).is_file()
        self.written.update(o.study_instance_uid for o in outcomes if o.ok)
        for uid in uids:
            if incremental:
                del self.studies[uid]
            else:
                self.studies[uid].due = False
                self.studies[uid].new = 0
        self._push_and_tell(events, catch_up=False)

    def _convert(self, paths: Iterable[str | Path], outcomes: list[StudyOutcome]) -> ConvertReport:
        def seen(outcome: StudyOutcome, folder: Path) -> StudyOutcome:
            outcomes.append(outcome)
            return outcome

        with self.lock_released():
            return convert(list(paths), self.options, on_study=seen)

    def _event(self, outcome: StudyOutcome, new_files: int | None) -> StudyHandled:
        return StudyHandled(
            study_instance_uid=outcome.study_instance_uid,
            action="converted",
            status="written" if outcome.ok else "failed",
            bundle=outcome.bundle,
            parts=outcome.parts,
            series=outcome.series,
            instances=outcome.instances,
            new_files=new_files,
            errors=len(outcome.errors),
        )

    # --- pushing ---

    def _push_and_tell(self, events: list[StudyHandled], *, catch_up: bool) -> None:
        """Push the bundles of ``events`` (with ``catch_up``, every bundle of the folder the
        journal has not confirmed), then hand each event to ``on_study``."""
        if self.push is not None:
            names = [e.bundle for e in events if e.bundle is not None]
            if names or catch_up:
                results = self._push(names, whole_folder=catch_up)
                events = [
                    replace(e, push=results.pop(e.bundle)) if e.bundle in results else e
                    for e in events
                ]
                for name, status in results.items():  # bundles of earlier runs
                    if status != "skipped":
                        events.append(self._earlier(name, status))
        for event in events:
            self.report.count(event)
            if event.push is not None and event.push.startswith("failed") and event.bundle:
                retry = time.monotonic() + max(self.settle, 1.0)
                self.unpushed[event.bundle] = (event.study_instance_uid, retry)
            elif event.bundle:
                self.unpushed.pop(event.bundle, None)
            log.info("%s", event.line())
            self.on_study(event)

    def _push(self, names: list[str], *, whole_folder: bool = False) -> dict[str, str]:
        """Push these bundle files of the output folder (``whole_folder``: every bundle there,
        the journal skipping what the server confirmed); the status of each, by file name. A
        server that cannot be used fails the named ones (tried again later)."""
        assert self.push is not None
        targets = [self.out] if whole_folder else [self.out / n for n in names]
        try:
            report = push_paths(targets, self.push)
        except InputError:
            return {}  # no bundle in the folder yet
        except PushError as exc:
            return dict.fromkeys(names, f"failed: {exc}")
        out = {}
        for result in report.results:
            if result.status == "failed":
                where = f"HTTP {result.http_status}: " if result.http_status else ""
                out[result.file] = f"failed: {where}{result.error}"
            else:
                out[result.file] = str(result.status)
        return out

    def _retry_pushes(self) -> None:
        now = time.monotonic()
        due = [name for name, (_, when) in self.unpushed.items() if when <= now]
        if not due or self.stop.is_set():
            return
        events = [
            StudyHandled(self.unpushed[n][0], "pushed", "written", n, push="failed: not yet")
            for n in due
            if (self.out / n).is_file()
        ]
        for name in due:
            self.unpushed.pop(name, None)
        if events:
            self._push_and_tell(events, catch_up=False)

    def _earlier(self, name: str, status: str) -> StudyHandled:
        """The event of a bundle an earlier run wrote, pushed (or refused) now."""
        return StudyHandled(_study_uid_of(self.out / name), "pushed", "written", name, push=status)


def _unique(outcomes: list[StudyOutcome]) -> list[StudyOutcome]:
    """One outcome per study (the first), in order."""
    first: dict[str, StudyOutcome] = {}
    for outcome in outcomes:
        first.setdefault(outcome.study_instance_uid, outcome)
    return list(first.values())


def _study_uid_of(path: Path) -> str:
    """The Study Instance UID of a bundle file, from its ImagingStudy's ``urn:dicom:uid``
    identifier ("?" when it has none)."""
    try:
        bundle: Any = jsonio.loads(path.read_bytes())
        for entry in bundle.get("entry") or []:
            resource = entry.get("resource") or {}
            if resource.get("resourceType") != "ImagingStudy":
                continue
            for identifier in resource.get("identifier") or []:
                if identifier.get("system") == "urn:dicom:uid":
                    return str(identifier.get("value", "?")).removeprefix("urn:oid:")
    except (OSError, ValueError, AttributeError, FhirimgError):
        pass
    return "?"
