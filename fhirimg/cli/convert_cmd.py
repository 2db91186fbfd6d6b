"""``fhirimg convert``: read options, call :func:`fhirimg.convert.convert`, print, exit."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from dataclasses import replace
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import typer
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from fhirimg.cli import _dicomweb as _dw
from fhirimg.cli import _dimse
from fhirimg.cli._app import (
    CONVERT_RESUMABLE,
    RESUMABLE,
    JsonOpt,
    QuietOpt,
    VerboseOpt,
    app,
    configure_logging,
    err_console,
    exit_on_error,
    fail,
    invocation,
    print_json,
    require_paths,
    shown,
)
from fhirimg.cli._auth import DICOMWEB, FHIR, check_url
from fhirimg.cli._deid import PANEL as DEID_PANEL
from fhirimg.cli._deid import Deid, DeidentifyOpt
from fhirimg.cli._help import PanelledCommand
from fhirimg.cli._options import (
    MAPPING_PANEL,
    PIXELS_PANEL,
    AllOrNothingOpt,
    BinaryOpt,
    CodingSystemOpt,
    DicomwebAuth,
    EndpointUrlOpt,
    FhirAuth,
    FhirVersion,
    FhirVersionOpt,
    GroupReadableOpt,
    JobsOpt,
    MediaOpt,
    Network,
    NoCapabilityCheckOpt,
    NoMeasurementsOpt,
    PatientIdSystemOpt,
    StrictOpt,
    TimezoneOpt,
    option_groups,
    parse_coding_systems,
    push_options,
)
from fhirimg.cluster import ClusterOptions
from fhirimg.convert import (
    DEFAULT_OUT,
    REPORT_NAME,
    ConvertOptions,
    ConvertReport,
    convert,
)
from fhirimg.convert import Progress as ProgressCallback
from fhirimg.errors import ConfigError, FhirimgError
from fhirimg.exitcodes import ExitCode
from fhirimg.images.binary import BinaryMode
from fhirimg.images.rendered import MediaContent, MediaOptions, MediaPer
from fhirimg.mapping import MapOptions
from fhirimg.objects import is_url
from fhirimg.push import PushOptions
from fhirimg.safetext import redact_url
from fhirimg.select import StudySelection

if TYPE_CHECKING:  # httpx comes with it: only a DICOMweb or PACS run needs it
    from fhirimg.dicomweb import StudyQuery

log = logging.getLogger(__name__)

_PUSH_PANEL = "Convert and push in one pass"
_SCALE_PANEL = "Scale out (docs/scale-out.md)"
_INPUT_PANEL = "Input and output"
_SELECT_PANEL = "Selecting studies, dry run"


class OutputFormat(StrEnum):
    """``--format`` choices."""

    BUNDLE = "bundle"
    NDJSON = "ndjson"


class Engine(StrEnum):
    """``--engine`` choices."""

    LOCAL = "local"
    DASK = "dask"


class MediaFormat(StrEnum):
    """``--media-format`` choices."""

    PNG = "png"
    JPEG = "jpeg"


def parse_patient_id_systems(values: list[str]) -> tuple[str | None, tuple[tuple[str, str], ...]]:
    """``--patient-id-system`` values: a bare URI is the default system; ``NAME=URI`` maps an
    Issuer of Patient ID (0010,0021) local name to a system.

    >>> parse_patient_id_systems(["urn:oid:1.2.3", "HOSP=http://hosp.example/mrn"])
    ('urn:oid:1.2.3', (('HOSP', 'http://hosp.example/mrn'),))
    """
    default: str | None = None
    mapping: list[tuple[str, str]] = []
    for value in values:
        name, sep, system = value.partition("=")
        if sep and name and ":" not in name:
            mapping.append((name, system))
        else:
            default = value
    return default, tuple(mapping)


class _ConvertCommand(PanelledCommand):
    """``convert --help`` in the groups of docs/cli.md#fhirimg-convert."""

    default_panel = _INPUT_PANEL
    moved = {"no_capability_check": _PUSH_PANEL}  # a check of the --push server
    panel_order = (
        _SCALE_PANEL,
        _SELECT_PANEL,
        MAPPING_PANEL,
        PIXELS_PANEL,
        DEID_PANEL,
        _dw.PANEL,
        _dimse.PANEL,
        _PUSH_PANEL,
    )


