"""``fhirimg convert``: read options, call :func:`fhirimg.convert.convert`, print, exit."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated
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

from fhirimg import jsonio
from fhirimg.cli import _dicomweb as _dw
from fhirimg.cli._app import (
    JsonOpt,
    QuietOpt,
    VerboseOpt,
    app,
    configure_logging,
    err_console,
    fail,
)
from fhirimg.convert import (
    DEFAULT_OUT,
    REPORT_NAME,
    ConvertOptions,
    ConvertReport,
    convert,
)
from fhirimg.convert import Progress as ProgressCallback
from fhirimg.errors import ConfigError, PushError
from fhirimg.exitcodes import ExitCode
from fhirimg.images.binary import BinaryMode
from fhirimg.images.rendered import MediaContent, MediaOptions, MediaPer
from fhirimg.mapping import MapOptions

log = logging.getLogger(__name__)


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


@app.command("convert")
def convert_command(
    paths: Annotated[
        list[Path] | None,
        typer.Argument(
            help="DICOM files and/or folders (searched recursively; DICOM is recognised by content). "
            "Not with --from-dicomweb.",
            exists=True,
            metavar="PATH...",
            show_default=False,
        ),
    ] = None,
    out: Annotated[
        Path,
        typer.Option(
            "--out", "-o", help="Folder for the bundles and report.json.", file_okay=False
        ),
    ] = DEFAULT_OUT,
    fhir_version: Annotated[
        str,
        typer.Option(
            "--fhir-version",
            help="FHIR release to write: r4 (4.0.1) or r5 (5.0.0; rendered images become "
            "DocumentReference, R5 has no Media).",
        ),
    ] = "r4",
    dicomweb_url: Annotated[
        str | None,
        typer.Option(
            "--dicomweb-url",
            help="Base URL of the DICOMweb (WADO-RS) server holding the images; adds an Endpoint "
            "that each ImagingStudy references.",
        ),
    ] = None,
    timezone: Annotated[
        str | None,
        typer.Option(
            "--timezone",
            help="IANA time zone (e.g. Europe/Berlin) for DICOM times without (0008,0201) "
            "Timezone Offset From UTC. Without it such times are left out (date kept).",
        ),
    ] = None,
    patient_id_system: Annotated[
        list[str] | None,
        typer.Option(
            "--patient-id-system",
            help="Identifier system for Patient IDs whose issuer gives none: a URI (default for "
            "all), or ISSUER=URI to map an Issuer of Patient ID (0010,0021). Repeatable.",
        ),
    ] = None,
    accession_system: Annotated[
        list[str] | None,
        typer.Option(
            "--accession-system",
            help="ISSUER=URI: identifier system for Accession Numbers whose Issuer of Accession "
            "Number (0008,0051) has only this local namespace (0040,0031). Repeatable.",
        ),
    ] = None,
    jobs: Annotated[
        int,
        typer.Option("--jobs", "-j", min=0, help="Processes for reading headers (0 = all cores)."),
    ] = 0,
    push_url: Annotated[
        str | None,
        typer.Option(
            "--push",
            help="Push each study's bundle to this FHIR server as soon as it is built (one "
            "streaming pass; no bundle files kept, report.json and the push journal are). "
            "Bearer token from env FHIRIMG_TOKEN.",
        ),
    ] = None,
    strict: Annotated[
        bool,
        typer.Option(
            "--strict",
            help="Validate every bundle with all layers of 'fhirimg validate' (FHIRPath "
            "invariants too) before writing it, not only the fast ones.",
        ),
    ] = False,
    binary: Annotated[
        BinaryMode | None,
        typer.Option(
            "--binary",
            help="Also carry each instance's DICOM bytes as a Binary (PUT Binary/<id>), linked "
            "from ImagingStudy.series.instance: 'inline' puts base64 data in the bundle, "
            "'beside' writes <bundle>.binaries/<id>.dcm for push to upload raw. Default: none.",
            case_sensitive=False,
        ),
    ] = None,
    max_entries: Annotated[
        int | None,
        typer.Option(
            "--max-entries",
            min=1,
            help="Split a study's Binary/image entries into <stem>.part-N.json files so that no "
            "bundle has more entries (Azure FHIR takes 500). Default: no limit.",
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
        ),
    ] = None,
    media: Annotated[
        bool,
        typer.Option(
            "--media",
            help="Also render images (8-bit PNG/JPEG with rescale, window, MONOCHROME1, colour "
            "handled) as Media (R4) or DocumentReference (R5).",
        ),
    ] = False,
    media_per: Annotated[
        MediaPer,
        typer.Option(
            "--media-per",
            help="With --media: an image for every image instance, or one per series (its "
            "middle instance).",
            case_sensitive=False,
        ),
    ] = MediaPer.INSTANCE,
    media_format: Annotated[
        MediaFormat,
        typer.Option(
            "--media-format",
            help="With --media: png (lossless) or jpeg (quality 90, smaller).",
            case_sensitive=False,
        ),
    ] = MediaFormat.PNG,
    media_size: Annotated[
        int | None,
        typer.Option(
            "--media-size",
            min=1,
            help="With --media: fit images into N x N pixels (thumbnails; never enlarged). "
            "Default: the image's own size.",
        ),
    ] = None,
    media_frame: Annotated[
        int | None,
        typer.Option(
            "--media-frame",
            min=1,
            help="With --media: the frame (1-based) of multi-frame images to render. Default: "
            "the middle frame.",
        ),
    ] = None,
    media_content: Annotated[
        MediaContent,
        typer.Option(
            "--media-content",
            help="With --media: 'inline' puts the image in the attachment's data; 'binary' "
            "puts it in a Binary entry the attachment's url names (Binary/<id>).",
            case_sensitive=False,
        ),
    ] = MediaContent.INLINE,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = 0,
    from_dicomweb: Annotated[
        str | None,
        typer.Option(
            "--from-dicomweb",
            help="Convert from a DICOMweb server (QIDO-RS + WADO-RS metadata, no pixel data) "
            "instead of files; the ImagingStudy's Endpoint is this URL unless --dicomweb-url.",
            rich_help_panel=_dw.PANEL,
        ),
    ] = None,
    study: Annotated[
        list[str] | None,
        typer.Option(
            "--study",
            help="With --from-dicomweb: only this Study Instance UID (repeatable).",
            rich_help_panel=_dw.PANEL,
        ),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(
            "--since",
            help="With --from-dicomweb: only studies of this date (YYYY-MM-DD) or later.",
            rich_help_panel=_dw.PANEL,
        ),
    ] = None,
    patient: Annotated[
        str | None,
        typer.Option(
            "--patient",
            help="With --from-dicomweb: only studies of this Patient ID (QIDO-RS matching).",
            rich_help_panel=_dw.PANEL,
        ),
    ] = None,
    accession: Annotated[
        str | None,
        typer.Option(
            "--accession",
            help="With --from-dicomweb: only studies of this Accession Number.",
            rich_help_panel=_dw.PANEL,
        ),
    ] = None,
    modality: Annotated[
        str | None,
        typer.Option(
            "--modality",
            help="With --from-dicomweb: only studies with this modality (ModalitiesInStudy).",
            rich_help_panel=_dw.PANEL,
        ),
    ] = None,
    qido: Annotated[
        list[str] | None,
        typer.Option(
            "--qido",
            help="With --from-dicomweb: any QIDO-RS study matching key, KEY=VALUE (repeatable), "
            "e.g. StudyDescription=*HEAD*.",
            rich_help_panel=_dw.PANEL,
        ),
    ] = None,
    dicomweb_token: _dw.DicomwebTokenOpt = None,
    dicomweb_user: _dw.DicomwebUserOpt = None,
    dicomweb_token_url: _dw.DicomwebTokenUrlOpt = None,
    dicomweb_client_id: _dw.DicomwebClientIdOpt = None,
    timeout: _dw.DicomwebTimeoutOpt = _dw.TIMEOUT,
    retries: _dw.DicomwebRetriesOpt = _dw.RETRIES,
) -> None:
    """Convert DICOM files to FHIR transaction Bundles, one per study, plus report.json.

    Every input file ends up converted, skipped (not DICOM, DICOMDIR), duplicate or failed, with
    the reason in report.json. Exit codes: 0 all converted, 1 some files or studies failed (or,
    with --media, some images could not be rendered),
    2 usage error, 3 output cannot be written.
    """
    configure_logging(verbose)
    if fhir_version.lower() not in ("r4", "r5"):
        raise fail(f"unsupported --fhir-version {fhir_version!r}: use r4 or r5", ExitCode.USAGE)
    for option, url in (("--dicomweb-url", dicomweb_url), ("--push", push_url)):
        if url is not None and not _is_http_url(url):
            raise fail(f"{option} needs an http(s) URL, not {url!r}", ExitCode.USAGE)
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
    options = ConvertOptions(
        out_dir=out,
        fhir_version=fhir_version.lower(),
        mapping=MapOptions(
            timezone=timezone,
            patient_id_system=default_system,
            patient_id_systems=systems,
            accession_systems=accession_systems,
            dicomweb_url=dicomweb_url,
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
    )
    if from_dicomweb:
        if paths:
            raise fail("give DICOM PATHs or --from-dicomweb, not both", ExitCode.USAGE)
        query = _dw.study_query(study, since, patient, accession, modality, qido)
        auth = _dw.dicomweb_auth(
            dicomweb_token, dicomweb_user, dicomweb_token_url, dicomweb_client_id
        )
        report = _dw.run_convert_from_dicomweb(
            from_dicomweb,
            auth,
            query,
            options,
            timeout=timeout,
            retries=retries,
            progress=not quiet,
        )
        if json_out:
            sys.stdout.write(jsonio.dumps(report.summary()).decode())
        if not quiet:
            _print_summary(report)
        raise typer.Exit(int(report.exit_code))
    if not paths:
        raise fail("give DICOM files or folders to convert, or --from-dicomweb URL", ExitCode.USAGE)
    if _dw.any_of(study, since, patient, accession, modality, qido):
        raise fail(
            "--study, --since and the other query options need --from-dicomweb", ExitCode.USAGE
        )
    show_progress = not quiet and sys.stderr.isatty()
    run = _streaming(push_url, out) if push_url else convert
    try:
        if show_progress:
            report = _convert_with_progress(paths, options, run)
        else:
            report = run(paths, options)
    except OSError as exc:
        raise fail(f"cannot write to {out}: {exc.strerror or exc}", ExitCode.CANNOT_START) from None
    except (PushError, ConfigError) as exc:
        raise fail(f"cannot push to {push_url}: {exc}", ExitCode.CANNOT_START) from None
    if json_out:
        sys.stdout.write(jsonio.dumps(report.summary()).decode())
    if not quiet:
        _print_summary(report)
    raise typer.Exit(int(report.exit_code))


Runner = Callable[..., ConvertReport]


def _streaming(server: str, out: Path) -> Runner:
    """``convert --push``: each study pushed as soon as it is written (fhirimg.convert_push)."""
    from fhirimg.convert_push import convert_and_push
    from fhirimg.push import BearerAuth, PushOptions

    token = os.environ.get("FHIRIMG_TOKEN")
    push = PushOptions(server=server, auth=BearerAuth(token) if token else None)

    def run(
        paths: list[Path], options: ConvertOptions, progress: ProgressCallback | None = None
    ) -> ConvertReport:
        return convert_and_push(paths, options, push, progress)

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


def _is_http_url(url: str) -> bool:
    """An absolute http(s) URL with a host (Endpoint.address, a FHIR server base)."""
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _print_summary(report: ConvertReport) -> None:
    s = report.summary()
    files, studies = s["files"], s["studies"]
    where = (
        "study bundle(s), pushed and not kept"
        if "pushed" in s
        else f"bundle(s) in [bold]{report.out_dir}/[/]"
    )
    err_console.print(
        f"Converted {files['converted']} of {files['total']} files into {studies['written']} "
        f"{where} ({files['skipped']} skipped, {files['duplicate']} duplicate, "
        f"{files['failed']} failed; details in {report.out_dir / REPORT_NAME})"
    )
    failed_studies = [st for st in report.studies if not st.ok]
    for st in failed_studies[:10]:
        err_console.print(
            f"  [red]study not written[/]: {escape(st.errors[0] if st.errors else '?')}"
        )
    for path, reason in report.failures[:10]:
        err_console.print(f"  [yellow]failed[/] {escape(path)}: {escape(reason)}")
    rendered = s.get("renderedImages")
    if rendered:
        err_console.print(
            f"Rendered {rendered['written']} image(s), {rendered['failed']} could not be rendered"
        )
    for path, reason in report.render_failures[:10]:
        err_console.print(f"  [yellow]not rendered[/] {escape(path)}: {escape(reason)}")
    if "binaries" in s:
        err_console.print(f"{s['binaries']} Binary resource(s) with the DICOM bytes")
    pushed = s.get("pushed")
    if pushed:
        err_console.print(
            f"Pushed {pushed['pushed']} study bundle(s) ({pushed['skipped']} already on the "
            f"server per the journal, {pushed['failed']} refused); no bundle files kept"
        )
    for st in [st for st in report.studies if st.push_failed][:10]:
        err_console.print(f"  [red]not pushed[/]: {escape(str(st.push))}")
        for issue in st.push_issues[:3]:
            err_console.print(f"    {escape(issue)}")
    if files["failed"] > 10:
        err_console.print(f"  ... and {files['failed'] - 10} more failed file(s): see report.json")
