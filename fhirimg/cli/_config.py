"""Settings from a config file (``fhirimg.toml``) and ``FHIRIMG_*`` environment variables, the same
for every command.

One central mechanism, no command body involved: click already looks for an option's value on the
command line, then in its environment variable (``Option.envvar``), then in the context's
``default_map``, then the declared default. :func:`prepare` runs on each command when the command
group builds it (:class:`fhirimg.cli._app._Commands`): it gives the options of :data:`SETTINGS`
their ``FHIRIMG_<KEY>`` variable and adds ``--config FILE``, an eager option whose callback fills
``default_map`` from the file before any other option is read. Precedence, documented in
docs/cli.md#configuration: **command line > environment > config file > default**.

The file::

    server = "https://fhir.example/r4"        # shared keys: every command with that option
    token_file = "/run/secrets/fhir-token"    # paths relative to the file's folder
    timezone = "Europe/Berlin"
    patient_id_system = ["urn:oid:1.2.3"]

    [push]                                    # a command's own table: any of its options
    jobs = 8

Keys are option names without the leading dashes (``dicomweb-url`` or ``dicomweb_url``). An
unknown key or table is a usage error (exit 2): a typo must not silently fall back to a default.
A file holding a secret (``token``, ``dicomweb_token``) that other users may read is refused
(exit 2; a group-readable one is warned about): it would be a password in a world-readable file.
"""

from __future__ import annotations

import functools
import os
import stat
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer
from typer.core import TyperOption
from typer.models import TyperPath

CONFIG_NAME = "fhirimg.toml"
"""The config file looked for in the working folder when ``--config`` is not given."""

CONFIG_ENV = "FHIRIMG_CONFIG"
"""The environment variable that names a config file, like ``--config``."""

CONFIG_PANEL = "Configuration"


@dataclass(frozen=True)
class Setting:
    """A shared key: the option (parameter) it fills on every command that has one, and its
    environment variable."""

    key: str
    help: str

    @property
    def env(self) -> str:
        """``FHIRIMG_`` and the key in upper case.

        >>> Setting("dicomweb_url", "").env
        'FHIRIMG_DICOMWEB_URL'
        """
        return "FHIRIMG_" + self.key.upper()


SETTINGS: tuple[Setting, ...] = (
    Setting("server", "FHIR server base URL (push --server, verify --server)"),
    Setting("token", "FHIR server bearer token (a secret: prefer token_file)"),
    Setting("token_file", "file holding the FHIR server's bearer token"),
    Setting("user", "FHIR server basic-auth user"),
    Setting("password_file", "file holding the FHIR server's basic-auth password"),
    Setting("token_url", "OAuth2 token endpoint of the FHIR server"),
    Setting("client_id", "OAuth2 client id"),
    Setting("client_secret_file", "file holding the OAuth2 client secret"),
    Setting("scope", "OAuth2 scope"),
    Setting("jwt_key", "PEM or JWK private key signing the SMART client assertion"),
    Setting("jwt_kid", "key id (kid) of jwt_key in the client's JWKS"),
    Setting("dicomweb_url", "DICOMweb base URL of the images (the Endpoint)"),
    Setting("dicomweb_token", "DICOMweb bearer token (a secret: prefer dicomweb_token_file)"),
    Setting("dicomweb_token_file", "file holding the DICOMweb bearer token"),
    Setting("dicomweb_user", "DICOMweb basic-auth user"),
    Setting("dicomweb_password_file", "file holding the DICOMweb basic-auth password"),
    Setting("dicomweb_token_url", "OAuth2 token endpoint of the DICOMweb server"),
    Setting("dicomweb_client_id", "OAuth2 client id for the DICOMweb server"),
    Setting("dicomweb_client_secret_file", "file holding the DICOMweb OAuth2 client secret"),
    Setting("dicomweb_jwt_key", "private key of the DICOMweb SMART client assertion"),
    Setting("dicomweb_jwt_kid", "key id of dicomweb_jwt_key"),
    Setting("ca_bundle", "PEM file of CA certificates to trust"),
    Setting("client_cert", "client certificate (mutual TLS) for the FHIR server"),
    Setting("client_key", "private key of client_cert"),
    Setting("dicomweb_client_cert", "client certificate for the DICOMweb server"),
    Setting("dicomweb_client_key", "private key of dicomweb_client_cert"),
    Setting("allow_insecure_http", "allow credentials over plain http:// (true/false)"),
    Setting("timeout", "seconds to wait for each response"),
    Setting("max_time", "seconds one request may take in all"),
    Setting("retries", "retries per request"),
    Setting("backoff", "first retry wait in seconds"),
    Setting("max_retry_time", "give a request up after retrying this long"),
    Setting("log_file", "file the log is appended to as JSON lines"),
    Setting("fhir_version", "FHIR release: r4 or r5"),
    Setting("timezone", "IANA time zone for DICOM times without an offset"),
    Setting("patient_id_system", "Patient ID system(s): URI or ISSUER=URI (a list)"),
    Setting("accession_system", "Accession Number systems: ISSUER=URI (a list)"),
    Setting("coding_system", "Coding.system per coding scheme: SCHEME=URI (a list)"),
)
"""The shared keys, each the name of an option's parameter. A key applies to every command that
has that option, except those of :data:`NOT_SHARED`."""