@app.command("convert", cls=_ConvertCommand)
@option_groups(auth=FhirAuth, network=Network, dicomweb_auth=DicomwebAuth, deid=Deid)
def convert_command(
    *,
    paths: Annotated[
        list[str] | None,
        typer.Argument(
            help="DICOM files and/or folders (searched recursively; DICOM is recognised by content), "
            "or object-storage URLs (s3://bucket/prefix, gs://..., file://...). "
            "Not with --from-dicomweb.",
            metavar="PATH_OR_URL...",
            show_default=False,
        ),
    ] = None,
    out: Annotated[
        str,
        typer.Option(
            "--out",
            "-o",
            metavar="PATH_OR_URL",
            help="Folder for the bundles and report.json, or an object-storage URL "
            "(s3://bucket/prefix) they are put under at the end.",
        ),
    ] = str(DEFAULT_OUT),
    storage_option: Annotated[
        list[str] | None,
        typer.Option(
            "--storage-option",
            metavar="KEY=VALUE",
            help="An fsspec option for URL inputs and --out (repeatable), e.g. "
            "endpoint_url=https://minio.example:9000; credentials are best left to the "
            "usual environment (AWS_ACCESS_KEY_ID, AWS_PROFILE, GOOGLE_APPLICATION_CREDENTIALS).",
            rich_help_panel=_SCALE_PANEL,
        ),
    ] = None,
    fhir_version: FhirVersionOpt = FhirVersion.R4,
    output_format: Annotated[
        OutputFormat,
        typer.Option(
            "--format",
            help="bundle: one transaction Bundle per study; ndjson: the bundles and, in "
            "<out>/ndjson/, one NDJSON file per resource type for FHIR Bulk Data $import "
            "(literal references, Patients once). See docs/scale-out.md.",
            case_sensitive=False,
        ),
    ] = OutputFormat.BUNDLE,
    dicomweb_url: EndpointUrlOpt = None,
    engine: Annotated[
        Engine,
        typer.Option(
            "--engine",
            help="local: a process pool on this machine (--jobs); dask: the read and write "
            "tasks on a Dask cluster (needs fhirimg[dask]), same output.",
            case_sensitive=False,
            rich_help_panel=_SCALE_PANEL,
        ),
    ] = Engine.LOCAL,
    scheduler: Annotated[
        str | None,
        typer.Option(
            "--scheduler",
            metavar="tcp://HOST:PORT",
            help="With --engine dask: the Dask scheduler to use. Default: start a local cluster "
            "(--workers).",
            rich_help_panel=_SCALE_PANEL,
        ),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            min=1,
            help="With --engine dask and no --scheduler: worker processes of the local cluster "
            "(default 2).",
            rich_help_panel=_SCALE_PANEL,
        ),
    ] = None,
    push_concurrency: Annotated[
        int | None,
        typer.Option(
            "--push-concurrency",
            min=1,
            metavar="N",
            help="With --engine dask and --push: the workers push the studies they write, at "
            "most N transactions in flight across the cluster (they then hold the "
            "credentials). Default: this process pushes.",
            rich_help_panel=_SCALE_PANEL,
        ),
    ] = None,
    timezone: TimezoneOpt = None,
    no_measurements: NoMeasurementsOpt = False,
    patient_id_system: PatientIdSystemOpt = None,
    coding_system: CodingSystemOpt = None,
    accession_system: Annotated[
        list[str] | None,
        typer.Option(
            "--accession-system",
            metavar="ISSUER=URI",
            help="ISSUER=URI: identifier system for Accession Numbers whose Issuer of Accession "
            "Number (0008,0051) has only this local namespace (0040,0031). Repeatable.",
            rich_help_panel=MAPPING_PANEL,
        ),
    ] = None,
    jobs: JobsOpt = 0,
    push_url: Annotated[
        str | None,
        typer.Option(
            "--push",
            help="Push each study's bundle to this FHIR server as soon as it is built (one "
            "streaming pass; no bundle files kept, report.json and the push journal are). "
            "Credentials, TLS and retries as for 'fhirimg push'.",
            rich_help_panel=_PUSH_PANEL,
        ),
    ] = None,
    no_capability_check: NoCapabilityCheckOpt = False,
    strict: StrictOpt = False,
    all_or_nothing: AllOrNothingOpt = False,
    binary: BinaryOpt = None,
    max_entries: Annotated[
        int | None,
        typer.Option(
            "--max-entries",
            min=1,
            help="Split a study's Binary/image entries into <stem>.part-N.json files so that no "
            "bundle has more entries (Azure FHIR takes 500). Default: no limit.",
            rich_help_panel=PIXELS_PANEL,
        ),
    ] = None,
    max_bundle_mb: Annotated[
        float | None,
        typer.Option(
            "--max-bundle-mb",
            min=0.001,
            help="Split a study's Binary/image entries into <stem>.part-N.json files so that no "
            "bundle file is larger (MB = 1,000,000 bytes; Google Healthcare takes 50). "
            "Default: no limit.",
            rich_help_panel=PIXELS_PANEL,
        ),
    ] = None,
    media: MediaOpt = False,
    media_per: Annotated[
        MediaPer,
        typer.Option(
            "--media-per",
            help="With --media: an image for every image instance, or one per series (its "
            "middle instance).",
            case_sensitive=False,
            rich_help_panel=PIXELS_PANEL,
        ),
    ] = MediaPer.INSTANCE,
    media_format: Annotated[
        MediaFormat,
        typer.Option(
            "--media-format",
            help="With --media: png (lossless) or jpeg (quality 90, smaller).",
            case_sensitive=False,
            rich_help_panel=PIXELS_PANEL,
        ),
    ] = MediaFormat.PNG,
    media_size: Annotated[
        int | None,
        typer.Option(
            "--media-size",
            min=1,
            help="With --media: fit images into N x N pixels (thumbnails; never enlarged). "
            "Default: the image's own size.",
            rich_help_panel=PIXELS_PANEL,
        ),
    ] = None,
    media_frame: Annotated[
        int | None,
        typer.Option(
            "--media-frame",
            min=1,
            help="With --media: the frame (1-based) of multi-frame images to render. Default: "
            "the middle frame.",
            rich_help_panel=PIXELS_PANEL,
        ),
    ] = None,
    media_content: Annotated[
        MediaContent,
        typer.Option(
            "--media-content",
            help="With --media: 'inline' puts the image in the attachment's data; 'binary' "
            "puts it in a Binary entry the attachment's url names (Binary/<id>).",
            case_sensitive=False,
            rich_help_panel=PIXELS_PANEL,
        ),
    ] = MediaContent.INLINE,
    group_readable: GroupReadableOpt = False,
    full: Annotated[
        bool,
        typer.Option(
            "--full",
            help="Ignore the output folder's catalog: read every file again and rewrite every "
            "bundle (the catalog is rebuilt; the cure for a corrupt one). Default: only new and "
            "changed files are read, only the studies they touch rewritten.",
        ),
    ] = False,
    prune_missing: Annotated[
        bool,
        typer.Option(
            "--prune-missing",
            help="Drop files that disappeared since an earlier run from their studies' bundles "
            "(rewritten without them). Default: they stay, listed as missing in report.json.",
        ),
    ] = False,
    wait: Annotated[
        float,
        typer.Option(
            "--wait",
            min=0,
            metavar="SECONDS",
            help="When another fhirimg run is writing to the output folder, wait up to this "
            "long for it to finish (default 0: exit 3 at once, naming the other process).",
        ),
    ] = 0,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Read the headers and list the studies (Study Instance UIDs; Patient IDs with "
            "-v) and counts a run would write, and where; write nothing. Exit 4: nothing to "
            "convert. File input only.",
            rich_help_panel=_SELECT_PANEL,
        ),
    ] = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = 0,
    from_dicomweb: Annotated[
        str | None,
        typer.Option(
            "--from-dicomweb",
            help="Convert from a DICOMweb server (QIDO-RS + WADO-RS metadata; the instances only "
            "for --binary/--media) "
            "instead of files; the ImagingStudy's Endpoint is this URL unless --dicomweb-url.",
            rich_help_panel=_dw.PANEL,
        ),
    ] = None,
    study: Annotated[
        list[str] | None,
        typer.Option(
            "--study",
            help="With --from-dicomweb or --from-pacs: only this Study Instance UID (repeatable).",
            rich_help_panel=_dw.PANEL,
        ),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(
            "--since",
            metavar="YYYYMMDD",
            help="Only studies of this Study Date (0008,0020) or later (YYYYMMDD or "
            "YYYY-MM-DD): files are read and the other studies' files skipped; with "
            "--from-dicomweb or --from-pacs, a query key.",
            rich_help_panel=_SELECT_PANEL,
        ),
    ] = None,
    patient: Annotated[
        str | None,
        typer.Option(
            "--patient",
            metavar="ID",
            help="Only studies of this Patient ID (0010,0020), exact match for files; with "
            "--from-dicomweb or --from-pacs, a query key (QIDO-RS matching).",
            rich_help_panel=_SELECT_PANEL,
        ),
    ] = None,
    accession: Annotated[
        str | None,
        typer.Option(
            "--accession",
            metavar="NUMBER",
            help="With --from-dicomweb or --from-pacs: only studies of this Accession Number.",
            rich_help_panel=_dw.PANEL,
        ),
    ] = None,
    modality: Annotated[
        list[str] | None,
        typer.Option(
            "--modality",
            metavar="CS",
            help="Only studies with a series of this Modality (0008,0060), repeatable: any "
            "matches. With --from-dicomweb or --from-pacs: once, a query key "
            "(ModalitiesInStudy).",
            rich_help_panel=_SELECT_PANEL,
        ),
    ] = None,
    qido: Annotated[
        list[str] | None,
        typer.Option(
            "--qido",
            metavar="KEY=VALUE",
            help="With --from-dicomweb or --from-pacs: any QIDO-RS study matching key, KEY=VALUE (repeatable), "
            "e.g. StudyDescription=*HEAD*.",
            rich_help_panel=_dw.PANEL,
        ),
    ] = None,
    from_pacs: Annotated[
        str | None,
        typer.Option(
            "--from-pacs",
            metavar="AET@HOST:PORT",
            help="Convert from a classic PACS over DIMSE (C-ECHO, C-FIND; with --binary/--media "
            "C-GET or C-MOVE) instead of files; the query options as for --from-dicomweb. Needs "
            "fhirimg[dimse]. See docs/pacs.md.",
            rich_help_panel=_dimse.PANEL,
        ),
    ] = None,
    calling_aet: Annotated[
        str,
        typer.Option(
            "--calling-aet",
            metavar="AET",
            help="With --from-pacs: fhirimg's own AE title, as the PACS knows it.",
            rich_help_panel=_dimse.PANEL,
        ),
    ] = "FHIRIMG",
    move_dest: Annotated[
        str | None,
        typer.Option(
            "--move-dest",
            metavar="AET",
            help="With --from-pacs --binary/--media: retrieve by C-MOVE to this AE title (the "
            "PACS must know it at this host and --move-port) instead of C-GET.",
            rich_help_panel=_dimse.PANEL,
        ),
    ] = None,
    move_port: Annotated[
        int,
        typer.Option(
            "--move-port",
            min=1,
            max=65535,
            help="With --move-dest: the port fhirimg receives the C-MOVE on.",
            rich_help_panel=_dimse.PANEL,
        ),
    ] = 11113,
    deidentify: DeidentifyOpt = False,
    dicomweb_auth: DicomwebAuth,
    auth: FhirAuth,
    network: Network,
    deid: Deid,
) -> None:
    """Convert DICOM files to FHIR transaction Bundles, one per study, plus report.json.

    Every input file ends up converted, skipped (not DICOM, DICOMDIR), duplicate or failed, with
    the reason in report.json. A re-run into the same folder reads only new and changed files
    and rewrites only the studies they touch (docs/incremental.md). Exit codes: 0 all converted,
    1 some files or studies of the folder failed (or, with --media, some images could not be
    rendered), 2 usage error, 3 output cannot be written, catalog unusable, folder in use, or
    the --push server unusable, 4 nothing to do (the input held no file, the query matched no
    study).
    """
    configure_logging(verbose)
    for option, url in (("--dicomweb-url", dicomweb_url), ("--push", push_url)):
        if url is not None and not _is_http_url(url):
            raise fail(f"{option} needs an http(s) URL, not {redact_url(url)!r}", ExitCode.USAGE)
    # A URL with credentials would be written into every bundle (Endpoint.address) or the journal.
    check_url(dicomweb_url, "--dicomweb-url", DICOMWEB)
    check_url(from_dicomweb, "--from-dicomweb", DICOMWEB)
    check_url(push_url, "--push", FHIR)
    if timezone:
        try:
            ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise fail(
                f"unknown time zone {timezone!r} (use an IANA name such as Europe/Berlin)",
                ExitCode.USAGE,
            ) from None
    default_system, systems = parse_patient_id_systems(patient_id_system or [])
    accession_default, accession_systems = parse_patient_id_systems(accession_system or [])
    if accession_default is not None:
        raise fail(
            f"--accession-system takes ISSUER=URI, not {accession_default!r}", ExitCode.USAGE
        )
    storage = _storage_options(storage_option or [])
    out_url = out if is_url(out) else None
    if deidentify and any(is_url(p) for p in paths or []):
        # Objects are read by fhirimg.objects, which does not de-identify (yet). Said before the
        # key is asked for: without one, "needs a key" would send the user after the wrong fix.
        raise fail("--deidentify reads local files: not with URL inputs", ExitCode.USAGE)
    if out_url is None and Path(out).is_file():
        raise fail(f"--out {out!r} is a file, not a folder", ExitCode.USAGE)
    options = ConvertOptions(
        out_dir=Path(out) if out_url is None else DEFAULT_OUT,
        fhir_version=fhir_version.value,
        mapping=MapOptions(
            timezone=timezone,
            patient_id_system=default_system,
            patient_id_systems=systems,
            accession_systems=accession_systems,
            dicomweb_url=dicomweb_url,
            measurements=not no_measurements,
            coding_systems=parse_coding_systems(coding_system or []),
        ),
        jobs=jobs or None,
        binary=binary,
        media=(
            MediaOptions(
                per=media_per,
                fmt=media_format.value,
                size=media_size,
                frame=media_frame,
                content=media_content,
            )
            if media
            else None
        ),
        max_entries=max_entries,
        max_bundle_mb=max_bundle_mb,
        strict=strict,
        all_or_nothing=all_or_nothing,
        group_readable=group_readable,
        full=full,
        prune_missing=prune_missing,
        lock_wait=wait,
        deid=deid.options() if deidentify else None,
        reid_map=deid.checked_reid_map(Path(out), deidentify),
        output_format=output_format.value,
        cluster=_cluster(engine, scheduler, workers, from_dicomweb or from_pacs),
        invocation=invocation(paths or [from_dicomweb or from_pacs or ""]),
    )
    if push_concurrency is not None and (not push_url or engine is not Engine.DASK):
        raise fail("--push-concurrency needs --push and --engine dask", ExitCode.USAGE)
    if output_format is OutputFormat.NDJSON and push_url:
        raise fail("--format ndjson writes files for $import: not with --push", ExitCode.USAGE)
    if output_format is OutputFormat.NDJSON and binary == BinaryMode.BESIDE:
        raise fail("--format ndjson needs the Binaries inline: --binary inline", ExitCode.USAGE)
    if len(modality or []) > 1 and (from_dicomweb or from_pacs):
        raise fail("--modality once with --from-dicomweb or --from-pacs", ExitCode.USAGE)
    query = (study, since, patient, accession, modality[0] if modality else None, qido)
    if dry_run and (from_dicomweb or from_pacs or push_url):
        raise fail(
            "--dry-run reads files: not with --from-dicomweb, --from-pacs or --push", ExitCode.USAGE
        )
    _dimse.check_dimse_options(from_pacs, calling_aet, move_dest)
    _dimse.quiet_pynetdicom(verbose)
    if from_pacs:
        if paths or from_dicomweb:
            raise fail("give DICOM PATHs, --from-dicomweb or --from-pacs, only one", ExitCode.USAGE)
        report = _dimse.run_convert_from_pacs(
            from_pacs,
            _dw.study_query(*query),
            options,
            calling_aet=calling_aet,
            timeout=network.timeout,
            move_dest=move_dest,
            move_port=move_port,
            progress=not quiet,
        )
    elif from_dicomweb:
        if paths:
            raise fail("give DICOM PATHs or --from-dicomweb, not both", ExitCode.USAGE)
        report = _from_dicomweb(
            from_dicomweb, _dw.study_query(*query), dicomweb_auth, network, options, quiet
        )
    else:
        if not paths:
            raise fail(
                "give DICOM files or folders to convert, --from-dicomweb URL or --from-pacs "
                "AET@HOST:PORT",
                ExitCode.USAGE,
            )
        require_paths(p for p in paths if not is_url(p))
        if _dw.any_of(study, accession, qido):
            raise fail(
                "--study, --accession and --qido need --from-dicomweb or --from-pacs",
                ExitCode.USAGE,
            )
        options = replace(options, select=_selection(modality, since, patient))
        if options.select.active and deidentify:
            # The records are de-identified as they are read: Patient ID and dates would be
            # matched against pseudonyms and shifted dates.
            raise fail("--modality, --since and --patient: not with --deidentify", ExitCode.USAGE)
        if dry_run:
            if out_url:
                raise fail("--dry-run names a local --out folder, not a URL", ExitCode.USAGE)
            _dry_run(paths, options, json_out=json_out, quiet=quiet, verbose=verbose)
        push = (
            push_options(
                push_url,
                auth,
                network,
                group_readable=group_readable,
                check_server=not no_capability_check,
            )
            if push_url
            else None
        )
        _check_inputs(paths)
        if out_url or any(is_url(p) for p in paths):
            if push is not None:
                raise fail("--push converts files: not with URL inputs or --out", ExitCode.USAGE)
            report = _from_objects(paths, options, storage, out_url)
        else:
            report = _from_files([Path(p) for p in paths], options, push, quiet, push_concurrency)
    if json_out:
        print_json(int(report.exit_code), report.summary())
    if not quiet:
        _print_summary(report)
    if report.stopped is not None:  # an error line, --quiet or not: the run did not finish
        err_console.print(
            f"[bold red]error:[/] {shown(report.stopped)}: no further study was written; "
            "report.json says which were; free some space and run the same command again",
            soft_wrap=True,
            highlight=False,
        )
    raise typer.Exit(int(report.exit_code))


