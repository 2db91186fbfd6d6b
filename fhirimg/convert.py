"""``convert``: DICOM files and folders to one FHIR transaction Bundle per study, plus a report.

The pipeline is scan -> group -> map -> bundle -> validate -> write:

1. :func:`fhirimg.walk.iter_files` walks the inputs; :func:`fhirimg.scan.read_file` (pure, one
   file) reads each header, in a process pool when ``jobs > 1``;
2. :class:`fhirimg.group.StudyIndex` groups records by Study Instance UID, spilling to disk, and
   settles duplicate SOP Instance UIDs;
3. each study's records have their text cleaned for FHIR (:func:`fhirimg.mapping.clean_text`,
   a warning per file), the study becomes a Bundle (:func:`fhirimg.bundle.study_bundle`), is
   validated, and is written atomically; a bundle that does not validate is never written, but
   instances that its errors are traced to are left out and the rest built again
   (:mod:`fhirimg.partial`; not with ``all_or_nothing``). With ``binary`` and/or ``media``
   the study goes through the pixel study writer, :func:`fhirimg.images.writer.write_study`,
   instead, which streams Binary and rendered-image entries after the same head, split at
   ``max_entries`` / ``max_bundle_mb`` (the choice is :func:`_study_writer`);
4. ``report.json`` accounts for every input file: converted, skipped, duplicate or failed.

Incremental (docs/incremental.md): the output folder keeps a catalog of every input file seen
(:class:`fhirimg.catalog.Catalog`, ``<out>/.fhirimg/catalog.sqlite``). A run into a folder reads
only the files that are new or changed since they were recorded, rebuilds only the studies those
touch, from every record the catalog holds for them (so each rewritten bundle holds the study's
earlier instances too), and leaves every other bundle file alone: an unchanged tree rewrites no
bundle. A recorded file that disappeared stays in its study (reported ``missing``) unless
``prune_missing``; ``full`` discards the catalog first. ``report.json`` describes the whole folder
(from the catalog), this run, and the history of runs. The whole run holds the folder's
:class:`fhirimg.folderlock.FolderLock`: one writer at a time.

Nothing here prints: progress goes to an optional callback, results come back as a
:class:`ConvertReport`.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import logging
import math
import os
import shutil
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

from fhirimg import ids, jsonio
from fhirimg.audit import Invocation, audit_json, count_warnings, warning_code
from fhirimg.bundle import remove_stale_parts, study_bundle
from fhirimg.catalog import CATALOG_NAME, Catalog, CatalogEntry, Change, RunRecord
from fhirimg.cluster import ClusterOptions
from fhirimg.errors import CatalogError, ConfigError
from fhirimg.exitcodes import ExitCode
from fhirimg.fhir import release as get_release
from fhirimg.folderlock import STATE_DIR, FolderLock, clean_leftovers, state_dir, work_dir
from fhirimg.group import PackedRecord, StudyIndex, unpack
from fhirimg.images.binary import BinaryMode
from fhirimg.jsonio import JSON
from fhirimg.mapping import MapOptions, Notes, clean_text
from fhirimg.measurements import entry_owners
from fhirimg.model import FileProblem, FileStatus, InstanceRecord
from fhirimg.partial import Attempt, settle
from fhirimg.safetext import refuse_url_credentials
from fhirimg.select import StudySelection
from fhirimg.tasks import batched, bounded
from fhirimg.validate.validator import resource_error_findings
from fhirimg.walk import iter_files

if TYPE_CHECKING:
    from fhirimg.deid import DeidOptions
    from fhirimg.deid.files import ReidEntry, ReidMap

    # Imported where used: they bring pydicom, numpy and Pillow, which a run that reads no DICOM
    # (an incremental re-run over an unchanged tree) never needs (issue 19).
    from fhirimg.images.rendered import MediaOptions
    from fhirimg.images.writer import PixelOptions

log = logging.getLogger(__name__)

DEFAULT_OUT = Path("fhirimg-out")
REPORT_NAME = "report.json"
_BATCH = 64  # files per task sent to a worker process
_CLASSIFY = 512  # files compared with the catalog at once

Warned = tuple[str, str]
"""(path of an input file, a warning about it)."""

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
    storage: tuple[tuple[str, str], ...] = ()
    """fsspec options of object inputs, for the pixel writers reading their bytes
    (:func:`fhirimg.objects.open_input`); set by :mod:`fhirimg.convert_objects`."""
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
    full: bool = False
    """Ignore the output folder's catalog: discard it, read every file and rewrite every study
    (the catalog is rebuilt). By default a run reads only new and changed files."""
    prune_missing: bool = False
    """Drop the files that disappeared since they were recorded from their studies (whose
    bundles are rewritten without them); by default they stay, reported as missing."""
    lock_wait: float | None = None
    """Seconds to wait while another run writes to the output folder (None or 0: fail at once
    with :class:`~fhirimg.errors.FolderLockedError`; ``math.inf``: as long as it takes)."""
    all_or_nothing: bool = False
    """A study whose bundle has any validation error is not written (all its files fail); by
    default the instances the errors are traced to are left out and the rest is written
    (:mod:`fhirimg.partial`)."""
    deid: DeidOptions | None = None
    """De-identify (:mod:`fhirimg.deid`, docs/deidentify.md): every record right after reading,
    every Binary's bytes, no rendered image or Binary of images that may carry burned-in text
    (unless allowed); the Patient's identifier system is ``deid.patient_system``."""

    reid_map: Path | None = None
    """With ``deid``: write the re-identification map (pseudonyms and new UIDs to the
    originals) into this file, 0600, merged with what earlier runs wrote there; never inside
    ``out_dir`` (:func:`fhirimg.deid.files.check_reid_map`)."""

    cluster: ClusterOptions | None = None
    """``--engine dask``: read and write on this Dask cluster (:mod:`fhirimg.cluster`); None:
    the local process pool of ``jobs`` processes. The output is the same."""
    output_format: str = "bundle"
    """``"ndjson"``: also write the FHIR Bulk Data NDJSON file set (``<out>/ndjson/``) from the
    bundles, for ``$import`` (:mod:`fhirimg.ndjson`); ``"bundle"``: the bundles only."""

    select: StudySelection = field(default_factory=StudySelection)
    """Only the studies that match (``--modality/--since/--patient``, :mod:`fhirimg.select`);
    the files of the others are reported skipped. A selecting file run goes without the catalog
    (:func:`convert`)."""

    invocation: Invocation | None = None
    """How the run was asked for (the CLI's command and options): report.json then ends with an
    ``audit`` section (:mod:`fhirimg.audit`). Not a conversion option: it changes no bundle."""

    def __post_init__(self) -> None:
        if self.deid is not None and not self.mapping.pseudonymised:
            # The issuers of the original ids say nothing of the pseudonyms (fhirimg.deid.actions)
            mapping = replace(
                self.mapping,
                patient_id_system=self.deid.patient_system,
                patient_id_systems=(),
                accession_systems=(),
                pseudonymised=True,
            )
            object.__setattr__(self, "mapping", mapping)

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
        if self.reid_map is not None:
            if self.deid is None:
                raise ConfigError("a re-identification map needs de-identification")
            from fhirimg.deid.files import check_reid_map

            check_reid_map(self.reid_map, Path(self.out_dir))
        if self.output_format not in ("bundle", "ndjson"):
            raise ConfigError(f"unknown output format {self.output_format!r}")
        if self.output_format == "ndjson" and self.binary == BinaryMode.BESIDE:
            raise ConfigError(
                "NDJSON needs the Binaries in the resources: use --binary inline with ndjson"
            )
        if self.lock_wait is not None and (math.isnan(self.lock_wait) or self.lock_wait < 0):
            raise ConfigError("lock_wait must be a number of seconds >= 0")
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
        from fhirimg.images.writer import PixelOptions

        return PixelOptions(
            binary=BinaryMode(self.binary) if self.binary is not None else None,
            media=self.media,
            max_entries=self.max_entries,
            max_bytes=(
                int(self.max_bundle_mb * 1_000_000) if self.max_bundle_mb is not None else None
            ),
            strict=self.strict,
            modes=self.modes,
            all_or_nothing=self.all_or_nothing,
            deid=self.deid,
            storage=self.storage,
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
    journal_lines: tuple[tuple[str, str, int], ...] = ()
    """(sha256, file, entries) of the bundles a Dask worker pushed (``--push-concurrency``): the
    client writes them into its journal (:mod:`fhirimg.convert_push`). Not kept in the report."""
    out_of_space: bool = False
    """Writing the study's files failed for lack of space (ENOSPC, EDQUOT) or an I/O error
    (EIO): the run writes no further study (:func:`disk_error`). Not kept in the report."""
    dropped: tuple[Warned, ...] = ()
    """(path, reason) of instance files left out of the study because they are not valid
    (:mod:`fhirimg.partial`); the rest of the study is written."""
    file_warnings: tuple[Warned, ...] = ()
    """(path, warning) about single files: what reading met (a bad character set, what pydicom
    complained about: :func:`fhirimg.scan.read_file`) and the text cleaned in them on its way
    into FHIR."""

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
        if self.dropped:
            out["droppedFiles"] = [{"path": p, "reason": r} for p, r in self.dropped]
        if self.file_warnings:
            out["fileWarnings"] = [{"path": p, "warning": w} for p, w in self.file_warnings]
        if self.push is not None:
            out["push"] = self.push
        if self.push_issues:
            out["pushIssues"] = list(self.push_issues)
        if self.warnings:
            out["warnings"] = list(self.warnings)
        if self.errors:
            out["errors"] = list(self.errors)
        return out

    @classmethod
    def from_json(cls, doc: JSON) -> StudyOutcome:
        """The outcome :meth:`as_json` gave (as the catalog keeps it for a study not rewritten).

        >>> o = StudyOutcome("1.2", "study-x.json", 1, 2, warnings=("w",), binaries=2)
        >>> StudyOutcome.from_json(o.as_json()) == o
        True
        """
        written = doc.get("status") == "written"
        binaries, media = doc.get("binaries"), doc.get("renderedImages")
        return cls(
            study_instance_uid=str(doc["studyInstanceUid"]),
            bundle=str(doc["bundle"]) if written and doc.get("bundle") else None,
            series=int(doc.get("series", 0)),
            instances=int(doc.get("instances", 0)),
            warnings=tuple(doc.get("warnings", ())),
            errors=tuple(doc.get("errors", ())),
            parts=tuple(doc.get("parts", ())),
            binaries=None if binaries is None else int(binaries),
            media=None if media is None else int(media),
            media_failures=tuple((f["path"], f["reason"]) for f in doc.get("renderFailures", ())),
            dropped=tuple((f["path"], f["reason"]) for f in doc.get("droppedFiles", ())),
            file_warnings=tuple((f["path"], f["warning"]) for f in doc.get("fileWarnings", ())),
            push=doc.get("push"),
            push_issues=tuple(doc.get("pushIssues", ())),
        )


@dataclass(frozen=True)
class RunSummary:
    """What one run did, next to the whole folder's state that :class:`ConvertReport` holds.

    Files: ``new`` (not in the catalog), ``changed`` (size, mtime, ctime or inode differ, or
    too recent to trust: read again), ``unchanged`` (not read), ``missing`` (recorded, gone,
    still in their studies), ``pruned`` (gone and dropped, ``prune_missing``). Studies:
    ``written`` and ``failed`` this run, ``removed`` (no file left: bundle deleted),
    ``unchanged`` (bundle not touched).
    """

    full: bool = False
    new: int = 0
    changed: int = 0
    unchanged: int = 0
    missing: int = 0
    pruned: int = 0
    written: int = 0
    failed: int = 0
    removed: int = 0
    studies_unchanged: int = 0
    unstatable: int = 0
    """Input paths that could not even be stat'ed (gone, never there): read only to record why,
    in no count above; they make a run that found no file a failure, not "nothing to do"."""

    def counts(self) -> dict[str, int]:
        """Flat counts, as the catalog's history of runs keeps them."""
        return {
            "new": self.new,
            "changed": self.changed,
            "unchanged": self.unchanged,
            "missing": self.missing,
            "pruned": self.pruned,
            "studiesWritten": self.written,
            "studiesFailed": self.failed,
            "studiesRemoved": self.removed,
            "studiesUnchanged": self.studies_unchanged,
        }

    def as_json(self) -> JSON:
        return {
            "full": self.full,
            "files": {
                "new": self.new,
                "changed": self.changed,
                "unchanged": self.unchanged,
                "missing": self.missing,
                "pruned": self.pruned,
            },
            "studies": {
                "written": self.written,
                "failed": self.failed,
                "removed": self.removed,
                "unchanged": self.studies_unchanged,
            },
        }


@dataclass
class ConvertReport:
    """The result of :func:`convert`: counts per file status and the studies' outcomes.

    With the catalog (:func:`convert`), ``files``, ``studies`` and ``failures`` describe the whole
    output folder (every study it holds, rewritten now or not), ``run`` what this run did, and
    ``missing`` how many recorded files are gone but still in their studies. Without it
    (:func:`convert_records`), they describe this run, and ``run`` is None.
    """

    out_dir: Path
    files: dict[str, int]
    studies: list[StudyOutcome]
    failures: list[tuple[str, str]] = field(default_factory=list)
    """The first failed files (path, reason); all of them are in report.json."""
    run: RunSummary | None = None
    missing: int = 0
    written: list[StudyOutcome] = field(default_factory=list)
    """The studies this run wrote or tried to (with the catalog: a part of ``studies``)."""
    stopped: str | None = None
    """Why the run stopped writing studies before the last (``disk full writing <file>``)."""
    output: str | None = None
    """Where the files went when that is not ``out_dir`` (an object-storage URL, shown without
    credentials); ``summary.output`` then names it."""
    ndjson: dict[str, int] | None = None
    """Lines per resource type of the NDJSON file set (``output_format="ndjson"``), else None."""
    partitions: list[Any] = field(default_factory=list, repr=False)
    """``--engine dask``: the partitions' results (:class:`fhirimg.shuffle.PartitionResult`),
    whose outcome files ``report.json`` is merged from."""

    @property
    def render_failures(self) -> list[tuple[str, str]]:
        """Image files converted but not rendered (path, reason)."""
        return [f for s in self.studies for f in s.media_failures]

    @property
    def nothing_done(self) -> bool:
        """Whether the run found nothing at all to work on: its input held no file (an empty
        folder, a mount gone missing), or a DICOMweb query matched no study (issue 11 item
        17). An incremental run over unchanged files did check them: that is not nothing.

        >>> ConvertReport(Path("out"), {}, []).nothing_done
        True
        """
        if self.run is not None:
            r = self.run
            done = r.new + r.changed + r.unchanged + r.pruned + r.removed + r.written + r.failed
            return done + r.unstatable == 0
        return sum(self.files.values()) == 0 and not self.studies

    @property
    def exit_code(self) -> ExitCode:
        if self.stopped is not None and not any(s.ok for s in self.written):
            return ExitCode.CANNOT_START  # the disk was full from the start: nothing done
        if self.nothing_done:
            return ExitCode.NOTHING_DONE  # 4, before 1: the run's own news wins (cron)
        failed = self.files.get(FileStatus.FAILED.value, 0)
        if failed or any(not s.ok or s.media_failures or s.push_failed for s in self.studies):
            return ExitCode.PARTIAL
        return ExitCode.OK

    def summary(self) -> JSON:
        out: JSON = {
            "output": self.output or str(self.out_dir),
            "files": {"total": sum(self.files.values()), **self.files},
            "studies": {
                "total": len(self.studies),
                "written": sum(1 for s in self.studies if s.ok),
                "failed": sum(1 for s in self.studies if not s.ok),
            },
            **self._pixel_summary(),
        }
        if self.run is not None:
            out["run"] = self.run.as_json()
        if self.ndjson is not None:
            out["ndjson"] = self.ndjson
        if self.stopped is not None:
            out["stopped"] = self.stopped
        warned = count_warnings(self.warning_texts())
        if warned:
            out["warnings"] = warned
        out["exitCode"] = int(self.exit_code)
        return out

    def warning_texts(self) -> Iterator[str]:
        """Every warning of the studies in the report: the studies' own (mapping) and those
        about single files (reading, text cleaning), counted by code in ``summary.warnings``."""
        for study in self.studies:
            yield from study.warnings
            yield from (w for _, w in study.file_warnings)

    def _pixel_summary(self) -> JSON:
        """Counts of Binaries, rendered images and bundle parts (only when asked for)."""
        out: JSON = {}
        if any(s.parts for s in self.studies):
            out["bundleFiles"] = sum(1 + len(s.parts) for s in self.studies if s.ok)
        if any(s.binaries is not None for s in self.studies):
            out["binaries"] = sum(s.binaries or 0 for s in self.studies)
        if any(s.push is not None for s in [*self.studies, *self.written]):
            # this run's pushes only: a study the catalog kept says how an earlier run went
            pushed = [s.push for s in self.written if s.push is not None]
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
    records: list[InstanceRecord],
    mapping: MapOptions,
    fhir_version: str,
    strict: bool = False,
    all_or_nothing: bool = False,
) -> tuple[JSON, StudyOutcome]:
    """Build and validate one study's bundle. Pure: returns the bundle and its outcome.

    Instances that errors are traced to are left out and the bundle of the rest built again
    (:func:`fhirimg.partial.settle`; not with ``all_or_nothing``): the outcome lists them in
    ``dropped``. The outcome has ``errors`` (and the bundle must not be written) when validation
    fails all the same.
    """
    release = get_release(fhir_version)

    def attempt(recs: list[InstanceRecord]) -> Attempt[tuple[JSON, Notes]]:
        bundle, notes = study_bundle(recs, mapping, release)
        errors = resource_error_findings(bundle, release.name, strict)
        return Attempt(bundle, errors, (bundle, notes), entry_owners(recs))

    settled = settle(records, attempt, all_or_nothing)
    bundle, notes = settled.attempt.value
    study = next(
        e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "ImagingStudy"
    )
    errors = settled.errors
    uid = records[0].study_instance_uid
    outcome = StudyOutcome(
        study_instance_uid=uid,
        bundle=None if errors else ids.bundle_name(uid),
        series=int(study["numberOfSeries"]),
        instances=int(study["numberOfInstances"]),
        warnings=tuple(notes.items),
        errors=tuple(errors),
        dropped=tuple(settled.dropped),
    )
    return bundle, outcome