SECRET_KEYS = frozenset({"token", "dicomweb_token"})
"""Keys whose value is itself a secret (the others name files or are not secret)."""

NOT_SHARED = frozenset({("validate", "server")})
"""(command, key) pairs a shared key does not fill: ``validate --server`` asks a server's
$validate on top of the local checks, which a server configured for ``push`` must not switch on
(put it in a ``[validate]`` table to mean it)."""

_BY_KEY = {s.key: s for s in SETTINGS}


def _key(name: str) -> str:
    return name.replace("-", "_")


def shared_params(command: str, params: list[Any]) -> dict[str, Setting]:
    """The parameters of ``command`` that a shared key fills, by parameter name."""
    return {
        p.name: _BY_KEY[p.name]
        for p in params
        if isinstance(p, TyperOption) and p.name in _BY_KEY and (command, p.name) not in NOT_SHARED
    }


@dataclass(frozen=True)
class Hooks:
    """What the config callback needs from the CLI's error edge (:mod:`fhirimg.cli._app`), handed
    in so that this module does not import it: ``fail`` makes the exit of a usage error from a
    message, ``warn`` prints a warning line, ``commands`` are the command names (the tables a
    file may hold)."""

    fail: Callable[[str], BaseException]
    warn: Callable[[str], None]
    commands: Collection[str]


def prepare(name: str, command: Any, hooks: Hooks) -> None:
    """Give ``command``'s shared options their environment variable and add ``--config``.
    Idempotent (the group may build a command more than once)."""
    if any(p.name == "config" for p in command.params):
        return
    _readable_help(command)
    command.params.append(
        TyperOption(
            param_decls=["log_file", "--log-file"],
            type=TyperPath(dir_okay=False, path_type=Path),
            expose_value=False,
            callback=_log_file_callback,
            metavar="FILE",
            help="Also write the log as JSON lines to FILE (appended, created 0600): what -v "
            "shows at least, the request log with -vv.",
            rich_help_panel=CONFIG_PANEL,
        )
    )
    option = TyperOption(
        param_decls=["config", "--config"],
        type=TyperPath(dir_okay=False, path_type=Path),
        envvar=CONFIG_ENV,
        is_eager=True,
        expose_value=False,
        callback=functools.partial(_load_callback, hooks),
        metavar="FILE",
        help=f"Read option values from this TOML file (default: ./{CONFIG_NAME} when present; "
        f"env {CONFIG_ENV}). The command line and FHIRIMG_* variables win over it.",
        rich_help_panel=CONFIG_PANEL,
    )
    command.params.append(option)
    for param_name, setting in shared_params(name, command.params).items():
        for param in command.params:
            if param.name == param_name and not param.envvar:
                param.envvar = setting.env