def _selection(
    modality: list[str] | None, since: str | None, patient: str | None
) -> StudySelection:
    """``--modality/--since/--patient`` for file input (exit 2 for a bad date)."""
    try:
        return StudySelection.of(modality or [], since, patient)
    except ConfigError as exc:
        raise fail(str(exc), ExitCode.USAGE) from None


def _dry_run(
    paths: list[str], options: ConvertOptions, *, json_out: bool, quiet: bool, verbose: int
) -> NoReturn:
    """``convert --dry-run``: the studies a run would write, nothing written; exit 0 or 4."""
    from fhirimg.plan import plan

    if any(is_url(p) for p in paths):
        raise fail("--dry-run reads local files: not with URL inputs", ExitCode.USAGE)
    with exit_on_error(codes={OSError: ExitCode.CANNOT_START}):
        found = plan(paths, Path(options.out_dir), options.select, options.jobs, options.deid)
    code = ExitCode.NOTHING_DONE if found.nothing_to_do else ExitCode.OK
    if json_out:
        print_json(int(code), found.summary(patient=verbose > 0))
    if not quiet:
        for st in found.studies:
            who = f" patient {escape(st.patient_id or '?')}" if verbose > 0 else ""
            err_console.print(
                f"  study {st.study_instance_uid}{who}: {st.series} series, "
                f"{st.instances} instance(s)",
                highlight=False,
                soft_wrap=True,
            )
        files = found.files
        counts = ", ".join(f"{n} {status}" for status, n in files.items())
        what = (
            f"{len(found.studies)} study bundle(s) would be written"
            if found.studies
            else "nothing to convert (exit 4), nothing would be written"
        )
        err_console.print(
            f"Dry run: {what} in {found.out_dir}/ "
            f"(files: {sum(files.values())} total, {counts}); nothing written",
            highlight=False,
            soft_wrap=True,
        )
    raise typer.Exit(int(code))


