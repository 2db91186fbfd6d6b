"""``convert``: DICOM files and folders to one FHIR transaction Bundle per study, plus a report.

The pipeline is scan -> group -> map -> bundle -> validate -> write:

1. :func:`fhirimg.scan.iter_files` walks the inputs; :func:`fhirimg.scan.read_file` (pure, one
   file) reads each header, in a process pool when ``jobs > 1``;
2. :class:`fhirimg.group.StudyIndex` groups records by Study Instance UID, spilling to disk, and
   settles duplicate SOP Instance UIDs;
3. each study becomes a Bundle (:func:`fhirimg.bundle.study_bundle`), is validated, and is written
   atomically; a bundle that does not validate is never written. With ``binary`` and/or ``media``
   the study goes through the pixel study writer, :func:`fhirimg.images.writer.write_study`,
   instead, which streams Binary and rendered-image entries after the same head, split at
   ``max_entries`` / ``max_bundle_mb`` (the choice is :func:`_study_writer`);
4. ``report.json`` accounts for every input file: converted, skipped, duplicate or failed.

Nothing here prints: progress goes to an optional callback, results come back as a
:class:`ConvertReport`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from fhirimg import ids, jsonio
from fhirimg.bundle import remove_stale_parts, study_bundle
from fhirimg.errors import ConfigError
from fhirimg.exitcodes import ExitCode
from fhirimg.fhir import release as get_release
from fhirimg.group import PackedRecord, StudyIndex, unpack
from fhirimg.images.binary import BinaryMode
from fhirimg.images.rendered import MediaOptions
from fhirimg.images.writer import PixelOptions, write_study
from fhirimg.jsonio import JSON
from fhirimg.mapping import MapOptions
from fhirimg.model import FileProblem, FileStatus, InstanceRecord
from fhirimg.safetext import refuse_url_credentials
from fhirimg.scan import iter_files, read_file
from fhirimg.validate import resource_errors

DEFAULT_OUT = Path("fhirimg-out")
REPORT_NAME = "report.json"
_BATCH = 64  # files per task sent to a worker process

Progress = Callable[[str, int, int | None], None]
"""``progress(stage, advance, total)``: stage is "read" (files) or "write" (studies)."""


@dataclass(frozen=True)
class ConvertOptions:
    """Options of a conversion (the CLI's flags, as data)."""

    out_dir: Path = DEFAULT_OUT
    fhir_version: str = "r4"
    mapping: MapOptions = field(default_factory=MapOptions)
    jobs: int | None = None
    """Worker processes; None = all cores, 1 = this process only (same output either way)."""
    binary: BinaryMode | None = None
    """One Binary per instance with the DICOM bytes: inline (base64 in the bundle) or beside
    (``<bundle stem>.binaries/<id>.dcm``); None = no Binary."""
    media: MediaOptions | None = None
    """A rendered image per instance or series (R4 Media, R5 DocumentReference); None = none."""
    max_entries: int | None = None
    """Split a study's Binary/image entries so that no bundle file has more entries."""
    max_bundle_mb: float | None = None
    """Split a study's Binary/image entries so that no bundle file is larger (MB = 10^6 bytes)."""
    strict: bool = False
    """Validate every bundle with all layers of :mod:`fhirimg.validate` (FHIRPath invariants
    too) before writing it; by default the fast layers (JSON, models, HL7 JSON Schema, bundle
    integrity, imaging rules)."""
    group_readable: bool = False
    """Write files 0640 and folders 0750 (a shared research folder); by default what holds
    patient data is owner-only: files 0600, the folders fhirimg creates 0700."""

    @property
    def modes(self) -> jsonio.Modes:
        """The permissions of what this conversion writes (:class:`fhirimg.jsonio.Modes`)."""
        return jsonio.modes(self.group_readable)

    def check(self) -> None:
        """Raise :class:`~fhirimg.errors.ConfigError` for options that cannot be used: a bad
        release, bad split limits, a DICOMweb URL holding credentials (it would be written into
        every bundle's Endpoint)."""
        get_release(self.fhir_version)
        self.pixels()
        refuse_url_credentials(
            self.mapping.dicomweb_url,
            "the DICOMweb URL",
            "give the PACS credentials with the --dicomweb-* options",
        )

    def pixels(self) -> PixelOptions:
        """The Binary / rendered-image / split options for the pixel study writer
        (:func:`fhirimg.images.writer.write_study`)."""
        if self.max_entries is not None and self.max_entries < 1:
            raise ConfigError("max_entries must be at least 1")
        if self.max_bundle_mb is not None and self.max_bundle_mb <= 0:
            raise ConfigError("max_bundle_mb must be more than 0")
        return PixelOptions(
            binary=BinaryMode(self.binary) if self.binary is not None else None,
            media=self.media,
            max_entries=self.max_entries,
            max_bytes=(
                int(self.max_bundle_mb * 1_000_000) if self.max_bundle_mb is not None else None
            ),
            strict=self.strict,
            modes=self.modes,
        )


@dataclass(frozen=True)
class StudyOutcome:
    """What became of one study."""

    study_instance_uid: str
    bundle: str | None  # file name in out_dir, None when not written
    series: int
    instances: int
    warnings: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()
    parts: tuple[str, ...] = ()
    """Further bundle files of a split study (``<stem>.part-2.json``, ...), in push order."""
    binaries: int | None = None  # None: Binaries not asked for
    media: int | None = None  # None: rendered images not asked for
    media_failures: tuple[tuple[str, str], ...] = ()
    """(path, reason) of image files that could not be rendered; the study is still written."""
    push: str | None = None
    """With ``convert --push``: "pushed", "skipped" (the journal had it) or "failed: <why>"."""
    push_issues: tuple[str, ...] = ()
    """The server's OperationOutcome issues when the push failed."""

    @property
    def push_failed(self) -> bool:
        return self.push is not None and self.push.startswith("failed")

    @property
    def ok(self) -> bool:
        return self.bundle is not None

    def as_json(self) -> JSON:
        out: JSON = {
            "studyInstanceUid": self.study_instance_uid,
            "status": "written" if self.ok else "failed",
        }
        if self.bundle:
            out["bundle"] = self.bundle
        if self.parts:
            out["parts"] = list(self.parts)
        out["series"] = self.series
        out["instances"] = self.instances
        if self.binaries is not None:
            out["binaries"] = self.binaries
        if self.media is not None:
            out["renderedImages"] = self.media
        if self.media_failures:
            out["renderFailures"] = [{"path": p, "reason": r} for p, r in self.media_failures]
        if self.push is not None:
            out["push"] = self.push
        if self.push_issues:
            out["pushIssues"] = list(self.push_issues)
        if self.warnings:
            out["warnings"] = list(self.warnings)
        if self.errors:
            out["errors"] = list(self.errors)
        return out


@dataclass
class ConvertReport:
    """The result of :func:`convert`: counts per file status and the studies' outcomes."""

    out_dir: Path
    files: dict[str, int]
    studies: list[StudyOutcome]
    failures: list[tuple[str, str]] = field(default_factory=list)
    """The first failed files (path, reason); all of them are in report.json."""

    @property
    def render_failures(self) -> list[tuple[str, str]]:
        """Image files converted but not rendered (path, reason)."""
        return [f for s in self.studies for f in s.media_failures]

    @property
    def exit_code(self) -> ExitCode:
        failed = self.files.get(FileStatus.FAILED.value, 0)
        if failed or any(not s.ok or s.media_failures or s.push_failed for s in self.studies):
            return ExitCode.PARTIAL
        return ExitCode.OK

    def summary(self) -> JSON:
        return {
            "output": str(self.out_dir),
            "files": {"total": sum(self.files.values()), **self.files},
            "studies": {
                "total": len(self.studies),
                "written": sum(1 for s in self.studies if s.ok),
                "failed": sum(1 for s in self.studies if not s.ok),
            },
            **self._pixel_summary(),
            "exitCode": int(self.exit_code),
        }

    def _pixel_summary(self) -> JSON:
        """Counts of Binaries, rendered images and bundle parts (only when asked for)."""
        out: JSON = {}
        if any(s.parts for s in self.studies):
            out["bundleFiles"] = sum(1 + len(s.parts) for s in self.studies if s.ok)
        if any(s.binaries is not None for s in self.studies):
            out["binaries"] = sum(s.binaries or 0 for s in self.studies)
        if any(s.push is not None for s in self.studies):
            pushed = [s.push for s in self.studies if s.push is not None]
            out["pushed"] = {
                "pushed": pushed.count("pushed"),
                "skipped": pushed.count("skipped"),
                "failed": sum(1 for p in pushed if p.startswith("failed")),
            }
        if any(s.media is not None for s in self.studies):
            out["renderedImages"] = {
                "written": sum(s.media or 0 for s in self.studies),
                "failed": sum(len(s.media_failures) for s in self.studies),
            }
        return out


def build_study(
    records: list[InstanceRecord], mapping: MapOptions, fhir_version: str, strict: bool = False
) -> tuple[JSON, StudyOutcome]:
    """Build and validate one study's bundle. Pure: returns the bundle and its outcome.

    The outcome has ``errors`` (and the bundle must not be written) when validation fails.
    """
    release = get_release(fhir_version)
    bundle, notes = study_bundle(records, mapping, release)
    study = bundle["entry"][-1]["resource"]
    errors = resource_errors(bundle, release.name, strict)
    uid = records[0].study_instance_uid
    outcome = StudyOutcome(
        study_instance_uid=uid,
        bundle=None if errors else ids.bundle_name(uid),
        series=int(study["numberOfSeries"]),
        instances=int(study["numberOfInstances"]),
        warnings=tuple(notes.items),
        errors=tuple(errors),
    )
    return bundle, outcome


StudyWriter = Callable[[list[InstanceRecord], MapOptions, str, Path, PixelOptions], StudyOutcome]
"""Writes one study's bundle file(s) into a folder and says what became of the study."""


def _study_writer(pixels: PixelOptions) -> StudyWriter:
    """The one decision between the two study writers.

    Without Binaries and rendered images (the default), :func:`_write_plain_study`: a study is a
    Patient, an Endpoint and an ImagingStudy, small enough to build, validate and write whole, in
    memory, as one bundle. With ``binary`` and/or ``media`` (:attr:`PixelOptions.active`),
    :func:`_write_pixel_study`: the DICOM bytes and rendered images grow with the study, so the
    pixel study writer streams them entry by entry after the same head and may split the bundle
    into parts (``max_entries`` / ``max_bundle_mb``).
    """
    return _write_pixel_study if pixels.active else _write_plain_study


def _write_study(
    blobs: list[bytes],
    mapping: MapOptions,
    fhir_version: str,
    out_dir: str,
    pixels: PixelOptions,
) -> StudyOutcome:
    """Worker task: build, validate and (when valid) atomically write one study's bundle(s).

    Takes the study's records as pickled blobs (:class:`fhirimg.group.PackedRecord`), so the
    process that grouped them never had to unpickle them.
    """
    records = unpack(blobs)
    return _study_writer(pixels)(records, mapping, fhir_version, Path(out_dir), pixels)


def _write_plain_study(
    records: list[InstanceRecord],
    mapping: MapOptions,
    fhir_version: str,
    out_dir: Path,
    pixels: PixelOptions,
) -> StudyOutcome:
    """The plain study writer: one bundle built in memory (:func:`build_study`), written when
    valid; ``pixels`` only says how strictly to validate."""
    try:
        bundle, outcome = build_study(records, mapping, fhir_version, strict=pixels.strict)
    except Exception as exc:  # a mapping bug must cost one study, not the run
        uid = records[0].study_instance_uid
        return StudyOutcome(
            uid, None, 0, len(records), errors=(f"internal error: {type(exc).__name__}: {exc}",)
        )
    if outcome.bundle:
        jsonio.atomic_write(out_dir / outcome.bundle, jsonio.dumps(bundle), mode=pixels.modes)
        remove_stale_parts(out_dir, outcome.bundle)
    return outcome


def _write_pixel_study(
    records: list[InstanceRecord],
    mapping: MapOptions,
    fhir_version: str,
    out_dir: Path,
    pixels: PixelOptions,
) -> StudyOutcome:
    """The pixel study writer (:func:`fhirimg.images.writer.write_study`): Binaries and/or
    rendered images streamed after the head, possibly over several part files."""
    uid = records[0].study_instance_uid
    series = len({r.series_instance_uid for r in records})
    try:
        files = write_study(records, mapping, fhir_version, out_dir, pixels)
    except Exception as exc:  # an unreadable file or a bug costs one study, not the run
        return StudyOutcome(
            uid, None, series, len(records), errors=(f"{type(exc).__name__}: {exc}",)
        )
    ok = not files.errors and bool(files.bundles)
    return StudyOutcome(
        study_instance_uid=uid,
        bundle=files.bundles[0] if ok else None,
        series=series,
        instances=len(records),
        warnings=tuple(dict.fromkeys(files.warnings)),
        errors=tuple(files.errors),
        parts=tuple(files.bundles[1:]) if ok else (),
        binaries=files.binaries if pixels.binary is not None else None,
        media=files.media if pixels.media is not None else None,
        media_failures=tuple(files.media_failures),
    )


def _read_batch(paths: list[str]) -> list[PackedRecord | FileProblem]:
    """Worker task: read a batch of files; records come back packed (pickled once, here)."""
    out: list[PackedRecord | FileProblem] = []
    for path in paths:
        item = read_file(path)
        out.append(item if isinstance(item, FileProblem) else PackedRecord.of(item))
    return out


T = TypeVar("T")


def _batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _bounded(
    executor: Executor | None, fn: Callable[..., T], jobs: Iterable[tuple[Any, ...]], window: int
) -> Iterator[T]:
    """Run ``fn(*args)`` for each args tuple, at most ``window`` in flight; results in order.

    Without an executor, runs inline. Bounded submission keeps memory flat however many tasks.
    """
    if executor is None:
        for args in jobs:
            yield fn(*args)
        return
    pending: list[Future[T]] = []
    for args in jobs:
        pending.append(executor.submit(fn, *args))
        if len(pending) >= window:
            yield pending.pop(0).result()
    for fut in pending:
        yield fut.result()


def resolve_jobs(jobs: int | None) -> int:
    """``None`` or 0 means all cores."""
    return max(1, jobs or os.cpu_count() or 1)


def convert(
    paths: Iterable[str | Path],
    options: ConvertOptions | None = None,
    progress: Progress | None = None,
    *,
    on_study: StudyHook | None = None,
    bundle_dir: Path | None = None,
) -> ConvertReport:
    """Convert DICOM files/folders to per-study transaction Bundles in ``options.out_dir``.

    Returns the report (also written as ``report.json``). Never raises for bad input files; raises
    :class:`~fhirimg.errors.ConfigError` for bad options and ``OSError`` when the output folder
    cannot be written.
    """
    opts = options or ConvertOptions()
    out_dir = Path(opts.out_dir)
    inputs = [Path(p) for p in paths]
    jobs = resolve_jobs(opts.jobs)
    total = sum(1 for _ in iter_files(inputs, exclude=[out_dir])) if progress else None

    def read_all(executor: Executor | None) -> Iterator[list[PackedRecord | FileProblem]]:
        batches = ((b,) for b in _batched(iter_files(inputs, exclude=[out_dir]), _BATCH))
        for results in _bounded(executor, _read_batch, batches, window=jobs * 4):
            if progress:
                progress("read", len(results), total)
            yield results

    return convert_records(read_all, opts, progress, on_study=on_study, bundle_dir=bundle_dir)


RecordSource = Callable[
    [Executor | None], Iterable[Sequence[InstanceRecord | PackedRecord | FileProblem]]
]
"""Gives batches of reading results; may use the executor it is handed to read in parallel."""

StudyHook = Callable[[StudyOutcome, Path], StudyOutcome]
"""Called in the main process for each study written (``outcome``, the folder its bundle files
are in), before the next study is taken; returns the outcome to report (e.g. with push status).
``convert --push`` pushes and deletes the files here."""


def convert_records(
    source: RecordSource,
    options: ConvertOptions | None = None,
    progress: Progress | None = None,
    *,
    on_study: StudyHook | None = None,
    bundle_dir: Path | None = None,
) -> ConvertReport:
    """The pipeline after reading: group the records ``source`` yields by study, build, validate
    and write each study's bundle, and write ``report.json``.

    :func:`convert` feeds it records read from files; other sources (a DICOMweb server's metadata)
    feed it records built the same way, and get the same bundles. Bundles go to ``bundle_dir``
    (default: the output folder, where ``report.json`` always goes); ``on_study`` sees each
    written study before the next one is taken.
    """
    opts = options or ConvertOptions()
    opts.check()  # fail early on bad options
    pixels = opts.pixels()
    out_dir = Path(opts.out_dir)
    files_dir = bundle_dir or out_dir
    for folder in (out_dir, files_dir):
        if not folder.is_dir():  # made owner-only; an existing one (or a link to one) is kept
            jsonio.make_folder(folder, opts.modes)
    jobs = resolve_jobs(opts.jobs)
    executor = ProcessPoolExecutor(max_workers=jobs) if jobs > 1 else None
    try:
        with StudyIndex() as index:
            for results in source(executor):
                index.add_many(results)
            index.resolve_duplicates()

            outcomes: list[StudyOutcome] = []
            uids = index.study_uids()
            tasks = (
                (index.blobs(uid), opts.mapping, opts.fhir_version, str(files_dir), pixels)
                for uid in uids
            )
            for outcome in _bounded(executor, _write_study, tasks, window=jobs * 2):
                if on_study is not None and outcome.ok:
                    outcome = on_study(outcome, files_dir)
                paths_of_study = index.study_paths(outcome.study_instance_uid)
                if outcome.ok:
                    index.set_outcome(paths_of_study, FileStatus.CONVERTED, str(outcome.bundle))
                else:
                    reason = "study not converted: " + "; ".join(outcome.errors[:3])
                    index.set_outcome(paths_of_study, FileStatus.FAILED, reason)
                outcomes.append(outcome)
                if progress:
                    progress("write", 1, len(uids))

            report = ConvertReport(out_dir, index.counts(), outcomes, index.failures(100))
            _write_report(out_dir / REPORT_NAME, report, index, opts)
    finally:
        if executor is not None:
            executor.shutdown(cancel_futures=True)
    return report


def _write_report(
    path: Path, report: ConvertReport, index: StudyIndex, opts: ConvertOptions
) -> None:
    """``report.json``: summary, studies, and every input file with its status (sorted by path).

    Deterministic like the bundles: no timestamps, stable order.
    """
    render_failed = dict(report.render_failures)

    def files() -> Iterator[dict[str, str]]:
        for file_path, status, detail in index.file_outcomes():
            item = {"path": file_path, "status": status}
            key = "bundle" if status == FileStatus.CONVERTED.value else "reason"
            item[key] = detail
            if file_path in render_failed:
                item["renderError"] = render_failed[file_path]
            yield item

    doc = {
        "fhirVersion": get_release(opts.fhir_version).fhir_version,
        "summary": report.summary(),
        "studies": [s.as_json() for s in report.studies],
        "files": [],
    }
    # The file list is streamed from the index, one entry at a time, into exactly the bytes
    # jsonio.dumps(doc) would give with the list inline: memory does not grow with the files.
    head = jsonio.dumps(doc).rstrip(b"\n")
    marker = b'"files": []'
    assert head.endswith(marker + b"\n}")
    with jsonio.atomic_writer(path, mode=opts.modes) as fh:
        fh.write(head[: -len(b"[]\n}")])
        first = True
        for item in files():
            fh.write(b"[\n" if first else b",\n")
            fh.write(b"    " + jsonio.dumps(item).rstrip(b"\n").replace(b"\n", b"\n    "))
            first = False
        fh.write(b"[]\n}\n" if first else b"\n  ]\n}\n")
