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
from typing import TYPE_CHECKING, Annotated, Any, get_type_hints

import typer

from fhirimg.cli._app import fail
from fhirimg.cli._auth import DICOMWEB, build_auth
from fhirimg.exitcodes import ExitCode
from fhirimg.http import ClientCert, RetryPolicy, TlsSettings
from fhirimg.images.binary import BinaryMode
from fhirimg.push import PushOptions

if TYPE_CHECKING:
    import httpx


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


# Help panels of the conversion options, named like docs/cli.md's groups of convert's options.
MAPPING_PANEL = "Mapping"
PIXELS_PANEL = "Pixels inside FHIR"

# What to write: the conversion options that `convert` and `watch` share, declared once so that
# their names, help and defaults cannot drift apart.
FhirVersionOpt = Annotated[
    FhirVersion,
    typer.Option(
        "--fhir-version",
        help="FHIR release to write: r4 (4.0.1) or r5 (5.0.0; rendered images become "
        "DocumentReference, R5 has no Media).",
        case_sensitive=False,
    ),
]

EndpointUrlOpt = Annotated[
    str | None,
    typer.Option(
        "--dicomweb-url",
        help="Base URL of the DICOMweb (WADO-RS) server holding the images; adds an Endpoint "
        "that each ImagingStudy references.",
        rich_help_panel=MAPPING_PANEL,
    ),
]

NoMeasurementsOpt = Annotated[
    bool,
    typer.Option(
        "--no-measurements",
        help="Leave SR measurement and radiation dose reports out: no Observations (R5 also no "
        "ImagingSelections) from their content; the SR stays an instance of its study.",
        rich_help_panel=MAPPING_PANEL,
    ),
]

TimezoneOpt = Annotated[
    str | None,
    typer.Option(
        "--timezone",
        metavar="ZONE",
        help="IANA time zone (e.g. Europe/Berlin) for DICOM times without (0008,0201) "
        "Timezone Offset From UTC. Without it such times are left out (date kept).",
        rich_help_panel=MAPPING_PANEL,
    ),
]

PatientIdSystemOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--patient-id-system",
        metavar="[ISSUER=]URI",
        help="Identifier system for Patient IDs whose issuer gives none: a URI (default for "
        "all), or ISSUER=URI to map an Issuer of Patient ID (0010,0021). Repeatable.",
        rich_help_panel=MAPPING_PANEL,
    ),
]

CodingSystemOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--coding-system",
        metavar="SCHEME=URI",
        help="Coding.system for codes of this Coding Scheme Designator (0008,0102), e.g. "
        "99ACME=https://acme.example/codes. Default: the DICOM PS3.16 URI, else "
        "urn:dicom:scheme:<designator>. Repeatable.",
        rich_help_panel=MAPPING_PANEL,
    ),
]


def parse_coding_systems(values: list[str]) -> tuple[tuple[str, str], ...]:
    """``--coding-system`` values as (designator, URI) pairs; exit 2 for one without ``=``.

    >>> parse_coding_systems(["99ACME=https://acme.example/codes"])
    (('99ACME', 'https://acme.example/codes'),)
    """
    pairs: list[tuple[str, str]] = []
    for value in values:
        scheme, sep, uri = value.partition("=")
        if not (sep and scheme.strip() and uri.strip()):
            raise fail(f"--coding-system takes SCHEME=URI, not {value!r}", ExitCode.USAGE)
        pairs.append((scheme.strip(), uri.strip()))
    return tuple(pairs)


JobsOpt = Annotated[
    int,
    typer.Option("--jobs", "-j", min=0, help="Processes for reading headers (0 = all cores)."),
]

StrictOpt = Annotated[
    bool,
    typer.Option(
        "--strict",
        help="Validate every bundle with all layers of 'fhirimg validate' (FHIRPath "
        "invariants too) before writing it, not only the fast ones.",
    ),
]

AllOrNothingOpt = Annotated[
    bool,
    typer.Option(
        "--all-or-nothing",
        help="A study whose bundle has any validation error is not written and all its files "
        "fail. Default: instances that the errors point at are left out (each file reported "
        "failed with the reason) and the rest of the study is written.",
    ),
]

BinaryOpt = Annotated[
    BinaryMode | None,
    typer.Option(
        "--binary",
        help="Also carry each instance's DICOM bytes as a Binary (PUT Binary/<id>), linked "
        "from ImagingStudy.series.instance: 'inline' puts base64 data in the bundle, "
        "'beside' writes <bundle>.binaries/<id>.dcm for push to upload raw. Default: none.",
        case_sensitive=False,
        rich_help_panel=PIXELS_PANEL,
    ),
]