def _from_dicomweb(
    url: str,
    query: StudyQuery,
    auth: DicomwebAuth,
    network: Network,
    options: ConvertOptions,
    quiet: bool,
) -> ConvertReport:
    """``convert --from-dicomweb``: QIDO-RS + WADO-RS metadata instead of files."""
    return _dw.run_convert_from_dicomweb(
        url, auth.build(), query, options, network=network, progress=not quiet
    )


def _storage_options(values: list[str]) -> dict[str, str]:
    """``--storage-option KEY=VALUE`` values (exit 2 for one without ``=``)."""
    out: dict[str, str] = {}
    for value in values:
        key, sep, item = value.partition("=")
        if not sep or not key:
            raise fail("--storage-option takes KEY=VALUE", ExitCode.USAGE)
        out[key] = item
    return out


def _check_inputs(paths: list[str]) -> None:
    """Inputs are all URLs or all paths (exit 2); that local paths exist is
    :func:`~fhirimg.cli._app.require_paths`' (exit 3, as for every command)."""
    urls = [p for p in paths if is_url(p)]
    if urls and len(urls) != len(paths):
        raise fail("give local paths or object-storage URLs, not both", ExitCode.USAGE)


def _from_objects(
    inputs: list[str], options: ConvertOptions, storage: dict[str, str], out_url: str | None
) -> ConvertReport:
    """URL inputs and/or a URL --out (fhirimg.convert_objects); a failed listing or upload,
    exit 3."""
    from fhirimg.convert_objects import convert_objects

    def message(exc: BaseException) -> str:
        if isinstance(exc, OSError):
            return f"cannot write to {options.out_dir}: {exc.strerror or exc}"
        return str(exc)

    with exit_on_error(
        codes={OSError: ExitCode.CANNOT_START}, message=message, interrupted=CONVERT_RESUMABLE
    ):
        return convert_objects(inputs, options, storage, out_url)


