"""The HTTP layer every server-facing part of fhirimg sits on: ``push`` (FHIR), ``dicomweb``
(STOW-RS, QIDO-RS, WADO-RS), ``validate --server`` and ``verify`` are siblings on top of it.

- :mod:`fhirimg.http.client`: :class:`HttpClient` (the only place an ``httpx.Client`` is built);
- :mod:`fhirimg.http.settings`: :class:`RetryPolicy`, :class:`TlsSettings` and the client
  certificate pair, plain values built before any client (no httpx);
- :mod:`fhirimg.http.auth`: bearer, basic and OAuth2 client-credentials authentication (a secret
  or a SMART private_key_jwt assertion, :mod:`fhirimg.http.jwt`), bound to an origin
  (:class:`OriginBoundAuth`);
- :mod:`fhirimg.http.limits`: the size cap of each kind of answer and the deadline per request;
- :mod:`fhirimg.http.fhir`: :class:`FhirClient`, the FHIR REST semantics (OperationOutcome,
  CapabilityStatement, transactions, Binary uploads).

Errors are in :mod:`fhirimg.errors`: :class:`~fhirimg.errors.PushError` and its children
:class:`~fhirimg.errors.AuthError`, :class:`~fhirimg.errors.ServerUnreachableError`,
:class:`~fhirimg.errors.UntrustedUrlError` and :class:`~fhirimg.errors.ResponseTooLargeError`.

The names below are imported on first use (:mod:`fhirimg._lazy`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fhirimg._lazy import exports

if TYPE_CHECKING:
    from fhirimg.http.auth import (
        BasicAuth,
        BearerAuth,
        ClientCredentialsAuth,
        Origin,
        OriginBoundAuth,
        PrivateKeyJwtAuth,
        is_loopback,
        origin_of,
    )
    from fhirimg.http.client import HttpClient, parse_retry_after, ssl_context
    from fhirimg.http.fhir import FhirClient, format_outcome, outcome_issues
    from fhirimg.http.settings import ClientCert, RetryPolicy, TlsSettings

_WHERE = {
    "BasicAuth": "fhirimg.http.auth",
    "BearerAuth": "fhirimg.http.auth",
    "ClientCert": "fhirimg.http.settings",
    "ClientCredentialsAuth": "fhirimg.http.auth",
    "FhirClient": "fhirimg.http.fhir",
    "HttpClient": "fhirimg.http.client",
    "Origin": "fhirimg.http.auth",
    "OriginBoundAuth": "fhirimg.http.auth",
    "PrivateKeyJwtAuth": "fhirimg.http.auth",
    "RetryPolicy": "fhirimg.http.settings",
    "TlsSettings": "fhirimg.http.settings",
    "format_outcome": "fhirimg.http.fhir",
    "is_loopback": "fhirimg.http.auth",
    "origin_of": "fhirimg.http.auth",
    "outcome_issues": "fhirimg.http.fhir",
    "parse_retry_after": "fhirimg.http.client",
    "ssl_context": "fhirimg.http.client",
}

__all__ = [
    "BasicAuth",
    "BearerAuth",
    "ClientCert",
    "ClientCredentialsAuth",
    "FhirClient",
    "HttpClient",
    "Origin",
    "OriginBoundAuth",
    "PrivateKeyJwtAuth",
    "RetryPolicy",
    "TlsSettings",
    "format_outcome",
    "is_loopback",
    "origin_of",
    "outcome_issues",
    "parse_retry_after",
    "ssl_context",
]

__getattr__, __dir__ = exports(globals(), _WHERE)
