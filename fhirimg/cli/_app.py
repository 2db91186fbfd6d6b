"""The Typer application object and what every command shares (console, logging, exit codes).

This is the CLI's one error edge: :func:`fail` prints every error message, and :data:`EXIT_CODES`
with :func:`exit_on_error` maps every library exception to its documented exit code.

Commands live in their own modules (``convert_cmd``, ``validate_cmd``, ...) and register themselves on
``app``; each reads its options, calls one library function, prints, and sets the exit code.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from fhirimg.audit import Invocation
from fhirimg.cli import _config
from fhirimg.cli._help import unwrapped_help
from fhirimg.errors import (
    AuthError,
    CatalogError,
    ConfigError,
    FhirimgError,
    FolderLockedError,
    MissingFileError,
    PushError,
)
from fhirimg.exitcodes import ExitCode
from fhirimg.safetext import clean, redact_url, redact_urls

COMMAND_MODULES = {
    "convert": "fhirimg.cli.convert_cmd",
    "deidentify": "fhirimg.cli.deidentify_cmd",
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

    def format_help(self, ctx: Any, formatter: Any) -> None:
        unwrapped_help(formatter)
        super().format_help(ctx, formatter)

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
# soft_wrap when stderr is not a terminal (a log file, a cron mail, a pipe): rich would wrap
# every line at 80 columns there, breaking paths and summaries mid-word; one message, one line.
err_console = Console(stderr=True, highlight=False, soft_wrap=not sys.stderr.isatty())


class JsonLines(logging.Formatter):
    """One JSON object a line: ``time`` (UTC), ``level``, ``logger``, ``message`` (``--log-file``).

    >>> record = logging.LogRecord("fhirimg.push", logging.INFO, "", 0, "sent %s", ("a",), None)
    >>> record.created = 0.0
    >>> JsonLines().format(record)
    '{"time":"1970-01-01T00:00:00Z","level":"INFO","logger":"fhirimg.push","message":"sent a"}'
    """

    def format(self, record: logging.LogRecord) -> str:
        import orjson

        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created))
        doc = {
            "time": stamp,
            "level": record.levelname,
            "logger": record.name,
            "message": redact_urls(clean(record.getMessage())),
        }
        return orjson.dumps(doc).decode()


_log_file: list[logging.Handler] = []


def _open_log_file(path: Path) -> logging.Handler:
    """A handler appending JSON lines to ``path``, created owner-only (it names files)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    except OSError as exc:
        raise fail(
            f"cannot write --log-file {path}: {exc.strerror or exc}", ExitCode.USAGE
        ) from None
    handler = logging.StreamHandler(os.fdopen(fd, "a", encoding="utf-8"))
    handler.setFormatter(JsonLines())
    return handler


def configure_logging(verbose: int) -> None:
    """Configure logging once, from the number of ``-v`` flags (library modules add no handlers).

    ``-v`` shows fhirimg's INFO (mapping warnings with their codes, retries); ``-vv`` its DEBUG
    too (each request: method, path, status), never other libraries' debug output. With
    ``--log-file`` the same records, at least INFO, also go to the file as JSON lines.
    """
    from typer._click.globals import get_current_context

    level = logging.WARNING if verbose <= 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(
        level=min(level, logging.INFO),
        stream=sys.stderr,
        format="%(levelname)s %(name)s: %(message)s",
    )
    root = logging.getLogger()
    for handler in root.handlers:  # basicConfig's own (the stderr one), not a test's capture
        if type(handler) is logging.StreamHandler and handler not in _log_file:
            handler.setLevel(level)
    logging.getLogger("fhirimg").setLevel(level if level < logging.INFO else logging.INFO)
    ctx = get_current_context(silent=True)
    path = ctx.meta.get(_config.LOG_FILE_META) if ctx is not None else None
    while _log_file:  # one run's file only (a process may run several commands: tests)
        old = _log_file.pop()
        root.removeHandler(old)
        old.close()
    if path is not None:
        handler = _open_log_file(Path(path))
        handler.setLevel(min(level, logging.INFO))
        root.addHandler(handler)
        _log_file.append(handler)
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


JSON_VERSION = 1
"""Version of the ``--json`` envelope's shape (docs/cli-json.schema.json); a change that could
break a reader of it raises this."""

