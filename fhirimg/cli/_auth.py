"""Credentials from the command line, one implementation for every server a command talks to.

The FHIR server's options (``--token``, ``--user``, ``--token-url``, ``--client-id``,
``--scope``; ``push``, ``convert --push`` and ``verify``) and the PACS's ``--dicomweb-*`` options
(``push``, ``convert``, ``verify``), declared in :mod:`fhirimg.cli._options`, mean the same things
and are checked the same way; only their names and environment variables differ
(:class:`AuthNames`). Secrets come from the environment (or a hidden prompt), never from an option:
options end up in shell history and ``ps`` listings.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import httpx
import typer

from fhirimg.cli._app import fail
from fhirimg.exitcodes import ExitCode
from fhirimg.http import BasicAuth, BearerAuth, ClientCredentialsAuth


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
