"""``fhirimg verify``: check that ImagingStudies (on a FHIR server, or in bundle files) and the
DICOMweb server their Endpoint names agree, instance by instance."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

import typer

from fhirimg.cli import _dimse
from fhirimg.cli._app import (
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
    shown,
)
from fhirimg.cli._auth import DICOMWEB, check_url
from fhirimg.cli._config import from_command_line
from fhirimg.cli._help import PanelledCommand
from fhirimg.cli._options import DICOMWEB_PANEL, DicomwebAuth, FhirAuth, Network, option_groups
from fhirimg.dicomweb.verify import (
    MAX_SEARCH_PAGES,
    VerifyOptions,
    VerifyReport,
    verify_bundles,
    verify_server,
)
from fhirimg.exitcodes import ExitCode
from fhirimg.http import FhirClient
from fhirimg.safetext import clean, redact_url

_SHOWN = 10  # differences printed per study; all of them are in --json


@app.command("verify", cls=PanelledCommand)
@option_groups(auth=FhirAuth, dicomweb_auth=DicomwebAuth, network=Network)
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
    dicomweb_url: Annotated[
        list[str] | None,
        typer.Option(
            "--dicomweb-url",
            help="A PACS the Endpoints may name (repeatable): only Endpoint addresses of these "
            "origins are contacted, with the --dicomweb-* credentials; an Endpoint elsewhere is "
            "reported, not contacted. Required with PACS credentials.",
            show_default=False,
            rich_help_panel=DICOMWEB_PANEL,
        ),
    ] = None,
    max_pages: Annotated[
        int,
        typer.Option(
            "--max-pages",
            min=1,
            help="FHIR search pages to read at most (100 ImagingStudies each); past it, or "
            "when a next link repeats a page or leaves the server, verify stops with an error.",
        ),
    ] = MAX_SEARCH_PAGES,
    dicomweb_auth: DicomwebAuth,
    network: Network,
    pacs: Annotated[
        str | None,
        typer.Option(
            "--pacs",
            metavar="AET@HOST:PORT",
            help="Compare the bundle files' ImagingStudies with this classic PACS over DIMSE "
            "(C-FIND) instead of their DICOMweb Endpoints. Needs fhirimg[dimse].",
            show_default=False,
        ),
    ] = None,
    calling_aet: Annotated[
        str,
        typer.Option("--calling-aet", metavar="AET", help="With --pacs: fhirimg's own AE title."),
    ] = "FHIRIMG",
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = 0,
) -> None:
    """Check that every series and instance an ImagingStudy lists exists in the PACS its
    dicom-wado-rs Endpoint names (QIDO-RS), and report the differences both ways: missing in PACS,
    missing in FHIR. Exit codes: 0 all agree, 1 differences found, 2 usage error, 3 a server
    cannot be used or reached (the FHIR server or a PACS), 4 no ImagingStudy to check.
    """
    configure_logging(verbose)
    if verbose < 2:
        logging.getLogger("httpx").setLevel(logging.WARNING)
    if server and (paths or pacs is not None) and not from_command_line("server"):
        server = None  # a server from the env or fhirimg.toml: the files given are what to check
    if server and paths:
        raise fail("give bundle files or --server, not both", ExitCode.USAGE)
    check_url(server, "--server")
    # Only what was typed: these may come from the environment or fhirimg.toml for push.
    if not server and from_command_line("user", "token_url", "client_id", "scope"):
        raise fail(
            "--user, --token-url, --client-id and --scope are the FHIR server's: give --server",
            ExitCode.USAGE,
        )
    pacs_urls = _pacs_urls(dicomweb_url or [])
    # The FHIR server's credentials are those of `push --server` (one implementation).
    fhir_auth = auth.build() if server else None
    pacs_auth = dicomweb_auth.build()
    if pacs_auth is not None and not pacs_urls:
        raise fail(
            "PACS credentials need --dicomweb-url naming the PACS they are for: the Endpoint "
            "addresses come from the ImagingStudies' data, which must not choose where "
            "credentials go",
            ExitCode.USAGE,
        )
    options = VerifyOptions(
        auth=pacs_auth,
        timeout=network.timeout,
        retry=network.retry,
        verify=network.verify,
        client_cert=network.dicomweb_cert_pair,
        deadline=network.max_time,
        allow_insecure_http=network.allow_insecure_http,
        study_uids=tuple(study or ()),
        pacs_urls=pacs_urls,
        max_pages=max_pages,
    )
    if pacs is not None and server:
        raise fail("--pacs compares bundle files: not with --server", ExitCode.USAGE)
    with exit_on_error(message=lambda exc: shown(server_message(exc))):
        if pacs is not None:  # a classic PACS over DIMSE (fhirimg.dimse.verify)
            report = _dimse.run_verify_dimse(
                paths or [Path("fhirimg-out")], pacs, calling_aet, network.timeout, study or []
            )
        elif server:
            with FhirClient(
                server,
                auth=fhir_auth,
                timeout=network.timeout,
                retry=network.retry,
                verify=network.verify,
                client_cert=network.client_cert_pair,
                deadline=network.max_time,
                allow_insecure_http=network.allow_insecure_http,
            ) as client:
                report = verify_server(client, options)
        else:
            report = verify_bundles(paths or [Path("fhirimg-out")], options)
    if json_out:
        print_json(int(report.exit_code), report.to_json())
    if not quiet:
        _print(report)
    for pacs in report.unreachable:
        err_console.print(
            f"[bold red]error:[/] cannot reach the PACS {shown(pacs)}: its studies were not "
            "checked",
            soft_wrap=True,
            highlight=False,
        )
    raise typer.Exit(int(report.exit_code))


def _pacs_urls(urls: list[str]) -> tuple[str, ...]:
    """``--dicomweb-url`` values (each may be a comma-separated list), checked: http(s), no
    credentials in them; exit 2 otherwise."""
    out: list[str] = []
    for url in (u.strip() for given in urls for u in given.split(",")):
        if not url:
            continue
        parts = urlsplit(url)
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            raise fail(
                f"--dicomweb-url wants an http(s) URL, got {redact_url(url)!r}", ExitCode.USAGE
            )
        check_url(url, "--dicomweb-url", DICOMWEB)
        out.append(url)
    return tuple(out)


def _print(report: VerifyReport) -> None:
    for check in report.studies:
        if check.ok:
            continue
        label = "differs" if check.contacted and not check.unreachable else "not checked"
        head = (
            f"[bold red]{label}:[/] {shown(check.source)} (study {shown(check.study_instance_uid)})"
        )
        err_console.print(head, soft_wrap=True, highlight=False)
        if check.error:
            where = f" (PACS {shown(check.endpoint)})" if check.contacted else ""
            err_console.print(
                f"    error{where}: {shown(check.error)}", soft_wrap=True, highlight=False
            )
        lines = [f"missing in PACS: series {s} instance {i}" for s, i in check.missing_in_pacs]
        lines += [f"missing in FHIR: series {s} instance {i}" for s, i in check.missing_in_fhir]
        lines += [
            f"SOP Class differs: {i}: FHIR {f}, PACS {p}" for i, f, p in check.sop_class_differs
        ]
        for line in lines[:_SHOWN]:
            err_console.print(f"    {clean(line)}", markup=False, highlight=False, soft_wrap=True)
        if len(lines) > _SHOWN:
            err_console.print(f"    ... and {len(lines) - _SHOWN} more (see --json)")
    for source, reason in report.skipped:
        err_console.print(
            f"[yellow]skipped:[/] {shown(source)}: {shown(reason)}", soft_wrap=True, highlight=False
        )
    not_contacted = report.not_contacted
    checked = len(report.studies) - not_contacted
    differing = sum(1 for s in report.studies if not s.ok and s.contacted)
    text = (
        f"verified {checked} ImagingStudy(ies): {checked - differing} agree with the PACS, "
        f"{differing} differ; {len(report.skipped)} skipped"
    )
    if not_contacted:
        text += f"; {not_contacted} not checked (their PACS was not contacted)"
    err_console.print(text, highlight=False)