class StudyWriter(Protocol):
    """Writes one study's bundle file(s) into a folder and says what became of the study;
    ``render`` is a pool and its size to render images in (only the pixel writer uses it)."""

    def __call__(
        self,
        records: list[InstanceRecord],
        mapping: MapOptions,
        fhir_version: str,
        out_dir: Path,
        pixels: PixelOptions,
        render: RenderPool = None,
    ) -> StudyOutcome: ...


RenderPool: TypeAlias = "tuple[Executor, int] | None"
"""A process pool and its number of processes, to render one study's images in."""


def _render_in_pool(
    executor: Executor | None, pixels: PixelOptions, studies: int, jobs: int
) -> bool:
    """Whether studies are written one after another in this process, their images rendered in
    the pool, rather than a study per process: with ``--media`` and fewer studies than processes
    (one large study used one core of two: rendering is most of the time of ``--media``); the
    same for ``--binary inline``, whose Binary entries the pool then writes while this process
    checks the study's head (:mod:`fhirimg.images.inline`), in the local pool only (its
    processes write into this machine's output folder; a Dask worker may be elsewhere)."""
    if executor is None or studies >= jobs:
        return False
    if pixels.media is not None:
        return True
    return pixels.binary == BinaryMode.INLINE and isinstance(executor, ProcessPoolExecutor)


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
    need_files: bool = False,
    render: RenderPool = None,
) -> StudyOutcome:
    """Worker task: build, validate and (when valid) atomically write one study's bundle(s).

    Takes the study's records as pickled blobs (:class:`fhirimg.group.PackedRecord`), so the
    process that grouped them never had to unpickle them. ``need_files`` (the pixel writer
    rebuilding a study from the catalog): a study with an instance file that is gone fails
    without touching its earlier bundle, which still holds that file's bytes.
    """
    records, file_warnings = _clean(unpack(blobs))
    outcome = _build_and_write(records, mapping, fhir_version, out_dir, pixels, need_files, render)
    if outcome.file_warnings:  # what de-identification withheld (fhirimg.deid.pixels)
        file_warnings = tuple(sorted(file_warnings + outcome.file_warnings, key=lambda w: w[0]))
    return replace(outcome, file_warnings=file_warnings) if file_warnings else outcome


