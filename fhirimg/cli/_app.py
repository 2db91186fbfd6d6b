"""The Typer application object and what every command shares (console, logging, exit codes).

This is the CLI's one error edge: :func:`fail` prints every error message, and :data:`EXIT_CODES`
with :func:`exit_on_error` maps every library exception to its documented exit code.

Commands live in their own modules (``convert_cmd``, ``validate_cmd``, ...) and register themselves on
``app``; each reads its options, calls one library function, prints, and sets the exit code.
"""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from fhirimg.cli import _config
from fhirimg.errors import AuthError, CatalogError, FhirimgError, FolderLockedError, PushError
from fhirimg.exitcodes import ExitCode
from fhirimg.safetext import clean, redact_urls

COMMAND_MODULES = {
    "convert": "fhirimg.cli.convert_cmd",
    "listen": "fhirimg.cli.listen_cmd",
    "push": "fhirimg.cli.push_cmd",
    "validate": "fhirimg.cli.validate_cmd",
    "verify": "fhirimg.cli.verify_cmd",
    "watch": "fhirimg.cli.watch_cmd",
}
"""Each command's module, imported when the command is asked for (its name on the command line,
``fhirimg --help``, completion): ``fhirimg push`` never imports what ``convert`` needs (issue 19).
A module registers its command on :data:`app` when imported."""


def load_commands() -> None:
    """Import every command's module (each registers its command on :data:`app`): for code that
    walks all commands, such as the docs tests; running a command needs none of it."""
    for module in COMMAND_MODULES.values():
        importlib.import_module(module)