_SNAKE = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)+$")


def camel_keys(doc: Any) -> Any:
    """``doc`` with every snake_case key made camelCase (``elapsed_s`` -> ``elapsedS``), the
    naming of every ``--json`` document; other keys (file names, camelCase) stay.

    >>> camel_keys({"elapsed_s": 1, "bundles": [{"learned_limit": 2, "a.json": 3}]})
    {'elapsedS': 1, 'bundles': [{'learnedLimit': 2, 'a.json': 3}]}
    """
    if isinstance(doc, dict):
        return {
            (re.sub(r"_([a-z0-9])", lambda m: m.group(1).upper(), k) if _SNAKE.match(k) else k): (
                camel_keys(v)
            )
            for k, v in doc.items()
        }
    if isinstance(doc, list):
        return [camel_keys(v) for v in doc]
    return doc


def json_envelope(
    command: str,
    exit_code: int,
    summary: Any,
    errors: list[dict[str, str]] | None = None,
    **results: Any,
) -> dict[str, Any]:
    """The one ``--json`` document of every command (docs/cli.md#json-output): ``fhirimg`` (the
    version that wrote it), ``version`` (of this shape), ``command``, ``exitCode``, ``summary``
    (null when the run could not start), ``errors`` (``code``, ``message``), then the command's
    ``results`` (``files`` of validate, ...). Keys camelCase.

    >>> env = json_envelope("push", 3, None, [{"code": "cannot-start", "message": "down"}])
    >>> list(env), env["exitCode"], env["version"]
    (['fhirimg', 'version', 'command', 'exitCode', 'summary', 'errors'], 3, 1)
    """
    from fhirimg.audit import fhirimg_version

    out: dict[str, Any] = {
        "fhirimg": fhirimg_version(),
        "version": JSON_VERSION,
        "command": command,
        "exitCode": int(exit_code),
        "summary": camel_keys(summary),
        "errors": errors or [],
    }
    out.update(camel_keys(results))
    return out


def print_json(
    exit_code: int,
    summary: Any,
    errors: list[dict[str, str]] | None = None,
    **results: Any,
) -> None:
    """Write the running command's ``--json`` envelope (:func:`json_envelope`) to stdout."""
    import orjson
    from typer._click.globals import get_current_context

    ctx = get_current_context(silent=True)
    command = (ctx.command.name or "") if ctx is not None else ""
    doc = json_envelope(command, exit_code, summary, errors, **results)
    sys.stdout.buffer.write(
        orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE)
    )
    sys.stdout.flush()


_ERROR_CODES = {
    ExitCode.USAGE: "usage",
    ExitCode.CANNOT_START: "cannot-start",
    ExitCode.PARTIAL: "partial",
    ExitCode.NOTHING_DONE: "nothing-to-do",
}


def _json_requested() -> bool:
    from typer._click.globals import get_current_context

    ctx = get_current_context(silent=True)
    return bool(ctx is not None and ctx.params.get("json_out"))


def fail(message: str, code: ExitCode) -> typer.Exit:
    """Print ``message`` to stderr as plain text and return the Exit to raise with ``code``.

    Messages hold paths, URLs and server text: through :func:`shown`, an OperationOutcome saying
    ``[bold]`` or holding an escape sequence prints as text instead of being read as rich markup
    or by the terminal. ``soft_wrap``: one error, one line, greppable in a cron mail.
    """
    # redact_urls: a URL with a password in it is never printed, whoever built the message.
    text = shown(redact_urls(message))
    err_console.print(f"[bold red]error:[/] {text}", soft_wrap=True, highlight=False)
    if _json_requested():  # --json: the envelope is printed on failure too (stdout)
        error = {"code": _ERROR_CODES.get(code, "error"), "message": redact_urls(clean(message))}
        print_json(int(code), None, [error])
    for handler in _log_file:  # the error that ends the run, in the log file too
        handler.handle(
            logging.makeLogRecord(
                {
                    "name": "fhirimg.cli",
                    "levelname": "ERROR",
                    "levelno": logging.ERROR,
                    "msg": message,
                }
            )
        )
    return typer.Exit(int(code))


def _warn(message: str) -> None:
    err_console.print(f"warning: {message}", markup=False, highlight=False, soft_wrap=True)


