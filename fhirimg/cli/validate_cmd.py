"""``fhirimg validate``: check Bundles and resources as a FHIR server will (docs/validate.md)."""

from __future__ import annotations

import dataclasses
import sys
from enum import StrEnum
from typing import Annotated

import orjson
import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

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
)
from fhirimg.cli._auth import check_url
from fhirimg.cli._config import from_command_line
from fhirimg.cli._help import PanelledCommand
from fhirimg.cli._options import FhirAuth, FhirVersionOrAuto, Tls, option_groups
from fhirimg.errors import ConfigError
from fhirimg.exitcodes import ExitCode
from fhirimg.validate import FileResult, Severity, iter_validate, parse_layers
from fhirimg.validate.runner import default_jobs, display_name, findings_json


class OutputFormat(StrEnum):
    """``validate --format``."""

    TABLE = "table"
    TEXT = "text"


_STYLE = {Severity.ERROR: "bold red", Severity.WARNING: "yellow", Severity.INFORMATION: "dim"}


@app.command("validate", cls=PanelledCommand)
@option_groups(auth=FhirAuth, tls=Tls)
def validate_command(
    *,
    paths: Annotated[
        list[str],
        typer.Argument(
            help="Bundle or resource JSON files, folders to search for *.json, or - for stdin.",
            metavar="FILE_OR_DIR",
        ),
    ],
    fhir_version: Annotated[
        FhirVersionOrAuto,
        typer.Option(
            "--fhir-version",
            help="FHIR release to check against; auto looks at the content (default R4).",
            case_sensitive=False,
        ),
    ] = FhirVersionOrAuto.AUTO,
    strict: Annotated[
        bool, typer.Option("--strict", help="Treat warnings as errors (exit 1 on a warning).")
    ] = False,
    json_out: JsonOpt = False,
    server: Annotated[
        str | None,
        typer.Option(
            "--server",
            help="Also ask this FHIR server base URL's $validate and merge its OperationOutcome.",
        ),
    ] = None,
    jobs: Annotated[
        int,
        typer.Option("--jobs", "-j", min=0, help="Worker processes (0 = one per CPU)."),
    ] = 0,
    layers: Annotated[
        str,
        typer.Option(
            "--layers",
            metavar="LAYERS",
            help="fast (no FHIRPath invariants), all, or a list: json,model,schema,invariant,"
            "bundle,imaging.",
        ),
    ] = "all",
    auth: FhirAuth,
    tls: Tls,
    output_format: Annotated[
        OutputFormat,
        typer.Option(
            "--format",
            help="Human output on stdout: 'table' (one table per file) or 'text' (one line per "
            "finding, file:location: severity: rule: message, like a compiler; for logs and "
            "editors).",
            case_sensitive=False,
        ),
    ] = OutputFormat.TABLE,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = 0,
) -> None:
    """Check FHIR R4/R5 Bundles and resources: JSON, models, HL7 schema, invariants, bundle
    integrity and imaging rules. Exit 0 when no errors, 1 when errors were found."""
    configure_logging(verbose)
    check_url(server, "--server")
    # Only what was typed: a token or token URL may come from the env or fhirimg.toml.
    given = [f.name for f in dataclasses.fields(FhirAuth) if f.name != "token"]
    if not server and from_command_line(*given):
        raise fail("the authentication options are for --server: give --server", ExitCode.USAGE)
    # The $validate server's credentials are those of `push --server` (one implementation).
    server_auth = auth.build() if server else None
    workers = jobs or default_jobs()
    results: list[FileResult] = []
    # A bad --layers is a usage error; an unreachable --server or unreadable input, exit 3.
    with exit_on_error(codes={ConfigError: ExitCode.USAGE}):
        for result in iter_validate(
            paths,
            fhir_version=fhir_version.value,
            layers=parse_layers(layers),
            jobs=workers,
            server=server,
            server_auth=server_auth,
            server_tls=tls.settings,
        ):
            results.append(result)

    bad = {Severity.ERROR, Severity.WARNING} if strict else {Severity.ERROR}
    counts = {s: sum(1 for r in results for f in r.findings if f.severity is s) for s in Severity}
    failed = sum(1 for r in results if any(f.severity in bad for f in r.findings))
    code = ExitCode.PARTIAL if failed else ExitCode.OK
    if json_out:
        summary = {
            "files": len(results),
            "failed": failed,
            "errors": counts[Severity.ERROR],
            "warnings": counts[Severity.WARNING],
            "information": counts[Severity.INFORMATION],
        }
        print_json(int(code), summary, files=orjson.loads(findings_json(results))["files"])
    elif output_format is OutputFormat.TEXT:
        _print_lines(results, verbose)
    else:
        _print_tables(results, Console(highlight=False, soft_wrap=False), verbose)
    if not quiet:
        err_console.print(
            f"{len(results)} file(s): {failed} with {'errors or warnings' if strict else 'errors'}"
            f" ({counts[Severity.ERROR]} errors, {counts[Severity.WARNING]} warnings, "
            f"{counts[Severity.INFORMATION]} information)"
        )
    raise typer.Exit(int(code))


def _print_lines(results: list[FileResult], verbose: int) -> None:
    """``--format text``: ``file:location: severity: rule: message``, one finding a line (the
    file's keys and values reach it: control characters removed by display_name)."""
    out = sys.stdout
    for r in results:
        for f in r.findings:
            if verbose or f.severity is not Severity.INFORMATION:
                out.write(
                    f"{display_name(r.file)}:{display_name(f.location)}: {f.severity.value}: "
                    f"{f.rule_code()}: {display_name(f.message)}\n"
                )
    out.flush()


def _print_tables(results: list[FileResult], console: Console, verbose: int) -> None:
    for r in results:
        shown = [f for f in r.findings if verbose or f.severity is not Severity.INFORMATION]
        if not shown:
            continue
        version = f" ({r.release.upper()})" if r.release else ""
        table = Table(title=f"{r.file}{version}", title_justify="left", expand=False)
        table.add_column("severity")
        table.add_column("layer")
        table.add_column("location", overflow="fold")
        table.add_column("message", overflow="fold")
        for f in shown:
            table.add_row(
                Text(f.severity.value, style=_STYLE[f.severity]),
                Text(f.layer),
                # Keys and values of the file reach the table: no control codes to the terminal.
                Text(display_name(f.location)),
                Text(display_name(f.message)),
            )
        console.print(table)