MediaOpt = Annotated[
    bool,
    typer.Option(
        "--media",
        help="Also render images (8-bit PNG/JPEG with rescale, window, MONOCHROME1, colour "
        "handled) as Media (R4) or DocumentReference (R5).",
        rich_help_panel=PIXELS_PANEL,
    ),
]

NoCapabilityCheckOpt = Annotated[
    bool,
    typer.Option(
        "--no-capability-check",
        help="Do not read the FHIR server's CapabilityStatement (GET [base]/metadata) before "
        "pushing. Default: a base URL without one (404, HTML, other JSON, no fhirVersion) or "
        "of another FHIR release than the bundles is an error (exit 3) before anything is sent.",
    ),
]

GroupReadableOpt = Annotated[
    bool,
    typer.Option(
        "--group-readable",
        help="Make the output readable by the group (files 0640, new folders 0750) for a "
        "shared research folder. Default: owner-only (0600 / 0700), it holds patient data.",
    ),
]

AUTH_PANEL = "Authentication"
NETWORK_PANEL = "Network and retries"
DICOMWEB_PANEL = "DICOMweb"

TokenOpt = Annotated[
    str | None,
    typer.Option(
        "--token",
        metavar="TOKEN",
        envvar="FHIRIMG_TOKEN",
        help="Bearer token. A value here is visible in ps and shell history (warned): prefer "
        "--token-file or the env var FHIRIMG_TOKEN.",
        show_envvar=False,
        rich_help_panel=AUTH_PANEL,
    ),
]
TokenFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--token-file",
        help="Read the bearer token from the first line of this file (keep it chmod 600).",
        rich_help_panel=AUTH_PANEL,
    ),
]
UserOpt = Annotated[
    str | None,
    typer.Option(
        "--user",
        metavar="USER",
        help="HTTP basic auth user; password from --password-file, env FHIRIMG_PASSWORD, "
        "else asked for.",
        rich_help_panel=AUTH_PANEL,
    ),
]
PasswordFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--password-file",
        help="With --user: read the password from the first line of this file.",
        rich_help_panel=AUTH_PANEL,
    ),
]
TokenUrlOpt = Annotated[
    str | None,
    typer.Option(
        "--token-url",
        help="OAuth2 token endpoint for the client-credentials grant (secret from "
        "--client-secret-file or env FHIRIMG_CLIENT_SECRET); tokens are refreshed on expiry "
        "and on 401.",
        rich_help_panel=AUTH_PANEL,
    ),
]
ClientSecretFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--client-secret-file",
        help="With --token-url: read the OAuth2 client secret from the first line of this file.",
        rich_help_panel=AUTH_PANEL,
    ),
]
ClientIdOpt = Annotated[
    str | None,
    typer.Option(
        "--client-id",
        metavar="ID",
        help="OAuth2 client id (with --token-url).",
        rich_help_panel=AUTH_PANEL,
    ),
]
ScopeOpt = Annotated[
    str | None,
    typer.Option(
        "--scope", help="OAuth2 scope to ask for (with --token-url).", rich_help_panel=AUTH_PANEL
    ),
]

JwtKeyOpt = Annotated[
    Path | None,
    typer.Option(
        "--jwt-key",
        metavar="FILE",
        help="SMART Backend Services: with --token-url and --client-id, authenticate to the "
        "token endpoint with a JWT signed by this private key (PEM or JWK; RSA signs RS384, "
        "EC P-384 ES384) instead of a client secret.",
        rich_help_panel=AUTH_PANEL,
    ),
]
JwtKidOpt = Annotated[
    str | None,
    typer.Option(
        "--jwt-kid",
        metavar="KID",
        help="With --jwt-key: the key's id in the JWKS registered with the server. Default: "
        "the JWK's own kid, else the RFC 7638 thumbprint of the public key.",
        rich_help_panel=AUTH_PANEL,
    ),
]

