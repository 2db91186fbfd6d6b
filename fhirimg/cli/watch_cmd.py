"""``fhirimg watch``: read options, call :func:`fhirimg.watch.watch`, print a line per study, exit.

Signals are this module's business, not the library's: the first SIGINT (Ctrl-C) or SIGTERM sets
the library's stop event, so the studies being converted and pushed are finished before it returns;
a second SIGINT stops at once (KeyboardInterrupt: the catalog and the journal are crash-safe).
SIGINT exits 130 like every command, SIGTERM 0 (a service manager stopping a healthy watch).
``--once`` is a single convert call and keeps Python's default: Ctrl-C stops it at once (130).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson
import typer

from fhirimg.cli._app import (
    RESUMABLE,
    QuietOpt,
    VerboseOpt,
    app,
    configure_logging,
    err_console,
    exit_on_error,
    fail,
    invocation,
    require_paths,
    say_interrupted,
    shown,
)
from fhirimg.cli._auth import DICOMWEB, FHIR, check_url
from fhirimg.cli._deid import Deid, DeidentifyOpt
from fhirimg.cli._help import PanelledCommand
from fhirimg.cli._options import (
    AllOrNothingOpt,
    BinaryOpt,
    CodingSystemOpt,
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
from fhirimg.cli.convert_cmd import parse_patient_id_systems
from fhirimg.convert import DEFAULT_OUT, ConvertOptions
from fhirimg.errors import ConfigError, PushError
from fhirimg.exitcodes import ExitCode
from fhirimg.images.rendered import MediaOptions
from fhirimg.mapping import MapOptions
from fhirimg.safetext import redact_url
from fhirimg.select import StudySelection
from fhirimg.watch import DEFAULT_INTERVAL, DEFAULT_SETTLE, StudyHandled, watch

_PUSH_PANEL = "Push"
_SELECT_PANEL = "Selecting studies"


class _WatchCommand(PanelledCommand):
    """``watch --help`` in the groups of docs/cli.md#fhirimg-watch."""

    moved = {"no_capability_check": _PUSH_PANEL}  # a check of the --push server