def _clean(records: list[InstanceRecord]) -> tuple[list[InstanceRecord], tuple[Warned, ...]]:
    """The study's records with their text made fit for FHIR (:func:`fhirimg.mapping.clean_text`,
    the one place it is done), and each file's warnings: what reading it met
    (:attr:`InstanceRecord.warnings`: pydicom's complaints without the values, a bad character
    set, ...) and what was cleaned."""
    out: list[InstanceRecord] = []
    warned: list[Warned] = []
    for record in records:
        clean, notes = clean_text(record)
        out.append(clean)
        warned += [(record.path, note) for note in (*record.warnings, *notes)]
    return out, tuple(sorted(warned, key=lambda w: w[0]))


def _build_and_write(
    records: list[InstanceRecord],
    mapping: MapOptions,
    fhir_version: str,
    out_dir: str,
    pixels: PixelOptions,
    need_files: bool,
    render: RenderPool = None,
) -> StudyOutcome:
    if need_files and pixels.active:
        gone = [r.path for r in records if not os.path.lexists(r.path)]
        if gone:
            uid = records[0].study_instance_uid
            more = f" and {len(gone) - 1} more" if len(gone) > 1 else ""
            why = (
                f"instance file {_printable(gone[0])}{more} is missing and --binary/--media need "
                "the bytes to rebuild the study (its earlier bundle is kept): restore the "
                "file(s), or re-run with --prune-missing to drop them from the study"
            )
            series = len({r.series_instance_uid for r in records})
            return StudyOutcome(uid, None, series, len(records), errors=(why,))
    return _study_writer(pixels)(records, mapping, fhir_version, Path(out_dir), pixels, render)


def _write_plain_study(
    records: list[InstanceRecord],
    mapping: MapOptions,
    fhir_version: str,
    out_dir: Path,
    pixels: PixelOptions,
    render: RenderPool = None,
) -> StudyOutcome:
    """The plain study writer: one bundle built in memory (:func:`build_study`), written when
    valid; ``pixels`` only says how strictly to validate (nothing is rendered)."""
    try:
        bundle, outcome = build_study(
            records, mapping, fhir_version, pixels.strict, pixels.all_or_nothing
        )
    except Exception as exc:  # a mapping bug must cost one study, not the run
        uid = records[0].study_instance_uid
        return StudyOutcome(
            uid, None, 0, len(records), errors=(f"internal error: {type(exc).__name__}: {exc}",)
        )
    if outcome.bundle:
        path = out_dir / outcome.bundle
        try:
            jsonio.atomic_write(path, jsonio.dumps(bundle), mode=pixels.modes)
        except OSError as exc:  # the atomic write left no part of it behind
            why = disk_error(exc, path)
            if why is None:
                raise
            return replace(outcome, bundle=None, errors=(why,), out_of_space=True)
        remove_stale_parts(out_dir, outcome.bundle)
    return outcome


def _write_pixel_study(
    records: list[InstanceRecord],
    mapping: MapOptions,
    fhir_version: str,
    out_dir: Path,
    pixels: PixelOptions,
    render: RenderPool = None,
) -> StudyOutcome:
    """The pixel study writer (:func:`fhirimg.images.writer.write_study`): Binaries and/or
    rendered images streamed after the head, possibly over several part files; images rendered
    in ``render``'s pool when given."""
    if pixels.deid is not None:
        from fhirimg.deid.pixels import write_deidentified

        outcome: StudyOutcome = write_deidentified(
            functools.partial(_write_pixel_files, render=render),
            records,
            mapping,
            fhir_version,
            out_dir,
            pixels,
        )
        return outcome
    return _write_pixel_files(records, mapping, fhir_version, out_dir, pixels, render)


