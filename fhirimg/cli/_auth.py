"""Credentials from the command line, one implementation for every server a command talks to.

The FHIR server's options (``--token``, ``--user``, ``--token-url``, ``--client-id``,
``--scope`` and the ``*-file`` options; ``push``, ``convert --push``, ``validate --server`` and
``verify``) and the PACS's ``--dicomweb-*`` options (``push``, ``convert``, ``verify``), declared
in :mod:`fhirimg.cli._options`, mean the same things and are checked the same way; only their
names and environment variables differ (:class:`AuthNames`).

Secrets come from a file (``--token-file``, ``--password-file``, ``--client-secret-file``: the
first line), the environment, or a hidden prompt. ``--token VALUE`` still works but warns once:
a value on the command line is visible to every local user in ``ps`` and stays in shell history.
A secret file readable by group or others gets a warning too (not a refusal, as ssh does for
keys: secrets mounted by container platforms are often 0644).

:func:`check_url` refuses a URL option holding credentials (``https://user:PW@host``,
``?access_token=``), naming the options to use instead.
"""

from __future__ import annotations

import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from fhirimg.cli._app import err_console, fail
from fhirimg.cli._config import from_command_line
from fhirimg.errors import ConfigError
from fhirimg.exitcodes import ExitCode
from fhirimg.safetext import refuse_url_credentials

if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import BinaryIO

    import httpx

    from fhirimg.http.jwt import SigningKey


@dataclass(frozen=True)
class AuthNames:
    """The option names and environment variables of one server's credentials."""

    token: str
    user: str
    token_url: str
    client_id: str
    password_env: str
    secret_env: str
    prompt: str
    """Start of the password prompt, e.g. ``"Password"`` (`` for USER`` is added)."""
    token_env: str
    token_file: str
    password_file: str
    secret_file: str
    jwt_key: str

    @property
    def credentials_hint(self) -> str:
        """How to give this server's credentials properly (for messages)."""
        return (
            f"give credentials with {self.user} (password from {self.password_file}, "
            f"{self.password_env} or the prompt), {self.token_file} or {self.token_url}"
        )


FHIR = AuthNames(
    token="--token",
    user="--user",
    token_url="--token-url",
    client_id="--client-id",
    password_env="FHIRIMG_PASSWORD",
    secret_env="FHIRIMG_CLIENT_SECRET",
    prompt="Password",
    token_env="FHIRIMG_TOKEN",
    token_file="--token-file",
    password_file="--password-file",
    secret_file="--client-secret-file",
    jwt_key="--jwt-key",
)
DICOMWEB = AuthNames(
    token="--dicomweb-token",
    user="--dicomweb-user",
    token_url="--dicomweb-token-url",
    client_id="--dicomweb-client-id",
    password_env="FHIRIMG_DICOMWEB_PASSWORD",
    secret_env="FHIRIMG_DICOMWEB_CLIENT_SECRET",
    prompt="DICOMweb password",
    token_env="FHIRIMG_DICOMWEB_TOKEN",
    token_file="--dicomweb-token-file",
    password_file="--dicomweb-password-file",
    secret_file="--dicomweb-client-secret-file",
    jwt_key="--dicomweb-jwt-key",
)

_warned: set[str] = set()


def _warn_once(key: str, message: str) -> None:
    """One warning line on stderr per ``key`` and process (never the secret itself)."""
    if key not in _warned:
        _warned.add(key)
        err_console.print(f"warning: {message}", markup=False, highlight=False, soft_wrap=True)


def _on_command_line(option: str) -> bool:
    """Whether ``option`` (``--token``) was given on the command line, not by its environment
    variable or the config file (:mod:`fhirimg.cli._config`)."""
    return from_command_line(option.lstrip("-").replace("-", "_"))


def _read_private(path: Path, option: str, read: Callable[[BinaryIO], bytes]) -> bytes:
    """What ``read`` takes from the secret file ``path`` of ``option``: a usage error (exit 2)
    when it cannot be read, a warning (once) when group or others may read it."""
    try:
        with path.open("rb") as fh:
            mode = os.fstat(fh.fileno()).st_mode
            data = read(fh)
    except OSError as exc:
        raise fail(f"cannot read {option} {path}: {exc.strerror or exc}", ExitCode.USAGE) from None
    if stat.S_ISREG(mode) and mode & 0o077:
        _warn_once(
            f"mode:{path}",
            f"{option} {path} can be read by other users (mode {stat.S_IMODE(mode):04o}); "
            f"chmod 600 {path}",
        )
    return data


def read_secret_file(path: Path, option: str) -> str:
    """The secret in ``path``: its first line without the line break. A usage error (exit 2)
    when it cannot be read or is empty; a warning (once) when group or others may read it.

    >>> import tempfile
    >>> f = Path(tempfile.mkdtemp()) / "token"
    >>> _ = f.write_text("s3cret\\n"); f.chmod(0o600)
    >>> read_secret_file(f, "--token-file")
    's3cret'
    """
    first = _read_private(path, option, lambda fh: fh.readline(64 * 1024))
    secret = first.decode("utf-8", "replace").rstrip("\r\n")
    if not secret:
        raise fail(f"{option} {path}: the first line is empty", ExitCode.USAGE)
    return secret