DicomwebTokenOpt = Annotated[
    str | None,
    typer.Option(
        "--dicomweb-token",
        metavar="TOKEN",
        envvar="FHIRIMG_DICOMWEB_TOKEN",
        show_envvar=False,
        help="Bearer token for the DICOMweb server (visible in ps, warned): prefer "
        "--dicomweb-token-file or env FHIRIMG_DICOMWEB_TOKEN.",
        rich_help_panel=DICOMWEB_PANEL,
    ),
]
DicomwebTokenFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--dicomweb-token-file",
        help="Read the DICOMweb server's bearer token from the first line of this file.",
        rich_help_panel=DICOMWEB_PANEL,
    ),
]
DicomwebUserOpt = Annotated[
    str | None,
    typer.Option(
        "--dicomweb-user",
        metavar="USER",
        help="HTTP basic auth user for the DICOMweb server; password from "
        "--dicomweb-password-file or env FHIRIMG_DICOMWEB_PASSWORD.",
        rich_help_panel=DICOMWEB_PANEL,
    ),
]
DicomwebPasswordFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--dicomweb-password-file",
        help="With --dicomweb-user: read the password from the first line of this file.",
        rich_help_panel=DICOMWEB_PANEL,
    ),
]
DicomwebTokenUrlOpt = Annotated[
    str | None,
    typer.Option(
        "--dicomweb-token-url",
        help="OAuth2 token endpoint (client credentials) for the DICOMweb server; with "
        "--dicomweb-client-id, secret from --dicomweb-client-secret-file or env "
        "FHIRIMG_DICOMWEB_CLIENT_SECRET.",
        rich_help_panel=DICOMWEB_PANEL,
    ),
]
DicomwebClientSecretFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--dicomweb-client-secret-file",
        help="With --dicomweb-token-url: read the client secret from the first line of this file.",
        rich_help_panel=DICOMWEB_PANEL,
    ),
]
DicomwebJwtKeyOpt = Annotated[
    Path | None,
    typer.Option(
        "--dicomweb-jwt-key",
        metavar="FILE",
        help="With --dicomweb-token-url: sign a SMART client assertion with this private key "
        "(PEM or JWK) instead of a client secret.",
        rich_help_panel=DICOMWEB_PANEL,
    ),
]
DicomwebJwtKidOpt = Annotated[
    str | None,
    typer.Option(
        "--dicomweb-jwt-kid",
        metavar="KID",
        help="With --dicomweb-jwt-key: the key's id (default: the JWK's kid or the thumbprint).",
        rich_help_panel=DICOMWEB_PANEL,
    ),
]
DicomwebClientIdOpt = Annotated[
    str | None,
    typer.Option(
        "--dicomweb-client-id",
        metavar="ID",
        help="OAuth2 client id for the DICOMweb server (with --dicomweb-token-url).",
        rich_help_panel=DICOMWEB_PANEL,
    ),
]