def _from_files(
    paths: list[Path],
    options: ConvertOptions,
    push: PushOptions | None,
    quiet: bool,
    concurrency: int | None = None,
) -> ConvertReport:
    """``convert PATH...``, and with ``push`` (``--push``) each study pushed as it is written
    (with ``concurrency``, ``--push-concurrency``: by the Dask workers)."""
    run = _streaming(push, concurrency) if push is not None else convert

    def message(exc: BaseException) -> str:
        if isinstance(exc, FhirimgError) and push is not None:
            return f"cannot push to {redact_url(push.server)}: {exc}"
        if isinstance(exc, OSError):
            return f"cannot write to {options.out_dir}: {exc.strerror or exc}"
        return str(exc)

    with exit_on_error(
        codes={OSError: ExitCode.CANNOT_START},
        message=message,
        interrupted=RESUMABLE if push is not None else CONVERT_RESUMABLE,
    ):
        if not quiet and sys.stderr.isatty():
            return _convert_with_progress(paths, options, run)
        return run(paths, options)


Runner = Callable[..., ConvertReport]


def _streaming(push: PushOptions, concurrency: int | None = None) -> Runner:
    """``convert --push``: each study pushed as soon as it is written (fhirimg.convert_push)."""
    from fhirimg.convert_push import convert_and_push

    def run(
        paths: list[Path], options: ConvertOptions, progress: ProgressCallback | None = None
    ) -> ConvertReport:
        return convert_and_push(paths, options, push, progress, concurrency)

    return run