class _Commands(TyperGroup):
    """The top-level command group, loading each command's module on first use.

    Every command it holds gets the settings of :mod:`fhirimg.cli._config` (``--config``, the
    ``FHIRIMG_*`` variables) here, in one place, whichever way it was built.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for name, command in self.commands.items():
            _config.prepare(name, command, _CONFIG_HOOKS)

    def add_command(self, cmd: Any, name: str | None = None) -> None:
        _config.prepare(name or cmd.name or "", cmd, _CONFIG_HOOKS)
        super().add_command(cmd, name)

    def list_commands(self, ctx: Any) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(COMMAND_MODULES))

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if cmd_name not in self.commands and cmd_name in COMMAND_MODULES:
            importlib.import_module(COMMAND_MODULES[cmd_name])
            # Typer builds click commands from the registrations when the group is built; build
            # it again for the one just registered (public API, no private converter).
            built = typer.main.get_command(app)
            command = getattr(built, "commands", {}).get(cmd_name)
            if command is not None:
                self.add_command(command, cmd_name)
        return super().get_command(ctx, cmd_name)


app = typer.Typer(
    name="fhirimg",
    cls=_Commands,
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
    # httpx logs every request's whole URL at INFO, and httpcore its traffic at DEBUG: QIDO-RS and
    # FHIR search queries carry PatientID, AccessionNumber, names. fhirimg.http logs each request
    # itself, path only, so theirs stay off at every -v level.
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # pydicom logs and warns about odd input in its own words, which may quote raw header bytes
    # (a patient's name): fhirimg.scan turns what it says while reading into per-file warnings
    # without the values (shown from -v). Whatever it says elsewhere (pixels), and any library's
    # warnings.warn, reaches stderr only with -vv.
    logging.captureWarnings(True)
    for name in ("pydicom", "py.warnings"):
        logging.getLogger(name).propagate = verbose >= 2


def shown(text: object) -> str:
    """``text`` (a path, a URL, a server's words) fit for a rich message: terminal control codes
    removed (:func:`fhirimg.safetext.clean`: an ESC from a server cannot clear the screen or
    retitle the window) and rich markup escaped (``[bold]`` prints as is).

    >>> shown("refused\\x1b[2J [bold]x[/bold]")
    'refused \\\\[bold]x\\\\[/bold]'
    """
    return escape(clean(text))


def fail(message: str, code: ExitCode) -> typer.Exit:
    """Print ``message`` to stderr as plain text and return the Exit to raise with ``code``.

    Messages hold paths, URLs and server text: through :func:`shown`, an OperationOutcome saying
    ``[bold]`` or holding an escape sequence prints as text instead of being read as rich markup
    or by the terminal. ``soft_wrap``: one error, one line, greppable in a cron mail.
    """
    # redact_urls: a URL with a password in it is never printed, whoever built the message.
    text = shown(redact_urls(message))
    err_console.print(f"[bold red]error:[/] {text}", soft_wrap=True, highlight=False)
    return typer.Exit(int(code))


def _warn(message: str) -> None:
    err_console.print(f"warning: {message}", markup=False, highlight=False, soft_wrap=True)


_CONFIG_HOOKS = _config.Hooks(
    fail=lambda message: fail(message, ExitCode.USAGE), warn=_warn, commands=COMMAND_MODULES
)


EXIT_CODES: Mapping[type[BaseException], ExitCode] = {
    KeyboardInterrupt: ExitCode.INTERRUPTED,
    FhirimgError: ExitCode.CANNOT_START,
    CatalogError: ExitCode.CANNOT_START,  # the message says when --full rebuilds it
    FolderLockedError: ExitCode.CANNOT_START,  # another run writes to the output folder
}
"""The exit code of each exception a command can end with (docs/cli.md). The most specific class
of an exception's MRO wins; a command adds its own entries (``validate``: a bad ``--layers`` is a
usage error). Whatever is not here is a bug, exit 70 in :func:`fhirimg.cli.main`."""


def exit_code_for(
    exc: BaseException, codes: Mapping[type[BaseException], ExitCode] | None = None
) -> ExitCode | None:
    """The exit code :data:`EXIT_CODES` (with ``codes`` over it) gives ``exc``, or None.

        >>> from fhirimg.cli import _config
    from fhirimg.errors import AuthError
        >>> exit_code_for(AuthError("401")), exit_code_for(RuntimeError("bug"))
        (<ExitCode.CANNOT_START: 3>, None)
        >>> exit_code_for(ValueError("bad"), {ValueError: ExitCode.USAGE})
        <ExitCode.USAGE: 2>
    """
    table = {**EXIT_CODES, **(codes or {})}
    return next((table[cls] for cls in type(exc).__mro__ if cls in table), None)


INTERRUPTED = "interrupted: run the same command again to continue where it stopped"
"""What Ctrl-C prints when the command said nothing more specific (:func:`say_interrupted`)."""

_said_interrupted: list[str] = []


def say_interrupted(text: str = INTERRUPTED) -> None:
    """Print the one line that says the command was interrupted (SIGINT, exit 130), once per
    process: :func:`exit_on_error` prints the command's own words, and
    :func:`fhirimg.cli.main` this default for an interrupt that landed anywhere else (while
    the command's modules were still being imported, say, where typer turns it into a silent
    exit 130).

    A plain write, not rich: the signal may land while rich is importing or holds its locks.
    """
    if _said_interrupted:
        return
    _said_interrupted.append(text)
    try:
        sys.stderr.write(clean(text) + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):  # stderr closed: the exit code still says it
        pass


@contextmanager
def exit_on_error(
    *,
    codes: Mapping[type[BaseException], ExitCode] | None = None,
    message: Callable[[BaseException], str] = str,
    interrupted: str = INTERRUPTED,
) -> Iterator[None]:
    """Turn the exceptions of the table into their exit code and a one-line message.

    Every command runs its library call inside this instead of an except-ladder of its own, so
    that one exception means one exit code everywhere. ``message`` words the error (``str`` by
    default; ``convert --push`` says which server); ``interrupted`` is printed on Ctrl-C (a
    command with a journal says that re-running continues). Anything else propagates: a bug.
    """
    try:
        yield
    except typer.Exit:
        raise
    except BaseException as exc:
        code = exit_code_for(exc, codes)
        if code is None:
            raise
        if code is ExitCode.INTERRUPTED:
            say_interrupted(interrupted)
            raise typer.Exit(int(code)) from None
        raise fail(message(exc), code) from None


RESUMABLE = "interrupted: confirmed work is in the journal; run the same command to continue"
"""What Ctrl-C prints in a command that keeps a journal (``push``, ``convert --push``)."""

CONVERT_RESUMABLE = (
    "interrupted: the bundles written so far are kept and recorded in the folder's catalog; "
    "run the same command again to continue where it stopped"
)
"""What Ctrl-C prints in ``convert`` (the catalog makes the next run incremental)."""


def server_message(exc: BaseException) -> str:
    """The error line of a command that talks to servers: a server that cannot be used says so;
    refused credentials, a locked journal and bad input speak for themselves."""
    if isinstance(exc, PushError) and not isinstance(exc, AuthError):
        return f"cannot use the server: {exc}"
    return str(exc)


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