CaBundleOpt = Annotated[
    Path | None,
    typer.Option(
        "--ca-bundle",
        help="PEM file of CA certificates to trust for every server of the command, instead of "
        "SSL_CERT_FILE or certifi's bundle (TLS is always verified).",
        rich_help_panel=NETWORK_PANEL,
    ),
]
ClientCertOpt = Annotated[
    Path | None,
    typer.Option(
        "--client-cert",
        help="PEM client certificate for mutual TLS with the FHIR server (with --client-key).",
        rich_help_panel=NETWORK_PANEL,
    ),
]
ClientKeyOpt = Annotated[
    Path | None,
    typer.Option(
        "--client-key",
        help="PEM private key of --client-cert (unencrypted).",
        rich_help_panel=NETWORK_PANEL,
    ),
]
DicomwebClientCertOpt = Annotated[
    Path | None,
    typer.Option(
        "--dicomweb-client-cert",
        help="PEM client certificate for mutual TLS with the DICOMweb server (with "
        "--dicomweb-client-key).",
        rich_help_panel=NETWORK_PANEL,
    ),
]
DicomwebClientKeyOpt = Annotated[
    Path | None,
    typer.Option(
        "--dicomweb-client-key",
        help="PEM private key of --dicomweb-client-cert (unencrypted).",
        rich_help_panel=NETWORK_PANEL,
    ),
]
AllowInsecureHttpOpt = Annotated[
    bool,
    typer.Option(
        "--allow-insecure-http",
        help="Allow credentials over plain http:// to hosts other than localhost (warns once "
        "per host); refused otherwise.",
        rich_help_panel=NETWORK_PANEL,
    ),
]
MaxTimeOpt = Annotated[
    float | None,
    typer.Option(
        "--max-time",
        min=1.0,
        help="Seconds one request may take in all, connecting to last byte (like curl "
        "--max-time); default max(120, 4 x --timeout).",
        show_default=False,
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
    ``--scope``, the secrets' files ``--token-file``, ``--password-file``,
    ``--client-secret-file`` (or the environment, see :mod:`fhirimg.cli._auth`), and the SMART
    client assertion's ``--jwt-key`` and ``--jwt-kid``."""

    token: TokenOpt = None
    token_file: TokenFileOpt = None
    user: UserOpt = None
    password_file: PasswordFileOpt = None
    token_url: TokenUrlOpt = None
    client_id: ClientIdOpt = None
    client_secret_file: ClientSecretFileOpt = None
    scope: ScopeOpt = None
    jwt_key: JwtKeyOpt = None
    jwt_kid: JwtKidOpt = None

    def build(self) -> httpx.Auth | None:
        """The :class:`httpx.Auth` asked for, or None; exit 2 when the options contradict."""
        return build_auth(
            self.token,
            self.user,
            self.token_url,
            self.client_id,
            self.scope,
            token_file=self.token_file,
            password_file=self.password_file,
            secret_file=self.client_secret_file,
            jwt_key=self.jwt_key,
            jwt_kid=self.jwt_kid,
        )


@dataclass(frozen=True)
class DicomwebAuth:
    """The DICOMweb server's credentials: the ``--dicomweb-*`` twins of :class:`FhirAuth`."""

    dicomweb_token: DicomwebTokenOpt = None
    dicomweb_token_file: DicomwebTokenFileOpt = None
    dicomweb_user: DicomwebUserOpt = None
    dicomweb_password_file: DicomwebPasswordFileOpt = None
    dicomweb_token_url: DicomwebTokenUrlOpt = None
    dicomweb_client_id: DicomwebClientIdOpt = None
    dicomweb_client_secret_file: DicomwebClientSecretFileOpt = None
    dicomweb_jwt_key: DicomwebJwtKeyOpt = None
    dicomweb_jwt_kid: DicomwebJwtKidOpt = None

    def build(self) -> httpx.Auth | None:
        """The :class:`httpx.Auth` asked for, or None; exit 2 when the options contradict."""
        return build_auth(
            self.dicomweb_token,
            self.dicomweb_user,
            self.dicomweb_token_url,
            self.dicomweb_client_id,
            names=DICOMWEB,
            token_file=self.dicomweb_token_file,
            password_file=self.dicomweb_password_file,
            secret_file=self.dicomweb_client_secret_file,
            jwt_key=self.dicomweb_jwt_key,
            jwt_kid=self.dicomweb_jwt_kid,
        )


def _pair(cert: Path | None, key: Path | None, names: str) -> ClientCert | None:
    if (cert is None) != (key is None):
        raise fail(f"{names} go together: give both or neither", ExitCode.USAGE)
    return (cert, key) if cert is not None and key is not None else None


@dataclass(frozen=True)
class Tls:
    """How to reach a FHIR server safely: ``--ca-bundle``, ``--client-cert``, ``--client-key``,
    ``--allow-insecure-http`` (``validate --server``; :class:`Network` adds the rest).

    >>> Tls().verify, Tls().client_cert_pair
    (True, None)
    """

    ca_bundle: CaBundleOpt = None
    client_cert: ClientCertOpt = None
    client_key: ClientKeyOpt = None
    allow_insecure_http: AllowInsecureHttpOpt = False

    @property
    def verify(self) -> bool | Path:
        """httpx's ``verify``: the CA bundle when given, else True (``SSL_CERT_FILE`` /
        ``SSL_CERT_DIR`` when set, else certifi's CAs; never off)."""
        return self.ca_bundle if self.ca_bundle is not None else True

    @property
    def client_cert_pair(self) -> ClientCert | None:
        """(certificate, key) for the FHIR server, or None; exit 2 when only one is given."""
        return _pair(self.client_cert, self.client_key, "--client-cert and --client-key")

    @property
    def settings(self) -> TlsSettings:
        """The FHIR server's TLS settings as the library takes them."""
        return TlsSettings(self.verify, self.client_cert_pair, self.allow_insecure_http)


@dataclass(frozen=True)
class Network(Tls):
    """How to talk to a server: TLS (:class:`Tls`), ``--timeout``, ``--max-time``, the retry
    options, and the DICOMweb server's client certificate.

    >>> Network(retries=2, backoff=0.5).retry.max_attempts
    3
    """

    timeout: TimeoutOpt = 60.0
    max_time: MaxTimeOpt = None
    retries: RetriesOpt = 5
    backoff: BackoffOpt = 1.0
    max_retry_time: MaxRetryTimeOpt = 600.0
    dicomweb_client_cert: DicomwebClientCertOpt = None
    dicomweb_client_key: DicomwebClientKeyOpt = None

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
    def dicomweb_cert_pair(self) -> ClientCert | None:
        """(certificate, key) for the DICOMweb server, or None; exit 2 when only one is given."""
        return _pair(
            self.dicomweb_client_cert,
            self.dicomweb_client_key,
            "--dicomweb-client-cert and --dicomweb-client-key",
        )


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
        client_cert=network.client_cert_pair,
        deadline=network.max_time,
        allow_insecure_http=network.allow_insecure_http,
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
    "Tls",
    "option_groups",
    "push_options",
]