def _metavar(param: Any) -> str:
    """A readable metavar for an option or argument declared without one: ``PATH``, ``URL``,
    ``N``, ``SECONDS``, ``TEXT`` (typer's default shows ``<str>``, ``<list[str]>``)."""
    name = param.name or ""
    type_name = type(param.type).__name__
    if isinstance(param.type, TyperPath):
        kind = "PATH" if param.type.dir_okay and param.type.file_okay else "FILE"
        kind = "DIR" if not param.type.file_okay else kind
    elif name in ("server", "push_url") or name.endswith(("_url", "dicomweb", "from_dicomweb")):
        kind = "URL"
    elif "Int" in type_name:
        kind = "N"
    elif "Float" in type_name:
        kind = "SECONDS" if name in ("timeout", "max_time", "backoff", "max_retry_time") else "N"
    elif "Choice" in type_name or "Enum" in type_name:
        return ""  # typer shows the choices
    else:
        kind = name.upper().replace("_", "-") if name in ("study", "user", "scope") else "TEXT"
    if param.param_type_name == "argument":
        return f"{kind}..." if param.nargs == -1 else kind
    return kind


def _readable_help(command: Any) -> None:
    """One help style for every command: readable metavars, and the first sentence of the help
    as the command's line in ``fhirimg --help`` (click would cut it at 45 characters)."""
    for param in command.params:
        is_flag = getattr(param, "is_flag", False) or getattr(param, "count", False)
        if param.metavar is None and not is_flag:
            metavar = _metavar(param)
            if metavar:
                param.metavar = metavar
    if command.help and not command.short_help:
        first = command.help.strip().split("\n\n")[0].replace("\n", " ")
        command.short_help = first.split(". ")[0].rstrip(".") + "."


LOG_FILE_META = "fhirimg.log_file"
"""Where ``--log-file`` leaves its value in the context's ``meta`` for
:func:`fhirimg.cli._app.configure_logging`."""


def _log_file_callback(ctx: typer.Context, _param: Any, value: Path | None) -> None:
    if value is not None:
        ctx.meta[LOG_FILE_META] = value


class ConfigFileError(Exception):
    """A config file that cannot be used: unreadable, not TOML, unknown keys, an exposed
    secret. The command line reports it as a usage error (exit 2)."""


def _load_callback(hooks: Hooks, ctx: typer.Context, _param: Any, value: Path | None) -> None:
    if ctx.resilient_parsing:
        return
    path = value
    if path is None:
        candidate = Path(CONFIG_NAME)
        if not candidate.is_file():
            return
        path = candidate
    warnings: list[str] = []
    try:
        defaults = read_config(
            path, ctx.command.name or "", ctx.command.params, hooks.commands, warnings
        )
    except ConfigFileError as exc:
        raise hooks.fail(str(exc)) from None
    for warning in warnings:
        hooks.warn(warning)
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    ctx.meta["fhirimg.config"] = path


def _exposed(path: Path, mode: int, table: Mapping[str, Any]) -> str | None:
    """Refuse a file holding a secret that others may read; the warning for its group."""
    secrets = sorted({_key(k) for k in _all_keys(table) if _key(k) in SECRET_KEYS})
    if not secrets or not stat.S_ISREG(mode):
        return None
    if mode & 0o007:
        raise ConfigFileError(
            f"config file {path} holds {', '.join(secrets)} and other users can read it (mode "
            f"{stat.S_IMODE(mode):04o}): chmod 600 {path}, or move the secret into a file "
            "named by token_file"
        )
    if mode & 0o070:
        return (
            f"config file {path} holds {', '.join(secrets)} and its group can read it "
            f"(mode {stat.S_IMODE(mode):04o})"
        )
    return None


