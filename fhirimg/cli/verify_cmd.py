"""``fhirimg verify``: check that ImagingStudies (on a FHIR server, or in bundle files) and the
DICOMweb server their Endpoint names agree, instance by instance."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from fhirimg import jsonio
from fhirimg.cli._app import (
    JsonOpt,
    QuietOpt,
    VerboseOpt,
    app,
    configure_logging,
    err_console,
    exit_on_error,
    fail,
    server_message,
)
from fhirimg.cli._options import DicomwebAuth, FhirAuth, RetriesOpt, TimeoutOpt, option_groups
from fhirimg.dicomweb.verify import VerifyOptions, VerifyReport, verify_bundles, verify_server
from fhirimg.exitcodes import ExitCode
from fhirimg.http import FhirClient, RetryPolicy

_SHOWN = 10  # differences printed per study; all of them are in --json


@app.command("verify")
@option_groups(auth=FhirAuth, dicomweb_auth=DicomwebAuth)
def verify_command(
    *,
    paths: Annotated[
        list[Path] | None,
        typer.Argument(
            help="Bundle files or folders of them (convert output), when not using --server.",
            show_default=False,
        ),
    ] = None,
    server: Annotated[
        str | None,
        typer.Option(
            "--server",
            "-s",
            help="FHIR server base URL: verify every ImagingStudy it holds (instead of files).",
            show_default=False,
        ),
    ] = None,
    auth: FhirAuth,
    study: Annotated[
        list[str] | None,
        typer.Option("--study", help="Verify only this Study Instance UID (repeatable)."),
    ] = None,
    dicomweb_auth: DicomwebAuth,
    timeout: TimeoutOpt = 60.0,
    retries: RetriesOpt = 3,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = 0,
) -> None:
    """Check that every series and instance an ImagingStudy lists exists in the PACS its
    dicom-wado-rs Endpoint names (QIDO-RS), and report the differences both ways: missing in PACS,
    missing in FHIR. Exit codes: 0 all agree, 1 differences found, 2 usage error, 3 a server
    cannot be used or no bundle found.
    """
    configure_logging(verbose)
    if verbose < 2:
        logging.getLogger("httpx").setLevel(logging.WARNING)
    if server and paths:
        raise fail("give bundle files or --server, not both", ExitCode.USAGE)
    if not server and any((auth.user, auth.token_url, auth.client_id, auth.scope)):
        raise fail(
            "--user, --token-url, --client-id and --scope are the FHIR server's: give --server",
            ExitCode.USAGE,
        )
    # The FHIR server's credentials are those of `push --server` (one implementation).
    fhir_auth = auth.build() if server else None
    retry = RetryPolicy(max_attempts=retries + 1)
    options = VerifyOptions(
        auth=dicomweb_auth.build(),
        timeout=timeout,
        retry=retry,
        study_uids=tuple(study or ()),
    )
    with exit_on_error(message=server_message):
        if server:
            with FhirClient(server, auth=fhir_auth, timeout=timeout, retry=retry) as client:
                report = verify_server(client, options)
        else:
            report = verify_bundles(paths or [Path("fhirimg-out")], options)
    if json_out:
        sys.stdout.buffer.write(jsonio.dumps(report.to_json()))
        sys.stdout.flush()
    if not quiet:
        _print(report)
    raise typer.Exit(int(ExitCode.OK if report.ok else ExitCode.PARTIAL))


def _print(report: VerifyReport) -> None:
    for check in report.studies:
        if check.ok:
            continue
        head = f"[bold red]differs:[/] {escape(check.source)} (study {escape(check.study_instance_uid)})"
        err_console.print(head, soft_wrap=True, highlight=False)
        if check.error:
            err_console.print(f"    error: {escape(check.error)}", soft_wrap=True)
        lines = [f"missing in PACS: series {s} instance {i}" for s, i in check.missing_in_pacs]
        lines += [f"missing in FHIR: series {s} instance {i}" for s, i in check.missing_in_fhir]
        lines += [
            f"SOP Class differs: {i}: FHIR {f}, PACS {p}" for i, f, p in check.sop_class_differs
        ]
        for line in lines[:_SHOWN]:
            err_console.print(f"    {line}", markup=False, highlight=False, soft_wrap=True)
        if len(lines) > _SHOWN:
            err_console.print(f"    ... and {len(lines) - _SHOWN} more (see --json)")
    for source, reason in report.skipped:
        err_console.print(f"[yellow]skipped:[/] {escape(source)}: {escape(reason)}", soft_wrap=True)
    differing = sum(1 for s in report.studies if not s.ok)
    err_console.print(
        f"verified {len(report.studies)} ImagingStudy(ies): {len(report.studies) - differing} "
        f"agree with the PACS, {differing} differ; {len(report.skipped)} skipped",
        highlight=False,
    )