def _write_pixel_files(
    records: list[InstanceRecord],
    mapping: MapOptions,
    fhir_version: str,
    out_dir: Path,
    pixels: PixelOptions,
    render: RenderPool = None,
) -> StudyOutcome:
    """The pixel study writer on files whose bytes go into the output as they are."""
    uid = records[0].study_instance_uid
    series = len({r.series_instance_uid for r in records})
    from fhirimg.images.writer import write_study

    try:
        pool, jobs = render or (None, 1)
        files = write_study(records, mapping, fhir_version, out_dir, pixels, pool, jobs)
    except Exception as exc:  # an unreadable file or a bug costs one study, not the run
        why = disk_error(
            exc, Path(getattr(exc, "filename", None) or out_dir / ids.bundle_name(uid))
        )
        if why is not None:
            return StudyOutcome(uid, None, series, len(records), errors=(why,), out_of_space=True)
        return StudyOutcome(
            uid, None, series, len(records), errors=(f"{type(exc).__name__}: {exc}",)
        )
    ok = not files.errors and bool(files.bundles)
    dropped = {path for path, _ in files.dropped}
    kept = [r for r in records if r.path not in dropped]
    return StudyOutcome(
        study_instance_uid=uid,
        bundle=files.bundles[0] if ok else None,
        series=len({r.series_instance_uid for r in kept}),
        instances=len(kept),
        warnings=tuple(dict.fromkeys(files.warnings)),
        errors=tuple(files.errors),
        parts=tuple(files.bundles[1:]) if ok else (),
        binaries=files.binaries if pixels.binary is not None else None,
        media=files.media if pixels.media is not None else None,
        media_failures=tuple(files.media_failures),
        dropped=tuple(files.dropped),
    )


_DISK_ERRORS = {
    errno.ENOSPC: "disk full",
    errno.EDQUOT: "disk quota exceeded",
    errno.EIO: "I/O error",
}
RESERVE_BASE = 1 << 20
RESERVE_PER_FILE = 512
"""Space set aside for the catalog and report.json when the disk fills up: 1 MiB and 512 bytes
per input file (a file's report.json entry is about 200 bytes)."""


def disk_error(exc: BaseException, target: Path) -> str | None:
    """The reason a study was not written when ``exc`` says the disk cannot take more (ENOSPC,
    EDQUOT, EIO): ``"disk full writing <target>"``; None for any other error.

    >>> disk_error(OSError(errno.ENOSPC, "No space left on device"), Path("out/study-1.json"))
    'disk full writing out/study-1.json'
    >>> disk_error(OSError(errno.EACCES, "Permission denied"), Path("x")) is None
    True
    """
    if isinstance(exc, OSError) and exc.errno in _DISK_ERRORS:
        return f"{_DISK_ERRORS[exc.errno]} writing {_printable(str(target))}"
    return None


def _sqlite_full(exc: BaseException) -> bool:
    """A catalog error that is SQLite finding the disk full (SQLITE_FULL)."""
    cause = exc.__cause__
    return getattr(cause, "sqlite_errorname", None) == "SQLITE_FULL" or "disk is full" in str(exc)


def _not_written(uid: str, paths: list[str], blobs: list[bytes], stopped: str) -> StudyOutcome:
    """A study the run did not try to write after it stopped writing."""
    series = len({r.series_instance_uid for r in unpack(blobs)})
    why = f"not written: the run stopped writing studies ({stopped})"
    return StudyOutcome(uid, None, series, len(paths), errors=(why,))


def _read_batch(
    paths: list[str], deid: DeidOptions | None = None, reid: bool = False
) -> tuple[list[PackedRecord | FileProblem], list[ReidEntry]]:
    """Worker task: read a batch of files; records come back packed (pickled once, here), and
    de-identified right after reading with ``deid`` (:func:`fhirimg.deid.record.deidentify_record`),
    with what the re-identification map keeps of each when ``reid``."""
    from fhirimg.scan import read_file  # pydicom: only in runs (and workers) that read DICOM

    out: list[PackedRecord | FileProblem] = []
    entries: list[ReidEntry] = []
    for path in paths:
        item = read_file(path)
        if isinstance(item, FileProblem):
            out.append(item)
            continue
        if deid is not None:
            from fhirimg.deid.files import reid_entry
            from fhirimg.deid.record import deidentify_record

            if reid:
                entries.append(reid_entry(item, deid))
            item = deidentify_record(item, deid)
        out.append(PackedRecord.of(item))
    return out, entries


def _executor(opts: ConvertOptions, jobs: int) -> tuple[Executor | None, int]:
    """The run's executor and its task slots (the window of tasks in flight follows them): the
    Dask cluster's with ``opts.cluster`` (``--engine dask``), else the local process pool."""
    if opts.cluster is not None:
        from fhirimg.cluster import start

        cluster = start(opts.cluster)
        return cluster, cluster.threads
    if opts.media is not None and jobs > 1:
        from fhirimg.images.writer import warm_render

        warm_render(opts.fhir_version, opts.media)  # before the fork: once, not once per process
    return _pool(jobs), jobs


def _pool(jobs: int) -> ProcessPoolExecutor | None:
    """The worker processes of a run (None for one job: this process only)."""
    if jobs <= 1:
        return None
    return ProcessPoolExecutor(
        max_workers=jobs, initializer=_die_with_parent, initargs=(os.getpid(),)
    )


def _die_with_parent(parent: int) -> None:
    """Worker initializer: end with the run. A worker shares the folder lock's open file (fork),
    so a worker outliving a run killed with ``kill -9`` would hold the folder locked, and wait for
    tasks, forever. Linux only (``PR_SET_PDEATHSIG``); elsewhere nothing changes."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):  # no prctl: the worker only lives longer
        return
    if os.getppid() != parent:  # the run died before the call above: follow it now
        os._exit(1)


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
    worker_push: StudyHook | None = None,
) -> ConvertReport:
    """Convert DICOM files/folders to per-study transaction Bundles in ``options.out_dir``.

    ``worker_push`` (``convert --push --push-concurrency``): with the records shuffled on a Dask
    cluster, called by the worker that wrote each study, with its outcome and files folder (it
    pushes the study: :func:`fhirimg.convert_push.push_here`); ``on_study`` then sees outcomes
    whose ``push`` is set.

    Incremental: only new and changed files are read, and only the studies they touch are
    rewritten, each with everything the output folder's catalog knows of it (module docstring).
    Returns the report of the whole folder and of this run (also written as ``report.json``).
    Never raises for bad input files; raises :class:`~fhirimg.errors.ConfigError` for bad options,
    :class:`~fhirimg.errors.FolderLockedError` while another run writes to the folder,
    :class:`~fhirimg.errors.CatalogError` for an unusable catalog (``full`` rebuilds it) and
    ``OSError`` when the output folder cannot be written.
    """
    opts = options or ConvertOptions()
    if opts.select.active:
        # A selection sees part of the inputs: the catalog would take the studies left out for
        # gone. Read every file, write the matching studies, prune nothing (docs/incremental.md).
        source = read_files([Path(p) for p in paths], Path(opts.out_dir), progress=progress)
        return convert_records(source, opts, progress, on_study=on_study, bundle_dir=bundle_dir)
    opts.check()  # fail early on bad options
    out_dir = Path(opts.out_dir)
    _make_folders(opts, bundle_dir)
    with FolderLock(out_dir, opts.lock_wait):
        deid_mark = state_dir(out_dir) / DEID_MARK
        read_as = opts.deid.fingerprint if opts.deid is not None else ""
        known = (out_dir / STATE_DIR / CATALOG_NAME).is_file()
        if known and not opts.full and read_as != _read_mark(deid_mark):
            # The catalog's records were read with another de-identification (or none): they
            # cannot be reused, every file is read again (docs/deidentify.md).
            log.info("other de-identification than last time: every file is read again")
            opts = replace(opts, full=True)
        with Catalog.open(out_dir, full=opts.full) as catalog:
            clean_leftovers(out_dir, keep=bundle_dir)  # of a run killed before: ours, locked
            if opts.cluster is not None and opts.deid is None:
                # the shuffle on the workers (fhirimg.shuffle): every file read, every study
                # rewritten; the catalog keeps the history and its studies are marked dirty
                inputs = [Path(p) for p in paths]
                report = _convert_shuffled(
                    catalog, inputs, opts, progress, on_study, bundle_dir, worker_push
                )
            else:
                run = _IncrementalRun(catalog, [Path(p) for p in paths], opts, progress, bundle_dir)
                report = run.run(on_study)
        if read_as or deid_mark.exists():
            jsonio.atomic_write(deid_mark, read_as.encode(), mode=jsonio.PRIVATE)
        return report


SHUFFLED_MARK = "written by --engine dask (every study rewritten)"
"""The catalog's options fingerprint after a Dask run: any other run rewrites every study."""