def _convert_with_progress(
    paths: list[Path], options: ConvertOptions, run: Runner = convert
) -> ConvertReport:
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err_console, transient=True) as bar:
        tasks: dict[str, TaskID] = {}

        def on_progress(stage: str, advance: int, total: int | None) -> None:
            if stage not in tasks:
                label = "reading headers" if stage == "read" else "writing bundles"
                tasks[stage] = bar.add_task(label, total=total)
            bar.update(tasks[stage], advance=advance)

        return run(paths, options, progress=on_progress)


def _cluster(
    engine: Engine,
    scheduler: str | None,
    workers: int | None,
    source: str | None,
) -> ClusterOptions | None:
    """``--engine dask`` and its options, checked (exit 2); None for the local engine."""
    if engine is Engine.LOCAL:
        if scheduler is not None or workers is not None:
            raise fail("--scheduler and --workers need --engine dask", ExitCode.USAGE)
        return None
    if source:
        raise fail(
            "--engine dask converts files and objects: not with --from-dicomweb or --from-pacs",
            ExitCode.USAGE,
        )
    if scheduler is not None:
        if workers is not None:
            raise fail("--workers starts a local cluster: not with --scheduler", ExitCode.USAGE)
        parts = urlsplit(scheduler)
        try:
            port = parts.port
        except ValueError:
            port = None
        if parts.scheme not in ("tcp", "tls") or not parts.hostname or port is None:
            raise fail(
                f"--scheduler needs tcp://HOST:PORT, not {redact_url(scheduler)!r}", ExitCode.USAGE
            )
    return ClusterOptions(scheduler=scheduler, workers=workers)


