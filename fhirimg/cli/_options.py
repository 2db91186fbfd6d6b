"""Option groups that several commands share, declared once, and the one place that turns them into
:class:`~fhirimg.push.PushOptions`.

Typer has no option groups, and a parameter list copied into each command drifts apart: ``convert
--push`` once read a token from FHIRIMG_TOKEN and nothing else while ``push`` had five ways to
authenticate, retries and a CA bundle. Like sqlite-utils' ``@insert_upsert_options``, a group is
declared once, here as a frozen dataclass whose fields are the options (``Annotated`` aliases with
their defaults), and :func:`option_groups` puts its fields into a command's parameters and hands the
command one value of the group. Options with the same meaning thus have the same name, help text
and default on every command.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, get_type_hints

import httpx
import typer

from fhirimg.cli._auth import DICOMWEB, build_auth
from fhirimg.http import RetryPolicy
from fhirimg.push import PushOptions


class FhirVersion(StrEnum):
    """``convert --fhir-version``: the FHIR release to write (one module each in fhirimg.fhir)."""

    R4 = "r4"
    R5 = "r5"


class FhirVersionOrAuto(StrEnum):
    """``validate --fhir-version``: a release to check against, or ``auto`` to tell it from the
    content (a StrEnum cannot extend :class:`FhirVersion`, so the two values are repeated)."""

    AUTO = "auto"
    R4 = "r4"
    R5 = "r5"


AUTH_PANEL = "Authentication"
NETWORK_PANEL = "Network and retries"
DICOMWEB_PANEL = "DICOMweb"

TokenOpt = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar="FHIRIMG_TOKEN",
        help="Bearer token; prefer the env var FHIRIMG_TOKEN (keeps it out of shell history).",
        show_envvar=False,
        rich_help_panel=AUTH_PANEL,
    ),
]
UserOpt = Annotated[
    str | None,
    typer.Option(
        "--user",
        help="HTTP basic auth user; password from env FHIRIMG_PASSWORD, else asked for.",
        rich_help_panel=AUTH_PANEL,
    ),
]
TokenUrlOpt = Annotated[
    str | None,
    typer.Option(
        "--token-url",
        help="OAuth2 token endpoint for the client-credentials grant (secret from env "
        "FHIRIMG_CLIENT_SECRET); tokens are refreshed on expiry and on 401.",
        rich_help_panel=AUTH_PANEL,
    ),
]
ClientIdOpt = Annotated[
    str | None,
    typer.Option(
        "--client-id", help="OAuth2 client id (with --token-url).", rich_help_panel=AUTH_PANEL
    ),
]
ScopeOpt = Annotated[
    str | None,
    typer.Option(
        "--scope", help="OAuth2 scope to ask for (with --token-url).", rich_help_panel=AUTH_PANEL
    ),
]

DicomwebTokenOpt = Annotated[
    str | None,
    typer.Option(
        "--dicomweb-token",
        envvar="FHIRIMG_DICOMWEB_TOKEN",
        show_envvar=False,
        help="Bearer token for the DICOMweb server; prefer env FHIRIMG_DICOMWEB_TOKEN.",
        rich_help_panel=DICOMWEB_PANEL,
    ),
]
DicomwebUserOpt = Annotated[
    str | None,
    typer.Option(
        "--dicomweb-user",
        help="HTTP basic auth user for the DICOMweb server; password from env "
        "FHIRIMG_DICOMWEB_PASSWORD.",
        rich_help_panel=DICOMWEB_PANEL,
    ),
]
DicomwebTokenUrlOpt = Annotated[
    str | None,
    typer.Option(
        "--dicomweb-token-url",
        help="OAuth2 token endpoint (client credentials) for the DICOMweb server; with "
        "--dicomweb-client-id, secret from env FHIRIMG_DICOMWEB_CLIENT_SECRET.",
        rich_help_panel=DICOMWEB_PANEL,
    ),
]
DicomwebClientIdOpt = Annotated[
    str | None,
    typer.Option(
        "--dicomweb-client-id",
        help="OAuth2 client id for the DICOMweb server (with --dicomweb-token-url).",
        rich_help_panel=DICOMWEB_PANEL,
    ),
]

CaBundleOpt = Annotated[
    Path | None,
    typer.Option(
        "--ca-bundle",
        help="PEM file of CA certificates to trust instead of the system's (TLS is always "
        "verified).",
        rich_help_panel=NETWORK_PANEL,
    ),
]
TimeoutOpt = Annotated[
    float,
    typer.Option(
        "--timeout",
        min=0.1,
        help="Seconds to wait for each response.",
        rich_help_panel=NETWORK_PANEL,
    ),
]
RetriesOpt = Annotated[
    int,
    typer.Option(
        "--retries",
        min=0,
        help="Retries per request on connection errors, timeouts, 429 and 5xx.",
        rich_help_panel=NETWORK_PANEL,
    ),
]
BackoffOpt = Annotated[
    float,
    typer.Option(
        "--backoff",
        min=0.0,
        help="First retry wait in seconds; doubles each retry (with jitter), at most 60 s.",
        rich_help_panel=NETWORK_PANEL,
    ),
]
MaxRetryTimeOpt = Annotated[
    float,
    typer.Option(
        "--max-retry-time",
        min=0.0,
        help="Give a request up when retrying it would take longer than this (seconds).",
        rich_help_panel=NETWORK_PANEL,
    ),
]


@dataclass(frozen=True)
class FhirAuth:
    """The FHIR server's credentials: ``--token``, ``--user``, ``--token-url``, ``--client-id``,
    ``--scope`` (secrets from the environment, see :mod:`fhirimg.cli._auth`)."""

    token: TokenOpt = None
    user: UserOpt = None
    token_url: TokenUrlOpt = None
    client_id: ClientIdOpt = None
    scope: ScopeOpt = None

    def build(self) -> httpx.Auth | None:
        """The :class:`httpx.Auth` asked for, or None; exit 2 when the options contradict."""
        return build_auth(self.token, self.user, self.token_url, self.client_id, self.scope)


@dataclass(frozen=True)
class DicomwebAuth:
    """The DICOMweb server's credentials: the ``--dicomweb-*`` twins of :class:`FhirAuth`."""

    dicomweb_token: DicomwebTokenOpt = None
    dicomweb_user: DicomwebUserOpt = None
    dicomweb_token_url: DicomwebTokenUrlOpt = None
    dicomweb_client_id: DicomwebClientIdOpt = None

    def build(self) -> httpx.Auth | None:
        """The :class:`httpx.Auth` asked for, or None; exit 2 when the options contradict."""
        return build_auth(
            self.dicomweb_token,
            self.dicomweb_user,
            self.dicomweb_token_url,
            self.dicomweb_client_id,
            names=DICOMWEB,
        )