_CONFIG_HOOKS = _config.Hooks(
    fail=lambda message: fail(message, ExitCode.USAGE), warn=_warn, commands=COMMAND_MODULES
)


EXIT_CODES: Mapping[type[BaseException], ExitCode] = {
    KeyboardInterrupt: ExitCode.INTERRUPTED,
    FhirimgError: ExitCode.CANNOT_START,
    # A bad value of an option (a URL that is not http(s), a time zone, a --layers list) is a
    # usage error on every command, whichever layer notices it.
    ConfigError: ExitCode.USAGE,
    MissingFileError: ExitCode.CANNOT_START,  # a CA bundle, a certificate: like a missing path
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

    >>> from fhirimg.errors import AuthError
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


SECRET_PARAMS = frozenset({"token", "dicomweb_token"})
"""Options whose value is a secret: ``***`` in report.json's audit (the others name files)."""

_SOURCES = {"COMMANDLINE": "commandLine", "ENVIRONMENT": "environment", "DEFAULT_MAP": "config"}


PLAIN_STORAGE_OPTIONS = frozenset(
    {"endpoint_url", "region_name", "anon", "use_ssl", "requester_pays", "project"}
)
"""``--storage-option`` keys whose value is shown in the audit; any other key's value (``key``,
``secret``, ``token``, a credentials file's content ...) is ``***``: fsspec's options mix
settings and credentials, so only the known settings are shown."""


def _audit_value(name: str, value: Any) -> Any:
    if name in SECRET_PARAMS:
        return "***"
    if name == "storage_option" and isinstance(value, str):
        key, sep, setting = value.partition("=")
        if sep and key.strip() not in PLAIN_STORAGE_OPTIONS:
            return f"{key}=***"
        return f"{key}{sep}{redact_url(setting)}" if "://" in setting else value
    if isinstance(value, list | tuple):
        return [_audit_value(name, v) for v in value]
    if isinstance(value, bool | int | float) or value is None:
        return value
    text = str(getattr(value, "value", value))  # an enum's value, a path's text
    return redact_url(text) if "://" in text else text


def invocation(inputs: Iterable[object] = ()) -> Invocation:
    """The :class:`~fhirimg.audit.Invocation` of the running command, for report.json's
    ``audit``: each option given (not left at its default) by its long name, with its value
    (secrets ``***``, URLs without credentials) and where it came from (``commandLine``,
    ``environment``, ``config``), the input roots and the config file read."""
    from typer._click.globals import get_current_context

    ctx = get_current_context(silent=True)
    if ctx is None:
        return Invocation(command="", inputs=tuple(str(i) for i in inputs))
    options: dict[str, Any] = {}
    for param in ctx.command.params:
        name = param.name or ""
        source = getattr(ctx.get_parameter_source(name), "name", "")
        if source not in _SOURCES or not param.opts or not param.opts[0].startswith("-"):
            continue
        flag = max(param.opts, key=len)
        options[flag] = {
            "value": _audit_value(name, ctx.params.get(name)),
            "from": _SOURCES[source],
        }
    config = ctx.meta.get("fhirimg.config")
    return Invocation(
        command=ctx.command.name or "",
        options=options,
        inputs=tuple(redact_url(str(i)) for i in inputs),
        config_file=str(config) if config is not None else None,
    )


RESUMABLE = "interrupted: confirmed work is in the journal; run the same command to continue"
"""What Ctrl-C prints in a command that keeps a journal (``push``, ``convert --push``)."""

CONVERT_RESUMABLE = (
    "interrupted: the bundles written so far are kept and recorded in the folder's catalog; "
    "run the same command again to continue where it stopped"
)
"""What Ctrl-C prints in ``convert`` (the catalog makes the next run incremental)."""


def require_paths(paths: Iterable[str | Path]) -> None:
    """Exit 3 (nothing could be done: no input) naming the first path that does not exist, in
    the words every command uses (``push``, ``validate``, ``verify`` say it from the library)."""
    for path in paths:
        if not os.path.lexists(path):
            raise fail(f"no such file or folder: {path}", ExitCode.CANNOT_START)


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
        from fhirimg._version import __version__

        typer.echo(__version__)
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