def read_signing_key(path: Path, option: str, kid: str | None) -> SigningKey:
    """The SMART client assertion key in ``path`` (PEM or JWK): a usage error (exit 2) when it
    cannot be read or used, a warning (once) when group or others may read it."""
    from fhirimg.http.jwt import load_signing_key

    data = _read_private(path, option, lambda fh: fh.read(1024 * 1024))
    try:
        return load_signing_key(data, kid)
    except ConfigError as exc:
        raise fail(f"{option} {path}: {exc}", ExitCode.USAGE) from None


def check_url(url: str | None, option: str, names: AuthNames | None = FHIR) -> None:
    """Exit 2 when the URL option ``option`` holds credentials (user info, ``?access_token=``);
    the message shows the URL redacted and names the proper options (``names``' ones)."""
    try:
        refuse_url_credentials(url, option, names.credentials_hint if names else "")
    except ConfigError as exc:
        raise fail(str(exc), ExitCode.USAGE) from None


def _secret(name: str) -> str | None:
    value = os.environ.get(name)
    return value if value else None


def build_auth(
    token: str | None,
    user: str | None,
    token_url: str | None,
    client_id: str | None,
    scope: str | None = None,
    *,
    names: AuthNames = FHIR,
    token_file: Path | None = None,
    password_file: Path | None = None,
    secret_file: Path | None = None,
    jwt_key: Path | None = None,
    jwt_kid: str | None = None,
) -> httpx.Auth | None:
    """The :class:`httpx.Auth` the options ask for, or None; a usage error (exit 2) when they
    contradict each other or a secret is missing and there is no terminal to ask on.

    >>> build_auth("t0k3n", None, None, None)
    BearerAuth(token=***)
    >>> build_auth(None, None, None, None) is None
    True
    """
    chosen = [
        name
        for name, value in (
            (names.token, token),
            (names.token_file, token_file),
            (names.user, user),
            (names.token_url, token_url),
        )
        if value
    ]
    if len(chosen) > 1:
        raise fail(f"choose one way to authenticate, not {' and '.join(chosen)}", ExitCode.USAGE)
    check_url(token_url, names.token_url, None)
    if password_file and not user:
        raise fail(f"{names.password_file} needs {names.user}", ExitCode.USAGE)
    if secret_file and not token_url:
        raise fail(f"{names.secret_file} needs {names.token_url}", ExitCode.USAGE)
    if jwt_key and not token_url:
        raise fail(f"{names.jwt_key} needs {names.token_url}", ExitCode.USAGE)
    if jwt_key and secret_file:
        raise fail(
            f"choose {names.jwt_key} (SMART client assertion) or {names.secret_file}, not both",
            ExitCode.USAGE,
        )
    if jwt_kid and not jwt_key:
        raise fail(f"{names.jwt_key.replace('-key', '-kid')} needs {names.jwt_key}", ExitCode.USAGE)
    if token and _on_command_line(names.token):
        _warn_once(
            names.token,
            f"{names.token} on the command line is visible to other local users (ps) and stays "
            f"in shell history; use {names.token_file} FILE or the environment variable "
            f"{names.token_env}",
        )
    if not chosen and not client_id:
        return None
    # The auth classes import httpx: a run without credentials (most) does not load it here.
    from fhirimg.http.auth import BasicAuth, BearerAuth, ClientCredentialsAuth, PrivateKeyJwtAuth

    if token_file:
        token = read_secret_file(token_file, names.token_file)
    if token:
        return BearerAuth(token)
    if user:
        if password_file:
            password: str | None = read_secret_file(password_file, names.password_file)
        else:
            password = _secret(names.password_env)
        if password is None:
            if not sys.stdin.isatty():
                raise fail(
                    f"{names.user} needs a password: use {names.password_file} or set "
                    f"{names.password_env} (no terminal to ask on)",
                    ExitCode.USAGE,
                )
            password = typer.prompt(f"{names.prompt} for {user}", hide_input=True, err=True)
        return BasicAuth(user, password)
    if token_url and jwt_key:
        if not client_id:
            raise fail(f"{names.jwt_key} needs {names.client_id}", ExitCode.USAGE)
        key = read_signing_key(jwt_key, names.jwt_key, jwt_kid)
        return PrivateKeyJwtAuth(token_url, client_id, key, scope)
    if token_url:
        if secret_file:
            secret: str | None = read_secret_file(secret_file, names.secret_file)
        else:
            secret = _secret(names.secret_env)
        if not client_id or secret is None:
            raise fail(
                f"{names.token_url} needs {names.client_id} and the secret in "
                f"{names.secret_file} or {names.secret_env}",
                ExitCode.USAGE,
            )
        return ClientCredentialsAuth(token_url, client_id, secret, scope)
    if client_id:
        raise fail(f"{names.client_id} needs {names.token_url}", ExitCode.USAGE)
    return None
