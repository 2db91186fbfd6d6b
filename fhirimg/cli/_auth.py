"""Credentials from the command line, one implementation for every server a command talks to.

The FHIR server's options (``--token``, ``--user``, ``--token-url``, ``--client-id``,
``--scope``; ``push`` and ``verify``) and the PACS's ``--dicomweb-*`` options (``push``,
``convert``, ``verify``) mean the same things and are checked the same way; only their names and
environment variables differ (:class:`AuthNames`). Secrets come from the environment (or a hidden
prompt), never from an option: options end up in shell history and ``ps`` listings.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Annotated

import httpx
import typer
from rich.markup import escape

from fhirimg.cli._app import err_console
from fhirimg.exitcodes import ExitCode
from fhirimg.push import BasicAuth, BearerAuth, ClientCredentialsAuth

PANEL = "Authentication"


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


FHIR = AuthNames(
    token="--token",
    user="--user",
    token_url="--token-url",
    client_id="--client-id",
    password_env="FHIRIMG_PASSWORD",
    secret_env="FHIRIMG_CLIENT_SECRET",
    prompt="Password",
)
DICOMWEB = AuthNames(
    token="--dicomweb-token",
    user="--dicomweb-user",
    token_url="--dicomweb-token-url",
    client_id="--dicomweb-client-id",
    password_env="FHIRIMG_DICOMWEB_PASSWORD",
    secret_env="FHIRIMG_DICOMWEB_CLIENT_SECRET",
    prompt="DICOMweb password",
)

TokenOpt = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar="FHIRIMG_TOKEN",
        help="Bearer token; prefer the env var FHIRIMG_TOKEN (keeps it out of shell history).",
        show_envvar=False,
        rich_help_panel=PANEL,
    ),
]
UserOpt = Annotated[
    str | None,
    typer.Option(
        "--user",
        help="HTTP basic auth user; password from env FHIRIMG_PASSWORD, else asked for.",
        rich_help_panel=PANEL,
    ),
]
TokenUrlOpt = Annotated[
    str | None,
    typer.Option(
        "--token-url",
        help="OAuth2 token endpoint for the client-credentials grant (secret from env "
        "FHIRIMG_CLIENT_SECRET); tokens are refreshed on expiry and on 401.",
        rich_help_panel=PANEL,
    ),
]
ClientIdOpt = Annotated[
    str | None,
    typer.Option("--client-id", help="OAuth2 client id (with --token-url).", rich_help_panel=PANEL),
]
ScopeOpt = Annotated[
    str | None,
    typer.Option(
        "--scope", help="OAuth2 scope to ask for (with --token-url).", rich_help_panel=PANEL
    ),
]


def fail(message: str, code: ExitCode) -> typer.Exit:
    """Print ``message`` (plain text: no markup, no hard wrapping) and return the Exit to raise."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True, highlight=False)
    return typer.Exit(int(code))


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
        for name, value in ((names.token, token), (names.user, user), (names.token_url, token_url))
        if value
    ]
    if len(chosen) > 1:
        raise fail(f"choose one way to authenticate, not {' and '.join(chosen)}", ExitCode.USAGE)
    if token:
        return BearerAuth(token)
    if user:
        password = _secret(names.password_env)
        if password is None:
            if not sys.stdin.isatty():
                raise fail(
                    f"{names.user} needs a password: set {names.password_env} (no terminal to "
                    "ask on)",
                    ExitCode.USAGE,
                )
            password = typer.prompt(f"{names.prompt} for {user}", hide_input=True, err=True)
        return BasicAuth(user, password)
    if token_url:
        secret = _secret(names.secret_env)
        if not client_id or secret is None:
            raise fail(
                f"{names.token_url} needs {names.client_id} and the secret in {names.secret_env}",
                ExitCode.USAGE,
            )
        return ClientCredentialsAuth(token_url, client_id, secret, scope)
    if client_id:
        raise fail(f"{names.client_id} needs {names.token_url}", ExitCode.USAGE)
    return None