def _convert_shuffled(
    catalog: Catalog,
    inputs: list[Path],
    opts: ConvertOptions,
    progress: Progress | None,
    on_study: StudyHook | None,
    bundle_dir: Path | None,
    worker_push: StudyHook | None = None,
) -> ConvertReport:
    """``--engine dask`` on files: the records shuffled by study on the workers, never through
    this process (:mod:`fhirimg.shuffle`, docs/scale-out.md); the folder's lock is held and
    ``catalog`` open. Every file is read and every study written: the catalog keeps the history
    of runs, and its studies are marked dirty, so a later local run rewrites every study.
    ``report.json`` of a run into an empty folder is byte for byte the local engine's."""
    from fhirimg.cluster import start
    from fhirimg.shuffle import READ_BATCH, shuffled_on

    assert opts.cluster is not None
    out_dir = Path(opts.out_dir)
    files_dir = bundle_dir or out_dir
    with shuffled_on(start(opts.cluster), out_dir) as shuffle:  # no cluster: no run
        catalog.use_options(SHUFFLED_MARK)
        catalog.begin_run(inputs, full=opts.full)
        total = sum(1 for _ in iter_files(inputs, exclude=[out_dir])) if progress else None
        batches = batched(iter_files(inputs, exclude=[out_dir]), READ_BATCH)
        read, unstatable = shuffle.read(iter(batches), None, progress, total)
        report = shuffled_report(shuffle, opts, files_dir, progress, on_study, worker_push)
        report.run = RunSummary(
            full=opts.full,
            new=read - unstatable,
            written=sum(1 for s in report.studies if s.ok),
            failed=sum(1 for s in report.studies if not s.ok),
            unstatable=unstatable,
        )
        report.ndjson = _ndjson(opts, files_dir, report)
        catalog.end_run(report.run.counts())
        history = [_run_json(r) for r in catalog.runs()]
        write_shuffled_report(report, opts, history)
        return report


def _shuffled_study(
    blobs: list[bytes],
    paths: list[str],
    stopped: str | None,
    mapping: MapOptions,
    fhir_version: str,
    files_dir: str,
    pixels: PixelOptions,
    worker_push: StudyHook | None = None,
) -> tuple[StudyOutcome, list[tuple[str, FileStatus, str]], str | None]:
    """Worker task of :mod:`fhirimg.shuffle` (its ``study_task``): write one study as
    :func:`_write_study` does, unless the partition stopped writing (the disk is full); with
    ``worker_push``, hand it the study written here (it pushes it and deletes its files)."""
    if stopped is None:
        outcome = _write_study(blobs, mapping, fhir_version, files_dir, pixels)
        if worker_push is not None and outcome.ok:
            outcome = worker_push(outcome, Path(files_dir))
    else:
        uid = unpack(blobs[:1])[0].study_instance_uid
        outcome = _not_written(uid, paths, blobs, stopped)
    stop = outcome.errors[0] if outcome.out_of_space else None
    return outcome, _file_outcomes(paths, outcome), stop


def shuffled_report(
    shuffle: Any,
    opts: ConvertOptions,
    files_dir: Path,
    progress: Progress | None,
    on_study: StudyHook | None,
    worker_push: StudyHook | None = None,
) -> ConvertReport:
    """Stages 2 and 3 of ``shuffle`` (a :class:`fhirimg.shuffle.Shuffle` whose inputs are read):
    the studies written on the workers, each passed to ``on_study`` here as its partition comes
    back; the report of the run (without ``run``: the caller's)."""
    args = (opts.mapping, opts.fhir_version, str(files_dir), opts.pixels(), worker_push)
    results = []
    for result in shuffle.write(_shuffled_study, args):
        for i, outcome in enumerate(result.studies):
            if on_study is not None and outcome.ok:
                result.studies[i] = on_study(outcome, files_dir)
            _log_files(result.studies[i])
        results.append(result)
        if progress:
            progress("write", len(result.studies), None)
    from fhirimg.shuffle import merged_failures

    studies = sorted((s for r in results for s in r.studies), key=lambda s: s.study_instance_uid)
    counts = {s.value: 0 for s in FileStatus}
    for r in results:
        for status, n in r.counts.items():
            counts[status] += n
    report = ConvertReport(
        Path(opts.out_dir),
        counts,
        studies,
        [(_printable(p), _printable(r)) for p, r in merged_failures(results, 100)],
        written=studies,
        stopped=next((r.stopped for r in results if r.stopped), None),
    )
    report.partitions = results
    return report


def write_shuffled_report(
    report: ConvertReport, opts: ConvertOptions, history: list[JSON] | None
) -> None:
    """``report.json`` of a shuffled run, in the shape of the local engine's (that of
    :func:`_write_folder_report` with a ``history``, else of :func:`_write_report`), its
    ``files`` merged from the partitions' outcome files as a stream."""
    from fhirimg.shuffle import merged_outcomes

    render_failed = {
        _printable(p): _printable(r) for s in report.studies for p, r in s.media_failures
    }
    warned = _file_warnings(report.studies)

    def files() -> Iterator[JSON]:
        for file_path, status, detail in merged_outcomes(report.partitions):
            shown = _printable(file_path)
            item: JSON = {"path": shown, "status": status}
            key = "bundle" if status == FileStatus.CONVERTED.value else "reason"
            item[key] = _printable(detail)
            if shown in render_failed:
                item["renderError"] = render_failed[shown]
            if shown in warned:
                item["warnings"] = warned[shown]
            yield item

    doc: JSON = {
        "fhirVersion": get_release(opts.fhir_version).fhir_version,
        "summary": report.summary(),
        "studies": [_json_safe(s.as_json()) for s in report.studies],
        "files": [],
    }
    if history is not None:
        doc["history"] = history
    if opts.invocation is not None:
        doc["audit"] = audit_json(opts.invocation, report.warning_texts())
    _stream_report(Path(opts.out_dir) / REPORT_NAME, doc, files(), opts.modes)


def read_files(
    inputs: list[Path],
    out_dir: Path | None = None,
    deid: DeidOptions | None = None,
    progress: Progress | None = None,
) -> RecordSource:
    """A :data:`RecordSource` of every file under ``inputs`` (``out_dir`` not entered), read in
    batches on the executor it is handed, de-identified with ``deid``; ``progress`` is told each
    batch read (stage "read", of all the files: counted first, as an incremental run does)."""
    exclude = [out_dir] if out_dir is not None else []

    def source(executor: Executor | None) -> Iterator[list[PackedRecord | FileProblem]]:
        total = sum(1 for _ in iter_files(inputs, exclude=exclude)) if progress else None
        batches = ((batch, deid) for batch in batched(iter_files(inputs, exclude=exclude), _BATCH))
        for results, _ in bounded(executor, _read_batch, batches, window=16):
            if progress:
                progress("read", len(results), total)
            yield results

    return source


def select_studies(index: StudyIndex, select: StudySelection) -> list[str]:
    """The studies of ``index`` that ``select`` keeps; the files of the others are skipped."""
    uids = index.study_uids()
    if not select.active:
        return uids
    kept = []
    for uid in uids:
        why = select.reason(index.records(uid))
        if why is None:
            kept.append(uid)
        else:
            index.set_outcome(index.study_paths(uid), FileStatus.SKIPPED, why)
    return kept


DEID_MARK = "deidentified"
"""``<out>/.fhirimg/deidentified``: the fingerprint (:attr:`fhirimg.deid.DeidOptions.fingerprint`,
never the key) of the de-identification the catalog's records were read with; empty or absent:
none."""


def _read_mark(path: Path) -> str:
    try:
        return path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return ""


RecordSource = Callable[
    [Executor | None], Iterable[Sequence[InstanceRecord | PackedRecord | FileProblem]]
]
"""Gives batches of reading results; may use the executor it is handed to read in parallel."""

StudyHook = Callable[[StudyOutcome, Path], StudyOutcome]
"""Called in the main process for each study written (``outcome``, the folder its bundle files
are in), before the next study is taken; returns the outcome to report (e.g. with push status).
``convert --push`` pushes and deletes the files here."""


class StudyFetch(Protocol):
    """Brings the instance files of a source that is not files (a PACS) while its studies are
    written with ``binary``/``media``, so that temporary storage holds a few studies at a time,
    never the whole run (:mod:`fhirimg.dimse.fetch`, :mod:`fhirimg.dicomweb.fetch`)."""

    def fetch(self, records: list[InstanceRecord]) -> list[InstanceRecord]:
        """The study's records, each with ``path`` naming a local file of its bytes (fetched
        now); a record whose bytes could not be fetched keeps its path (the study then fails,
        naming it)."""
        ...

    def release(self, study_instance_uid: str) -> None:
        """The study is written: its files may go."""
        ...


