"""``fhirimg deidentify``: DICOM files to de-identified DICOM files (:mod:`fhirimg.deid.files`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fhirimg.cli._app import (
    app,
    configure_logging,
    err_console,
    exit_on_error,
    fail,
    print_json,
    require_paths,
)
from fhirimg.cli._deid import Deid
from fhirimg.cli._help import PanelledCommand
from fhirimg.cli._options import option_groups
from fhirimg.errors import ConfigError
from fhirimg.exitcodes import ExitCode


@app.command("deidentify", cls=PanelledCommand)
@option_groups(deid=Deid)
def deidentify_command(
    *,
    paths: Annotated[
        list[Path],
        typer.Argument(
            help="DICOM files and/or folders (searched recursively; DICOM is recognised by "
            "content).",
            metavar="SRC...",
            show_default=False,
        ),
    ],
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            metavar="DIR",
            help="Folder for the de-identified files (<study>/<series>/<instance>.dcm) and "
            "report.json.",
            file_okay=False,
        ),
    ],
    json_out: Annotated[
        bool, typer.Option("--json", help="Print a JSON summary on stdout.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No summary on stderr.")] = False,
    verbose: Annotated[
        int, typer.Option("--verbose", "-v", count=True, help="More detail on stderr.")
    ] = 0,
    deid: Deid,
) -> None:
    """De-identify DICOM files (PS3.15 Annex E Basic Profile) into DICOM Part 10 files.

    The same implementation as convert --deidentify: the same key gives the same pseudonyms,
    UIDs and dates. Every input file ends up written, skipped (not DICOM, DICOMDIR, possible
    burned-in text), duplicate or failed in report.json. Exit codes: 0 all written or skipped,
    1 some failed, 2 usage error (no key), 3 a missing input path or output that cannot be
    written, 4 no input file.
    """
    configure_logging(verbose)
    require_paths(paths)  # exit 3, as every command says it (not click's usage error, 2)
    options = deid.options()
    reid_map = deid.checked_reid_map(out)
    from fhirimg.deid.files import deidentify_files

    with exit_on_error(codes={ConfigError: ExitCode.USAGE}):
        try:
            report = deidentify_files(paths, out, options, reid_map)
        except OSError as exc:
            why = exc.strerror or str(exc)
            raise fail(f"cannot write {out}: {why}", ExitCode.CANNOT_START) from None
    if json_out:  # the envelope of every command (docs/cli.md#json-output)
        print_json(int(report.exit_code), report.summary())
    if not quiet:
        counts = report.counts()
        err_console.print(
            f"{counts['written']} file(s) written to {out}, {counts['skipped']} skipped, "
            f"{counts['duplicate']} duplicate, {counts['failed']} failed (report.json says why)",
            soft_wrap=True,
            highlight=False,
            markup=False,
        )
    raise typer.Exit(int(report.exit_code))