def _all_keys(table: Mapping[str, Any]) -> list[str]:
    keys: list[str] = []
    for key, value in table.items():
        if isinstance(value, dict):
            keys += list(value)
        else:
            keys.append(key)
    return keys


def load_table(path: Path, warnings: list[str] | None = None) -> dict[str, Any]:
    """The TOML table in ``path``; :class:`ConfigFileError` when unreadable or not TOML, or
    when it exposes a secret (a group-readable one adds to ``warnings``)."""
    import tomllib  # here: only a run with a config file reads TOML (issue 19, start-up)

    try:
        with path.open("rb") as fh:
            mode = os.fstat(fh.fileno()).st_mode
            table = tomllib.load(fh)
    except OSError as exc:
        raise ConfigFileError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigFileError(f"config file {path} is not valid TOML: {exc}") from None
    warning = _exposed(path, mode, table)
    if warning is not None and warnings is not None:
        warnings.append(warning)
    return table


def read_config(
    path: Path,
    command: str,
    params: list[Any],
    commands: Collection[str],
    warnings: list[str] | None = None,
) -> dict[str, Any]:
    """The ``default_map`` of ``command`` from the config file ``path``: the shared keys its
    options take, then its own table over them. Paths are relative to the file's folder.
    ``commands``: the names a table may have.

    >>> import tempfile, typer.main
    >>> from fhirimg.cli._app import COMMAND_MODULES, load_commands, app
    >>> load_commands()
    >>> push = typer.main.get_command(app).commands["push"]
    >>> f = Path(tempfile.mkdtemp()) / "fhirimg.toml"
    >>> _ = f.write_text('server = "https://a.example/r4"\\ntimezone = "UTC"\\n[push]\\njobs = 8\\n')
    >>> read_config(f, "push", push.params, COMMAND_MODULES)
    {'server': 'https://a.example/r4', 'jobs': 8}
    """
    table = load_table(path, warnings)
    shared = shared_params(command, params)
    by_name = {p.name: p for p in params if isinstance(p, TyperOption) and p.name}
    defaults: dict[str, Any] = {}
    own: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, dict):
            if key not in commands:
                raise ConfigFileError(
                    f"config file {path}: [{key}] is not a command (one of "
                    f"{', '.join(sorted(commands))})"
                )
            if key == command:
                own = value
            continue
        name = _key(key)
        if name not in _BY_KEY:
            raise ConfigFileError(
                f"config file {path}: unknown key {key!r} (shared keys: docs/cli.md#configuration; "
                "a command's other options go in its own table, e.g. [push])"
            )
        if name in shared:
            defaults[name] = value
    for key, value in own.items():
        name = _key(key)
        if name not in by_name or name == "config":
            raise ConfigFileError(f"config file {path}: [{command}] has no option --{key}")
        defaults[name] = value
    base = path.parent
    for name, value in defaults.items():
        param = by_name[name]
        if isinstance(param.type, TyperPath) and isinstance(value, str):
            defaults[name] = str(base / Path(value).expanduser())
        elif isinstance(value, list) and not param.multiple:
            raise ConfigFileError(f"config file {path}: {name} takes one value, not a list")
        elif param.multiple and not isinstance(value, list):
            defaults[name] = [value]
    return defaults


def from_command_line(*names: str) -> bool:
    """Whether any of the parameters ``names`` of the running command was given on the command
    line (not by the environment, the config file or the default): the checks that an option
    was given without what it needs only look at what the person typed.

    Outside a click context (library use, doctests) every value counts as given.
    """
    from typer._click.globals import get_current_context

    ctx = get_current_context(silent=True)
    if ctx is None:
        return True
    return any(
        getattr(ctx.get_parameter_source(name), "name", None) == "COMMANDLINE" for name in names
    )


__all__ = [
    "CONFIG_ENV",
    "CONFIG_NAME",
    "SETTINGS",
    "ConfigFileError",
    "Hooks",
    "Setting",
    "from_command_line",
    "prepare",
    "read_config",
]