def _make_folders(opts: ConvertOptions, bundle_dir: Path | None) -> None:
    for folder in (Path(opts.out_dir), bundle_dir or Path(opts.out_dir)):
        if not folder.is_dir():  # made owner-only; an existing one (or a link to one) is kept
            jsonio.make_folder(folder, opts.modes)


def _options_digest(opts: ConvertOptions, streaming: bool) -> str:
    """What the bundles are built with: when it changes, every study is rewritten. ``streaming``
    (``convert --push``: bundles pushed, not kept) counts too, so that a plain run after one
    writes every bundle."""
    key = opts.deid.fingerprint if opts.deid is not None else None  # the key, not shown
    what = repr((opts.fhir_version, opts.mapping, opts.pixels(), streaming, key))
    return hashlib.sha256(what.encode("utf-8", "surrogateescape")).hexdigest()[:16]


class _IncrementalRun:
    """One :func:`convert` run over the catalog: walk, read what changed, write what it touched,
    report the folder. The steps are the methods, in the order :meth:`run` calls them."""

    def __init__(
        self,
        catalog: Catalog,
        inputs: list[Path],
        opts: ConvertOptions,
        progress: Progress | None,
        bundle_dir: Path | None,
    ) -> None:
        self.catalog = catalog
        self.inputs = inputs
        self.opts = opts
        self.progress = progress
        self.out_dir = Path(opts.out_dir)
        self.files_dir = bundle_dir or self.out_dir
        self.streaming = bundle_dir is not None
        self.jobs = resolve_jobs(opts.jobs)
        self.pruned = self.removed = self.studies_unchanged = self.unstatable = 0
        self.stopped: str | None = None  # why writing stopped (the disk is full)
        self.reid: ReidMap | None = None
        if opts.reid_map is not None:
            from fhirimg.deid.files import ReidMap

            self.reid = ReidMap()

    def run(self, on_study: StudyHook | None) -> ConvertReport:
        catalog, opts = self.catalog, self.opts
        executor, self.jobs = _executor(opts, self.jobs)  # a cluster that cannot start: no run
        try:
            if catalog.use_options(_options_digest(opts, self.streaming)):
                log.info("first run, or other conversion options than last time: every study")
            catalog.begin_run(self.inputs, full=opts.full)
            self._read_new(executor)
            missing = self._missing()
            if not self.streaming:
                catalog.mark_dirty(self._bundles_gone())
            written = self._write_changed(executor, on_study)
        finally:
            if executor is not None:
                executor.shutdown(cancel_futures=True)
        seen = catalog.run_counts()
        summary = RunSummary(
            full=opts.full,
            new=seen["new"],
            changed=seen["changed"],
            unchanged=seen["unchanged"],
            missing=len(missing),
            pruned=self.pruned,
            written=sum(1 for s in written if s.ok),
            failed=sum(1 for s in written if not s.ok),
            removed=self.removed,
            studies_unchanged=self.studies_unchanged,
            unstatable=self.unstatable,
        )
        report = self._report(summary, written, missing)
        report.ndjson = _ndjson(opts, self.files_dir, report)
        catalog.end_run(summary.counts())
        _write_folder_report(self.out_dir / REPORT_NAME, report, catalog, missing, opts)
        if self.reid is not None and opts.reid_map is not None:
            self.reid.write(opts.reid_map, merge=True)
        return report

    # --- 1. walk: read only new and changed files ---

    def _read_new(self, executor: Executor | None) -> None:
        catalog, progress = self.catalog, self.progress
        exclude = [self.out_dir]
        total = sum(1 for _ in iter_files(self.inputs, exclude=exclude)) if progress else None
        sent: deque[tuple[list[str], list[os.stat_result | None]]] = deque()

        deid, reid = self.opts.deid, self.reid is not None

        def batches() -> Iterator[tuple[list[str], DeidOptions | None, bool]]:
            paths: list[str] = []
            stats: list[os.stat_result | None] = []
            for item in self._to_read(exclude):
                if progress and item.skipped:
                    progress("read", item.skipped, total)
                if item.path is None:
                    continue
                paths.append(item.path)
                stats.append(item.st)
                if len(paths) >= _BATCH:
                    sent.append((paths, stats))
                    yield (paths, deid, reid)
                    paths, stats = [], []
            if paths:
                sent.append((paths, stats))
                yield (paths, deid, reid)

        for results, entries in bounded(executor, _read_batch, batches(), window=self.jobs * 4):
            if self.reid is not None:
                for entry in entries:
                    self.reid.add(entry)
            paths, stats = sent.popleft()
            catalog.record_many(zip(paths, stats, results, strict=True))
            if progress:
                progress("read", len(results), total)
        catalog.commit()  # the marks of the files seen unchanged

    def _to_read(self, exclude: list[Path]) -> Iterator[_ToRead]:
        """The files to read, each with its stat taken *before* reading (a change while it is
        read then shows next run), classified a few hundred at a time. A path that cannot be
        stat'ed (gone, or never there) is read too: :func:`fhirimg.scan.read_file` reports it."""
        for chunk in batched(iter_files(self.inputs, exclude=exclude), _CLASSIFY):
            stats: list[tuple[str, os.stat_result]] = []
            skipped = 0
            for path in chunk:
                try:
                    stats.append((path, os.stat(path)))  # a link: its target is what is read
                except OSError:
                    self.unstatable += 1
                    yield _ToRead(path, None, 0)
            for (path, st), change in zip(stats, self.catalog.classify_many(stats), strict=True):
                if change is Change.UNCHANGED:
                    skipped += 1
                else:
                    yield _ToRead(path, st, 0)
            if skipped:
                yield _ToRead(None, None, skipped)

    # --- 2. files that disappeared ---

    def _missing(self) -> list[CatalogEntry]:
        """Recorded files that are gone: kept (reported), or with ``prune_missing`` forgotten,
        which makes their studies dirty."""
        missing = self.catalog.missing()
        if self.opts.prune_missing and missing:
            self.catalog.prune([m.path for m in missing])
            self.pruned = len(missing)
            return []
        return missing

    def _bundles_gone(self) -> list[str]:
        """Studies written before whose bundle files are no longer in the folder (deleted by
        hand, say): written again, although no file of theirs changed."""
        gone = []
        for study in self.catalog.studies():
            doc = study.outcome
            if study.dirty or not doc or doc.get("status") != "written":
                continue
            names = [doc.get("bundle"), *doc.get("parts", ())]
            if not all(isinstance(n, str) and (self.files_dir / n).is_file() for n in names):
                gone.append(study.study_instance_uid)
        return gone

    # --- 3. write the studies that changed ---

    def _write_changed(
        self, executor: Executor | None, on_study: StudyHook | None
    ) -> list[StudyOutcome]:
        catalog, opts, progress = self.catalog, self.opts, self.progress
        changed = catalog.studies_changed()
        total_studies = len(catalog.studies())
        written: list[StudyOutcome] = []
        with StudyIndex(work_dir(self.out_dir)) as index:
            for uid in changed:
                index.add_many(catalog.packed_of_study(uid))
            index.resolve_duplicates()
            catalog.set_outcomes(index.file_outcomes())  # duplicates and UID conflicts
            present = index.study_uids()
            for uid in sorted(set(changed) - set(present)):  # no file left: no bundle either
                _remove_bundles(self.files_dir, uid)
                catalog.forget_study(uid)
            self.removed = len(set(changed) - set(present))
            self.studies_unchanged = total_studies - len(set(changed))
            pixels = opts.pixels()
            stopped: list[str] = []  # the disk is full: no further study is taken
            tasks = (
                (index.blobs(uid), opts.mapping, opts.fhir_version, str(self.files_dir), pixels)
                + (True,)
                for uid in present
                if not stopped
            )

            reserve = self._reserve()

            def stop(why: str) -> None:
                if not stopped:
                    stopped.append(why)
                    reserve.release()  # room for the catalog and report.json
                    log.info("%s: no further study is written in this run", why)

            def done(outcome: StudyOutcome) -> None:
                uid = outcome.study_instance_uid
                _log_files(outcome)
                files = _file_outcomes(index.study_paths(uid), outcome)
                # A study whose push failed stays dirty too: the next run pushes it again.
                ok = outcome.ok and not outcome.push_failed
                doc = _json_safe(outcome.as_json())
                try:
                    catalog.study_done(uid, ok=ok, outcome=doc, files=files)
                except CatalogError as exc:  # the catalog's journal found the disk full first
                    if not _sqlite_full(exc) or stopped:
                        raise
                    stop(f"disk full writing {_printable(str(catalog.path))}")
                    catalog.study_done(uid, ok=ok, outcome=doc, files=files)  # in the reserve
                written.append(outcome)

            write: Callable[..., StudyOutcome] = _write_study
            if _render_in_pool(executor, pixels, len(present), self.jobs):
                assert executor is not None
                write = functools.partial(_write_study, render=(executor, self.jobs))
                studies_pool: Executor | None = None
            else:
                studies_pool = executor
            try:
                for outcome in bounded(studies_pool, write, tasks, window=self.jobs * 2):
                    if outcome.out_of_space:
                        stop(outcome.errors[0])
                    if on_study is not None and outcome.ok:
                        outcome = on_study(outcome, self.files_dir)
                    done(outcome)
                    if progress:
                        progress("write", 1, len(present))
                if stopped:  # the studies not taken: reported, and still dirty for the next run
                    taken = {s.study_instance_uid for s in written}
                    for uid in present:
                        if uid not in taken:
                            paths, blobs = index.study_paths(uid), index.blobs(uid)
                            done(_not_written(uid, paths, blobs, stopped[0]))
            finally:
                reserve.release()
            self.stopped = stopped[0] if stopped else None
        return written

    def _reserve(self) -> jsonio.SpaceReserve:
        """Space for the catalog's last writes and report.json, held while bundles are written
        (released when the disk fills up, and at the end)."""
        files = sum(self.catalog.counts().values())
        size = RESERVE_BASE + RESERVE_PER_FILE * files
        reserve = jsonio.SpaceReserve(work_dir(self.out_dir) / "reserve", size)
        if not reserve.hold():
            log.info("could not set %d bytes aside for report.json in %s", size, self.out_dir)
        return reserve

    # --- 4. the report of the whole folder ---

    def _report(
        self, summary: RunSummary, written: list[StudyOutcome], missing: list[CatalogEntry]
    ) -> ConvertReport:
        now = {s.study_instance_uid: s for s in written}
        studies = []
        for study in self.catalog.studies():
            if study.study_instance_uid in now:
                studies.append(now[study.study_instance_uid])
            elif study.outcome is not None:
                studies.append(StudyOutcome.from_json(study.outcome))
        failures = [
            (_printable(e.path), _printable(e.detail or "")) for e in self.catalog.failures(100)
        ]
        counts = self.catalog.counts()
        return ConvertReport(
            self.out_dir,
            counts,
            studies,
            failures,
            run=summary,
            missing=len(missing),
            written=written,
            stopped=self.stopped,
        )