@dataclass(frozen=True)
class Network:
    """How to talk to a server: ``--ca-bundle``, ``--timeout`` and the retry options.

    >>> Network(retries=2, backoff=0.5).retry.max_attempts
    3
    """

    ca_bundle: CaBundleOpt = None
    timeout: TimeoutOpt = 60.0
    retries: RetriesOpt = 5
    backoff: BackoffOpt = 1.0
    max_retry_time: MaxRetryTimeOpt = 600.0

    @property
    def retry(self) -> RetryPolicy:
        """The retry policy: ``--retries`` after the first attempt, waits from ``--backoff``
        doubling up to 60 s (or ``--backoff`` when larger), at most ``--max-retry-time``."""
        return RetryPolicy(
            max_attempts=self.retries + 1,
            backoff_base=self.backoff,
            backoff_max=max(60.0, self.backoff),
            max_elapsed=self.max_retry_time,
        )

    @property
    def verify(self) -> bool | Path:
        """httpx's ``verify``: the CA bundle when given, else the system's CAs (never off)."""
        return self.ca_bundle if self.ca_bundle is not None else True


def push_options(server: str, auth: FhirAuth, network: Network, **more: Any) -> PushOptions:
    """The :class:`PushOptions` of ``push`` and ``convert --push``: one implementation, so the
    two send with the same credentials, TLS and retries. ``more``: the other PushOptions fields
    (``jobs``, ``journal``, ...).

    >>> push_options("https://fhir.example/r4", FhirAuth(token="t"), Network(timeout=5)).timeout
    5
    """
    return PushOptions(
        server=server,
        auth=auth.build(),
        timeout=network.timeout,
        retry=network.retry,
        verify=network.verify,
        **more,
    )


_Command = Callable[..., None]


def option_groups(**groups: type[Any]) -> Callable[[_Command], _Command]:
    """Put the fields of each option group into a command's parameters, in place of the parameter
    of that name, and call the command with one value of the group there.

    ``@option_groups(auth=FhirAuth)`` on ``def push(*, ..., auth: FhirAuth, ...)`` gives ``push``
    the options ``--token`` ... ``--scope`` and calls it with ``auth=FhirAuth(token=..., ...)``.
    Put it below ``@app.command``: Typer reads the signature this makes. Command parameters must be
    keyword-only (the fields are added as such).
    """

    def decorate(command: _Command) -> _Command:
        signature = inspect.signature(command, eval_str=True)
        params: list[inspect.Parameter] = []
        members: dict[str, tuple[type[Any], list[str]]] = {}
        for param in signature.parameters.values():
            group = groups.get(param.name)
            if group is None:
                params.append(param)
                continue
            hints = get_type_hints(group, include_extras=True)
            fields = dataclasses.fields(group)
            members[param.name] = (group, [f.name for f in fields])
            params += [
                inspect.Parameter(
                    f.name,
                    inspect.Parameter.KEYWORD_ONLY,
                    annotation=hints[f.name],
                    default=f.default,
                )
                for f in fields
            ]
        missing = set(groups) - set(members)
        if missing:
            raise TypeError(f"{command.__name__} has no parameter {sorted(missing)} to fill")

        @functools.wraps(command)
        def run(**given: Any) -> None:
            for name, (group, names) in members.items():
                given[name] = group(**{n: given.pop(n) for n in names})
            command(**given)

        run.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
        run.__annotations__ = {p.name: p.annotation for p in params} | {"return": None}
        return run

    return decorate


__all__ = [
    "DicomwebAuth",
    "FhirAuth",
    "FhirVersion",
    "FhirVersionOrAuto",
    "Network",
    "option_groups",
    "push_options",
]
