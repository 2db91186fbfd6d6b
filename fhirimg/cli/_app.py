"""The Typer application object and what every command shares (console, logging, exit codes).

Commands live in their own modules (``convert_cmd``, ``validate_cmd``, ...) and register themselves on
``app``; each reads its options, calls one library function, prints, and sets the exit code.
"""

from __future__ import annotations

import logging
import sys
from typing import Annotated

import typer
from rich.console import Console

from fhirimg.exitcodes import ExitCode

app = typer.Typer(
    name="fhirimg",
    help=(
        "Put DICOM images into FHIR: convert folders of DICOM files to FHIR transaction Bundles "
        "(Patient, ImagingStudy, Endpoint, Binary, Media), validate them strictly, and push them "
        "to a FHIR server (and the images to a DICOMweb server)."
    ),
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
    rich_markup_mode=None,
)

# People's messages and progress go to stderr; stdout carries data only (--json summaries).
err_console = Console(stderr=True, highlight=False)


def configure_logging(verbose: int) -> None:
    """Configure logging once, from the number of ``-v`` flags (library modules add no handlers)."""
    level = logging.WARNING if verbose <= 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )


def fail(message: str, code: ExitCode) -> typer.Exit:
    """Print ``message`` to stderr and return the Exit to raise with ``code``."""
    err_console.print(f"[bold red]error:[/] {message}")
    return typer.Exit(int(code))


VerboseOpt = Annotated[
    int, typer.Option("--verbose", "-v", count=True, help="More detail on stderr (-v, -vv).")
]
QuietOpt = Annotated[
    bool, typer.Option("--quiet", "-q", help="No progress bar and no summary on stderr.")
]
JsonOpt = Annotated[
    bool, typer.Option("--json", help="Print a machine-readable JSON summary on stdout.")
]


def _show_version(value: bool) -> None:
    if value:
        from importlib.metadata import version as _v

        typer.echo(_v("fhirimg"))
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            help="Show the fhirimg version and exit.",
            is_eager=True,
            callback=_show_version,
        ),
    ] = False,
) -> None:
    """Put DICOM images into FHIR."""