@dataclass(frozen=True)
class _ToRead:
    """A file to read and its stat (``path`` None: only a count of files skipped)."""

    path: str | None
    st: os.stat_result | None
    skipped: int  # unchanged files passed over just before this one


def _ndjson(opts: ConvertOptions, files_dir: Path, report: ConvertReport) -> dict[str, int] | None:
    """With ``output_format="ndjson"``: the NDJSON file set of every study the folder holds
    (:func:`fhirimg.ndjson.write_ndjson`), and its lines per type."""
    if opts.output_format != "ndjson":
        return None
    from fhirimg.ndjson import StudyFiles, write_ndjson

    studies = (
        StudyFiles(s.study_instance_uid, (s.bundle, *s.parts))
        for s in report.studies
        if s.ok and s.bundle
    )
    return write_ndjson(files_dir, Path(opts.out_dir), studies, opts.modes)


def _file_outcomes(paths: list[str], outcome: StudyOutcome) -> list[tuple[str, FileStatus, str]]:
    """The outcome of each file of a study: converted into its bundle, or failed with it; a file
    left out of its study (``outcome.dropped``) failed, with its own reason."""
    dropped = dict(outcome.dropped)
    if outcome.ok:
        return [
            (p, FileStatus.FAILED, dropped[p])
            if p in dropped
            else (p, FileStatus.CONVERTED, str(outcome.bundle))
            for p in paths
        ]
    reason = "study not converted: " + "; ".join(outcome.errors[:3])
    return [(p, FileStatus.FAILED, dropped.get(p, reason)) for p in paths]


def _log_files(outcome: StudyOutcome) -> None:
    """``-v``: the study's mapping warnings (time left out, a Patient ID without a system, an
    unparseable date, ...) and what was cleaned in which file, each with its code
    (:func:`fhirimg.audit.warning_code`), and which files were left out of their study. The
    warnings never quote patient data (they name the element, not its value)."""
    where = outcome.bundle or f"study {outcome.study_instance_uid}"
    for warning in outcome.warnings:
        log.info("%s: %s [%s]", where, warning, warning_code(warning))
    for path, warning in outcome.file_warnings:
        log.info("%s: %s [%s]", _printable(path), warning, warning_code(warning))
    for path, reason in outcome.dropped:
        log.info("%s: left out of its study: %s", _printable(path), reason)


def _file_warnings(studies: Iterable[StudyOutcome]) -> dict[str, list[str]]:
    """The warnings about single files (text cleaned), by printable path, for report.json."""
    out: dict[str, list[str]] = {}
    for study in studies:
        for path, warning in study.file_warnings:
            out.setdefault(_printable(path), []).append(_printable(warning))
    return out


def _remove_bundles(folder: Path, study_uid: str) -> None:
    """Delete a study's bundle, its part files and its Binaries folder (a study with no file
    left). A ``.binaries`` that is a symbolic link is not followed (rmtree refuses links)."""
    name = ids.bundle_name(study_uid)
    (folder / name).unlink(missing_ok=True)
    remove_stale_parts(folder, name, keep=0)
    binaries = folder / f"{name.removesuffix('.json')}.binaries"
    if binaries.is_symlink():
        binaries.unlink()
    elif binaries.is_dir():
        shutil.rmtree(binaries)
    log.info("study %s has no file left: bundle %s removed", study_uid, name)


def _printable(text: str) -> str:
    """Text fit for JSON: file-name bytes that are not UTF-8 (``os.fsdecode``'s surrogates)
    written as ``\\xNN``, the documented escaped form (docs/incremental.md).

    >>> _printable("scan-\\udcff.dcm"), _printable("plain.dcm")
    ('scan-\\\\xff.dcm', 'plain.dcm')
    """
    try:
        text.encode("utf-8")
        return text  # the common case, and the fast one
    except UnicodeEncodeError:
        pass
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that is not an undecodable byte: keep its code
        raw = text.encode("utf-8", "surrogatepass")
    return raw.decode("utf-8", "backslashreplace")