@app.command("watch", cls=_WatchCommand)
@option_groups(auth=FhirAuth, network=Network, deid=Deid)
def watch_command(
    *,
    paths: Annotated[
        list[Path],
        typer.Argument(
            help="DICOM folders (and files) to watch, searched recursively; network shares too "
            "(polled, not inotify).",
            metavar="PATH...",
            show_default=False,
        ),
    ],
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            metavar="DIR",
            help="Folder for the bundles, report.json, the catalog and the push journal: all the "
            "state a restarted watch continues from.",
            file_okay=False,
        ),
    ] = DEFAULT_OUT,
    push_url: Annotated[
        str | None,
        typer.Option(
            "--push",
            help="Also push each study's bundle(s), once written, to this FHIR server; the "
            "server's ImagingStudy is merged, not replaced. Bundles stay in --out.",
            rich_help_panel=_PUSH_PANEL,
        ),
    ] = None,
    settle: Annotated[
        float,
        typer.Option(
            "--settle",
            min=0.0,
            help="Seconds without a new file of a study before it is converted.",
        ),
    ] = DEFAULT_SETTLE,
    interval: Annotated[
        float,
        typer.Option(
            "--interval",
            min=0.05,
            help="Seconds between two walks of the PATHs; a file is read once its size and "
            "mtime are the same on two walks in a row.",
        ),
    ] = DEFAULT_INTERVAL,
    once: Annotated[
        bool,
        typer.Option(
            "--once",
            help="One pass for cron: convert (and push) everything new under the PATHs now, "
            "--settle ignored, and exit with convert's exit code.",
        ),
    ] = False,
    modality: Annotated[
        list[str] | None,
        typer.Option(
            "--modality",
            metavar="CS",
            help="Only studies with a series of this Modality (0008,0060), e.g. CT; "
            "repeatable (any matches). A study written once is kept whole.",
            rich_help_panel=_SELECT_PANEL,
        ),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(
            "--since",
            metavar="YYYYMMDD",
            help="Only studies whose Study Date (0008,0020) is this day or later (YYYY-MM-DD "
            "too); a study without a date is left out.",
            rich_help_panel=_SELECT_PANEL,
        ),
    ] = None,
    patient: Annotated[
        str | None,
        typer.Option(
            "--patient",
            metavar="ID",
            help="Only studies of this Patient ID (0010,0020), exact match.",
            rich_help_panel=_SELECT_PANEL,
        ),
    ] = None,
    fhir_version: FhirVersionOpt = FhirVersion.R4,
    dicomweb_url: EndpointUrlOpt = None,
    timezone: TimezoneOpt = None,
    no_measurements: NoMeasurementsOpt = False,
    patient_id_system: PatientIdSystemOpt = None,
    coding_system: CodingSystemOpt = None,
    binary: BinaryOpt = None,
    media: MediaOpt = False,
    strict: StrictOpt = False,
    all_or_nothing: AllOrNothingOpt = False,
    jobs: JobsOpt = 0,
    group_readable: GroupReadableOpt = False,
    no_capability_check: NoCapabilityCheckOpt = False,
    json_out: Annotated[
        bool,
        typer.Option("--json", help="Print one JSON line per study handled on stdout (NDJSON)."),
    ] = False,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = 0,
    auth: FhirAuth,
    deidentify: DeidentifyOpt = False,
    network: Network,
    deid: Deid,
) -> None:
    """Watch DICOM folders: convert each study once no new file of it has arrived for --settle
    seconds, and with --push send it to a FHIR server (merged with what the server holds).

    One line per study handled on stderr. Restartable: the catalog and the push journal in --out
    say what was done. Ctrl-C (or SIGTERM) finishes the study at hand, then exits 130 (0 for
    SIGTERM). --once: one pass, exit codes as for convert: 0, 1 some failed, 2 usage, 3 cannot
    start.
    """
    configure_logging(verbose)
    require_paths(paths)
    check_url(dicomweb_url, "--dicomweb-url", DICOMWEB)
    check_url(push_url, "--push", FHIR)
    for option, url in (("--dicomweb-url", dicomweb_url), ("--push", push_url)):
        if url is not None and not url.startswith(("http://", "https://")):
            raise fail(f"{option} needs an http(s) URL, not {redact_url(url)!r}", ExitCode.USAGE)
    if timezone:
        try:
            ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise fail(f"unknown time zone {timezone!r}", ExitCode.USAGE) from None
    default_system, systems = parse_patient_id_systems(patient_id_system or [])
    try:
        # Applied by watch to the headers it reads itself (not de-identified): they work with
        # --deidentify too, unlike convert's.
        select = StudySelection.of(modality or [], since, patient)
    except ConfigError as exc:
        raise fail(str(exc), ExitCode.USAGE) from None
    options = ConvertOptions(
        out_dir=out,
        fhir_version=fhir_version.value,
        mapping=MapOptions(
            timezone=timezone,
            patient_id_system=default_system,
            patient_id_systems=systems,
            dicomweb_url=dicomweb_url,
            measurements=not no_measurements,
            coding_systems=parse_coding_systems(coding_system or []),
        ),
        jobs=jobs or None,
        binary=binary,
        media=MediaOptions() if media else None,
        strict=strict,
        all_or_nothing=all_or_nothing,
        group_readable=group_readable,
        deid=deid.options() if deidentify else None,
        reid_map=deid.checked_reid_map(out, deidentify),
        invocation=invocation(paths),
        select=select,
    )
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

    def tell(event: StudyHandled) -> None:
        if json_out:
            sys.stdout.write(orjson.dumps(event.as_json()).decode() + "\n")
            sys.stdout.flush()
        if not quiet:
            err_console.print(shown(event.line()), soft_wrap=True, highlight=False)

    stop = threading.Event()
    stopped_by: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if stopped_by and signum == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: stop now
        stopped_by.append(signum)
        if not quiet:
            # A plain write, not rich: the signal may land while rich is importing or holding its
            # own locks (seen: an ImportError from rich's emoji table, exit 70).
            os.write(2, b"stopping after the study at hand (Ctrl-C again to stop now)\n")
        # Event.set from a thread: a handler running inside the loop's own Event.wait must not
        # take the event's lock that the interrupted code may hold.
        threading.Thread(target=stop.set, daemon=True).start()

    def message(exc: BaseException) -> str:
        if isinstance(exc, OSError):
            return f"cannot write to {out}: {exc.strerror or exc}"
        if push_url is not None and isinstance(exc, PushError):
            return f"cannot push to {redact_url(push_url)}: {exc}"
        return str(exc)

    # --once is one convert call: Ctrl-C stops it at once, as it stops convert.
    previous = {} if once else _install({signal.SIGINT: on_signal, signal.SIGTERM: on_signal})
    try:
        with exit_on_error(
            codes={OSError: ExitCode.CANNOT_START}, message=message, interrupted=RESUMABLE
        ):
            report = watch(
                paths,
                options,
                settle=settle,
                interval=interval,
                once=once,
                push=push,
                stop_event=stop,
                on_study=tell,
            )
    finally:
        _install(previous)
    if once:
        if not quiet:
            s = report.summary()
            err_console.print(
                f"{s['studies']['converted']} study bundle(s) written, "
                f"{s['studies']['failed']} failed; details in {shown(out / 'report.json')}",
                highlight=False,
                soft_wrap=True,
            )
        raise typer.Exit(int(report.exit_code))
    if stopped_by and stopped_by[0] == signal.SIGINT:
        say_interrupted(RESUMABLE)  # the same line as every command's Ctrl-C
        raise typer.Exit(int(ExitCode.INTERRUPTED))
    raise typer.Exit(int(ExitCode.OK))


def _install(handlers: dict[signal.Signals, Any]) -> dict[signal.Signals, Any]:
    """Install signal handlers (only possible in the main thread); the ones they replace."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {sig: signal.signal(sig, handler) for sig, handler in handlers.items()}
