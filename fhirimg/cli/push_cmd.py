"""``fhirimg push``: send converted bundles (and their Binary files) to a FHIR server."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from fhirimg.cli._app import (
    RESUMABLE,
    JsonOpt,
    QuietOpt,
    VerboseOpt,
    app,
    configure_logging,
    err_console,
    exit_on_error,
    fail,
    print_json,
    server_message,
)
from fhirimg.cli._auth import DICOMWEB, FHIR, check_url
from fhirimg.cli._help import PanelledCommand
from fhirimg.cli._options import (
    DICOMWEB_PANEL,
    NETWORK_PANEL,
    DicomwebAuth,
    FhirAuth,
    Network,
    NoCapabilityCheckOpt,
    option_groups,
    push_options,
)
from fhirimg.exitcodes import ExitCode
from fhirimg.push import (
    BundleResult,
    PushObserver,
    PushReport,
    push_paths,
)

_RUN = "What to send"


class _RichProgress(PushObserver):
    """A rich progress bar (bundles and bytes) on stderr."""

    def __init__(self) -> None:
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self._lock = threading.Lock()
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            console=err_console,
            transient=True,
        )
        self.bytes_progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=err_console,
            transient=True,
        )
        from rich.console import Group
        from rich.live import Live

        self.live = Live(
            Group(self.progress, self.bytes_progress), console=err_console, transient=True
        )
        self.bundles = self.progress.add_task("bundles", total=None)
        self.bytes = self.bytes_progress.add_task("bytes  ", total=None)

    def started(self, bundles: int, total_bytes: int) -> None:
        self.progress.update(self.bundles, total=bundles)
        self.bytes_progress.update(self.bytes, total=total_bytes)

    def advanced(self, nbytes: int) -> None:
        with self._lock:
            self.bytes_progress.advance(self.bytes, nbytes)

    def finished(self, result: BundleResult) -> None:
        with self._lock:
            self.progress.advance(self.bundles, 1)
        if result.status == "failed":
            _print_failure(result)


def _print_failure(result: BundleResult) -> None:
    # soft_wrap: one refusal, one line (greppable in a cron mail); issues below when not in it.
    err_console.print(
        f"[bold red]refused:[/] {escape(result.file)}: {escape(result.error or '')}",
        soft_wrap=True,
        highlight=False,
    )
    for issue in result.issues:
        if issue not in (result.error or ""):
            err_console.print(f"    {issue}", markup=False, highlight=False, soft_wrap=True)


class _PlainObserver(PushObserver):
    def finished(self, result: BundleResult) -> None:
        if result.status == "failed":
            _print_failure(result)


def _print_plan(report: PushReport) -> None:
    for result in report.results:
        if result.status == "skipped":
            typer.echo(f"{result.file}: skip (the journal says this server confirmed it)")
            continue
        typer.echo(f"{result.file}: {result.entries} entries")
        for req in result.planned:
            url = req.url or "[base]"
            what = f"{req.entries} entries, " if req.entries else ""
            note = f"  ({req.note})" if req.note else ""
            typer.echo(f"  {req.method} {url}  {what}{req.bytes} bytes{note}")


def _summary(report: PushReport) -> str:
    parts = [f"pushed {report.pushed}", f"skipped {report.skipped} (already confirmed)"]
    parts.append(f"failed {report.failed}")
    text = ", ".join(parts) + f" in {report.elapsed_s:.1f} s"
    if report.retries:
        text += f" ({report.retries} retried requests)"
    return text


@app.command("push", cls=PanelledCommand)
@option_groups(auth=FhirAuth, network=Network, dicomweb_auth=DicomwebAuth)
def push(
    *,
    paths: Annotated[
        list[Path] | None,
        typer.Argument(
            help="Bundle files or folders of them (convert output). Default: fhirimg-out/.",
            show_default=False,
        ),
    ] = None,
    server: Annotated[
        str,
        typer.Option(
            "--server",
            "-s",
            envvar="FHIRIMG_SERVER",
            help="FHIR server base URL, e.g. https://fhir.example/r4 (4.x for R4 bundles, 5.x "
            "for R5; env FHIRIMG_SERVER).",
            show_default=False,
        ),
    ] = "",
    auth: FhirAuth,
    network: Network,
    jobs: Annotated[
        int,
        typer.Option(
            "--jobs",
            "-j",
            min=1,
            max=64,
            help="Bundles in flight at once.",
            rich_help_panel=NETWORK_PANEL,
        ),
    ] = 4,
    max_entries: Annotated[
        int | None,
        typer.Option(
            "--max-entries",
            min=1,
            help="Split transactions into pieces of at most N entries (e.g. 500 for Azure); "
            "references between pieces are rewritten to server ids.",
            rich_help_panel=_RUN,
        ),
    ] = None,
    auto_split: Annotated[
        bool,
        typer.Option(
            "--auto-split/--no-auto-split",
            help="When the server refuses a transaction as too large, send it again in pieces.",
            rich_help_panel=_RUN,
        ),
    ] = True,
    journal: Annotated[
        Path | None,
        typer.Option(
            "--journal",
            help="Journal of confirmed work, for resuming. Default: "
            "<first folder>/.fhirimg-push-journal.jsonl.",
            rich_help_panel=_RUN,
        ),
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Push everything again, ignoring what the journal says was confirmed.",
            rich_help_panel=_RUN,
        ),
    ] = False,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Print what would be sent (method, url, entries, bytes); send nothing.",
            rich_help_panel=_RUN,
        ),
    ] = False,
    dicomweb: Annotated[
        str | None,
        typer.Option(
            "--dicomweb",
            help="DICOMweb base URL: first store the studies' DICOM instances there (STOW-RS), "
            "then push (with --server) the bundles whose ImagingStudy has its Endpoint. Alone, "
            "the auth options above apply to it; with --server, use --dicomweb-*.",
            rich_help_panel=DICOMWEB_PANEL,
        ),
    ] = None,
    dicomweb_auth: DicomwebAuth,
    group_readable: Annotated[
        bool,
        typer.Option(
            "--group-readable",
            help="Create the journal readable by the group (0640) for a shared research "
            "folder. Default: owner-only (0600).",
            rich_help_panel=_RUN,
        ),
    ] = False,
    no_capability_check: NoCapabilityCheckOpt = False,
    verbose: VerboseOpt = 0,
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Push transaction Bundles (and the Binary files beside them) to a FHIR server.

    Idempotent (conditional creates and updates, deterministic Binary ids), retried on transient
    failures, and resumable: the journal records what the server confirmed, so running the same
    command again after a crash or Ctrl-C continues where it stopped. Exit codes: 0 all pushed,
    1 some bundles refused, 2 bad usage, 3 could not start (server unreachable, not a FHIR
    server of the bundles' release, bad credentials), 4 no bundle to push, 130 interrupted.
    """
    configure_logging(verbose)
    if verbose < 2:
        # httpx logs every URL at INFO; search URLs can carry patient identifiers.
        logging.getLogger("httpx").setLevel(logging.WARNING)
    if not server and not dry_run and not dicomweb:
        raise fail("--server is required (or set FHIRIMG_SERVER)", ExitCode.USAGE)
    check_url(server, "--server", FHIR)
    check_url(dicomweb, "--dicomweb", DICOMWEB if server else FHIR)
    options = push_options(
        server or "http://dry-run.invalid",
        auth,
        network,
        jobs=jobs,
        max_entries=max_entries,
        auto_split=auto_split,
        journal=journal,
        force=force,
        dry_run=dry_run,
        group_readable=group_readable,
        check_server=not no_capability_check,
    )
    if dicomweb:
        # Alone, --dicomweb takes the FHIR auth options; beside --server, its own --dicomweb-*.
        # Imported here: it loads convert and the DICOMweb path, which a plain push never uses.
        from fhirimg.cli import _dicomweb as _dw

        dw_auth = dicomweb_auth.build()
        _dw.run_push_dicomweb(
            paths or [],
            dicomweb,
            dw_auth if (server or dw_auth) else options.auth,
            options,
            with_fhir=bool(server),
            json_out=json_out,
            quiet=quiet,
            # Like the auth options: alone, --dicomweb may use --client-cert too.
            client_cert=network.dicomweb_cert_pair
            or (None if server else network.client_cert_pair),
        )
    show_bar = not quiet and not dry_run and err_console.is_terminal
    observer: PushObserver = _RichProgress() if show_bar else _PlainObserver()
    with exit_on_error(message=server_message, interrupted=RESUMABLE):
        if isinstance(observer, _RichProgress):
            with observer.live:
                report = push_paths(paths or [], options, observer)
        else:
            report = push_paths(paths or [], options, observer)

    if json_out:
        print_json(int(report.exit_code), report.to_json())
    elif dry_run:
        _print_plan(report)
    if report.aborted:
        err_console.print(f"[bold red]stopped:[/] {escape(report.aborted)}", soft_wrap=True)
    if not report.results:
        where = ", ".join(str(p) for p in paths or [Path("fhirimg-out")])
        err_console.print(
            f"nothing to push: no transaction Bundle in {escape(where)}", soft_wrap=True
        )
    elif not quiet and not dry_run:
        err_console.print(_summary(report), highlight=False)
    raise typer.Exit(int(report.exit_code))