def _json_safe(value: Any) -> Any:
    """``value`` with every string :func:`_printable` (outcomes carry file paths)."""
    if isinstance(value, str):
        return _printable(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def convert_records(
    source: RecordSource,
    options: ConvertOptions | None = None,
    progress: Progress | None = None,
    *,
    on_study: StudyHook | None = None,
    bundle_dir: Path | None = None,
    fetch: StudyFetch | None = None,
) -> ConvertReport:
    """The pipeline after reading, for sources that are not files (a DICOMweb server's
    metadata, a DIMSE PACS's C-FIND answers): group the records ``source`` yields by study,
    build, validate and write each study's bundle, and write ``report.json`` (of this run: no
    catalog, every study written).

    It gets the same bundles as :func:`convert` for the same records. It holds the folder's lock;
    a catalog of the folder (from file runs) has every study marked to be rewritten, since the
    bundles and ``report.json`` here replace what it describes. Bundles go to ``bundle_dir``
    (default: the output folder, where ``report.json`` always goes); ``on_study`` sees each
    written study before the next one is taken. With ``binary``/``media``, ``fetch`` brings each
    study's instance files just before it is written (report.json keeps the source's names).
    """
    opts = options or ConvertOptions()
    opts.check()  # fail early on bad options
    out_dir = Path(opts.out_dir)
    _make_folders(opts, bundle_dir)
    with FolderLock(out_dir, opts.lock_wait):
        clean_leftovers(out_dir, keep=bundle_dir)
        if (out_dir / STATE_DIR / CATALOG_NAME).is_file():
            with Catalog.open(out_dir, full=opts.full) as catalog:
                catalog.use_options("written by a run without the catalog")
        if opts.deid is not None:
            from fhirimg.deid.pixels import DeidFetch, deidentified_source

            originals: dict[str, InstanceRecord] = {}
            keep = fetch is not None or opts.reid_map is not None
            source = deidentified_source(source, opts.deid, originals if keep else None)
            fetch = DeidFetch(fetch, originals) if fetch is not None else None
            report = _convert_uncatalogued(source, opts, progress, on_study, bundle_dir, fetch)
            if opts.reid_map is not None:
                from fhirimg.deid.files import ReidMap, reid_entry

                reid = ReidMap()
                for original in originals.values():
                    reid.add(reid_entry(original, opts.deid))
                reid.write(opts.reid_map, merge=True)
            return report
        return _convert_uncatalogued(source, opts, progress, on_study, bundle_dir, fetch)


def _fetched(blobs: list[bytes], fetch: StudyFetch) -> list[bytes]:
    """A study's packed records with the paths of the files ``fetch`` brought."""
    records = fetch.fetch(unpack(blobs))
    return [PackedRecord.of(record).blob for record in records]


def _convert_uncatalogued(
    source: RecordSource,
    opts: ConvertOptions,
    progress: Progress | None,
    on_study: StudyHook | None,
    bundle_dir: Path | None,
    fetch: StudyFetch | None = None,
) -> ConvertReport:
    pixels = opts.pixels()
    out_dir = Path(opts.out_dir)
    files_dir = bundle_dir or out_dir
    executor, jobs = _executor(opts, resolve_jobs(opts.jobs))
    try:
        with StudyIndex(work_dir(out_dir)) as index:
            for results in source(executor):
                index.add_many(results)
            index.resolve_duplicates()

            outcomes: list[StudyOutcome] = []
            uids = select_studies(index, opts.select)
            stopped: list[str] = []  # the disk is full: no further study is taken
            if fetch is not None and not pixels.active:
                fetch = None  # only Binaries and rendered images need the bytes
            tasks = (
                (
                    _fetched(index.blobs(uid), fetch) if fetch else index.blobs(uid),
                    opts.mapping,
                    opts.fhir_version,
                    str(files_dir),
                    pixels,
                )
                for uid in uids
                if not stopped
            )

            def done(outcome: StudyOutcome) -> None:
                _log_files(outcome)
                paths_of_study = index.study_paths(outcome.study_instance_uid)
                for path, status, detail in _file_outcomes(paths_of_study, outcome):
                    index.set_outcome([path], status, detail)
                outcomes.append(outcome)

            write: Callable[..., StudyOutcome] = _write_study
            studies_pool = executor
            if _render_in_pool(executor, pixels, len(uids), jobs):
                assert executor is not None
                write = functools.partial(_write_study, render=(executor, jobs))
                studies_pool = None
            for outcome in bounded(studies_pool, write, tasks, window=jobs * 2):
                if fetch is not None:
                    fetch.release(outcome.study_instance_uid)
                if outcome.out_of_space and not stopped:
                    stopped.append(outcome.errors[0])
                if on_study is not None and outcome.ok:
                    outcome = on_study(outcome, files_dir)
                done(outcome)
                if progress:
                    progress("write", 1, len(uids))
            taken = {s.study_instance_uid for s in outcomes}
            for uid in uids if stopped else ():
                if uid not in taken:
                    done(_not_written(uid, index.study_paths(uid), index.blobs(uid), stopped[0]))

            failures = [(_printable(p), _printable(r)) for p, r in index.failures(100)]
            report = ConvertReport(
                out_dir,
                index.counts(),
                outcomes,
                failures,
                written=outcomes,
                stopped=stopped[0] if stopped else None,
            )
            report.ndjson = _ndjson(opts, files_dir, report)
            _write_report(out_dir / REPORT_NAME, report, index, opts)
    finally:
        if executor is not None:
            executor.shutdown(cancel_futures=True)
    return report


def _write_report(
    path: Path, report: ConvertReport, index: StudyIndex, opts: ConvertOptions
) -> None:
    """``report.json`` of a run without the catalog: summary, studies, and every input file
    with its status (sorted by path). Deterministic like the bundles: no timestamps, but for
    the ``audit`` section at the end (with an invocation)."""
    render_failed = dict(report.render_failures)
    warned = _file_warnings(report.studies)

    def files() -> Iterator[JSON]:
        for file_path, status, detail in index.file_outcomes():
            item: JSON = {"path": _printable(file_path), "status": status}
            key = "bundle" if status == FileStatus.CONVERTED.value else "reason"
            item[key] = _printable(detail)
            if file_path in render_failed:
                item["renderError"] = _printable(render_failed[file_path])
            if item["path"] in warned:
                item["warnings"] = warned[item["path"]]
            yield item

    doc = {
        "fhirVersion": get_release(opts.fhir_version).fhir_version,
        "summary": report.summary(),
        "studies": [_json_safe(s.as_json()) for s in report.studies],
        "files": [],
    }
    if opts.invocation is not None:
        doc["audit"] = audit_json(opts.invocation, report.warning_texts())
    _stream_report(path, doc, files(), opts.modes)


def _write_folder_report(
    path: Path,
    report: ConvertReport,
    catalog: Catalog,
    missing: list[CatalogEntry],
    opts: ConvertOptions,
) -> None:
    """``report.json`` of an output folder with a catalog: the whole folder (``summary``,
    ``studies``, ``files``: every file recorded, with ``"missing": true`` for those gone), this
    run (``run``) and the history of runs (``history``, oldest first).

    Deterministic except ``history`` and ``audit`` (with an invocation), the last sections:
    they hold timestamps and fhirimg versions; everything before them is the same bytes for the
    same folder and run.
    """
    gone = {m.path for m in missing}
    render_failed = {
        _printable(p): _printable(r) for s in report.studies for p, r in s.media_failures
    }
    warned = _file_warnings(report.studies)

    def files() -> Iterator[JSON]:
        for entry in catalog.entries():
            status = entry.status.value if entry.status is not None else "pending"
            item: JSON = {"path": _printable(entry.path), "status": status}
            if entry.detail is not None:
                key = "bundle" if entry.status is FileStatus.CONVERTED else "reason"
                item[key] = _printable(entry.detail)
            if entry.path in gone:
                item["missing"] = True
            shown = _printable(entry.path)
            if shown in render_failed:
                item["renderError"] = render_failed[shown]
            if shown in warned:
                item["warnings"] = warned[shown]
            yield item

    doc = {
        "fhirVersion": get_release(opts.fhir_version).fhir_version,
        "summary": report.summary(),
        "studies": [_json_safe(s.as_json()) for s in report.studies],
        "files": [],
        "history": [_run_json(r) for r in catalog.runs()],
    }
    if opts.invocation is not None:
        doc["audit"] = audit_json(opts.invocation, report.warning_texts())
    _stream_report(path, doc, files(), opts.modes)


def _run_json(run: RunRecord) -> JSON:
    return {
        "run": run.id,
        "started": run.started,
        "ended": run.ended,
        "fhirimgVersion": run.version,
        "full": run.full,
        "inputs": list(run.inputs),
        "counts": run.counts,
    }


def _stream_report(path: Path, doc: JSON, files: Iterator[JSON], modes: jsonio.Modes) -> None:
    """Write ``doc`` with its top-level ``"files": []`` filled from ``files``, a thousand entries
    at a time, into exactly the bytes ``jsonio.dumps`` would give with the list inline: memory
    does not grow with the number of files."""
    text = jsonio.dumps(doc)
    marker = b'\n  "files": []'
    at = text.index(marker) + len(marker) - len(b"[]")
    with jsonio.atomic_writer(path, mode=modes) as fh:
        fh.write(text[:at])
        first = True
        for chunk in batched(files, 1000):
            # dumps of a list: "[\n  {...},\n  {...}\n]"; its items, two spaces deeper
            items = jsonio.dumps(chunk)[2:-3].replace(b"\n", b"\n  ")
            fh.write((b"[\n  " if first else b",\n  ") + items)
            first = False
        fh.write(b"[]" if first else b"\n  ]")
        fh.write(text[at + len(b"[]") :])