def _is_http_url(url: str) -> bool:
    """An absolute http(s) URL with a host (Endpoint.address, a FHIR server base)."""
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _print_summary(report: ConvertReport) -> None:
    if report.nothing_done:
        err_console.print("nothing to convert: the input holds no file (exit 4)", highlight=False)
    s = report.summary()
    files, studies = s["files"], s["studies"]
    where = (
        "study bundle(s), pushed and not kept"
        if "pushed" in s
        else f"bundle(s) in [bold]{report.output or report.out_dir}/[/]"
    )
    err_console.print(
        f"Converted {files['converted']} of {files['total']} files into {studies['written']} "
        f"{where} ({files['skipped']} skipped, {files['duplicate']} duplicate, "
        f"{files['failed']} failed; details in {report.output or report.out_dir}/{REPORT_NAME})"
    )
    run = s.get("run")
    if run is not None:
        seen, done = run["files"], run["studies"]
        pruned = f", {seen['pruned']} pruned" if seen["pruned"] else ""
        err_console.print(
            f"This run: {seen['new']} new, {seen['changed']} changed, {seen['unchanged']} "
            f"unchanged, {seen['missing']} missing file(s){pruned}; {done['written']} bundle(s) "
            f"rewritten, {done['unchanged']} untouched"
            + (f", {done['removed']} removed" if done["removed"] else "")
        )
    warned = s.get("warnings")
    if warned:
        counts = ", ".join(f"{code} {n}" for code, n in warned.items())
        err_console.print(
            f"{sum(warned.values())} warning(s): {counts} (-v shows them; codes in report.json)",
            highlight=False,
            soft_wrap=True,
        )
    failed_studies = [st for st in report.studies if not st.ok]
    for st in failed_studies[:10]:
        err_console.print(
            f"  [red]study not written[/]: {escape(st.errors[0] if st.errors else '?')}"
        )
    _and_more(len(failed_studies), "study(ies) not written")
    for path, reason in report.failures[:10]:
        err_console.print(f"  [yellow]failed[/] {escape(path)}: {escape(reason)}")
    _and_more(files["failed"], "failed file(s)")
    rendered = s.get("renderedImages")
    if rendered:
        err_console.print(
            f"Rendered {rendered['written']} image(s), {rendered['failed']} could not be rendered"
        )
    for path, reason in report.render_failures[:10]:
        err_console.print(f"  [yellow]not rendered[/] {escape(path)}: {escape(reason)}")
    _and_more(len(report.render_failures), "image(s) not rendered")
    if "binaries" in s:
        err_console.print(f"{s['binaries']} Binary resource(s) with the DICOM bytes")
    if report.ndjson is not None:
        lines = ", ".join(f"{n} {t}" for t, n in report.ndjson.items()) or "no resource"
        err_console.print(
            f"NDJSON for $import in {report.output or report.out_dir}/ndjson/: {lines}"
        )
    pushed = s.get("pushed")
    if pushed:
        err_console.print(
            f"Pushed {pushed['pushed']} study bundle(s) ({pushed['skipped']} already on the "
            f"server per the journal, {pushed['failed']} refused); no bundle files kept"
        )
    not_pushed = [st for st in report.studies if st.push_failed]
    for st in not_pushed[:10]:
        err_console.print(f"  [red]not pushed[/]: {escape(str(st.push))}")
        for issue in st.push_issues[:3]:
            err_console.print(f"    {escape(issue)}")
    _and_more(len(not_pushed), "study(ies) not pushed")


def _and_more(total: int, what: str, shown: int = 10) -> None:
    """Every list of the summary shows ``shown`` items at most, then says how many more there
    are (all of them are in report.json)."""
    if total > shown:
        err_console.print(
            f"  ... and {total - shown} more {what}: see report.json", highlight=False
        )
