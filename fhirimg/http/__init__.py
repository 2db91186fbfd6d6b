"""The HTTP layer every server-facing part of fhirimg sits on: ``push`` (FHIR), ``dicomweb``
(STOW-RS, QIDO-RS, WADO-RS), ``validate --server`` and ``verify`` are siblings on top of it.

- :mod:`fhirimg.http.client`: :class:`HttpClient` (the only place an ``httpx.Client`` is built)
  and :class:`RetryPolicy`;
- :mod:`fhirimg.http.auth`: bearer, basic and OAuth2 client-credentials authentication (a secret
  or a SMART private_key_jwt assertion, :mod:`fhirimg.http.jwt`), bound to an origin
  (:class:`OriginBoundAuth`);
- :mod:`fhirimg.http.limits`: the size cap of each kind of answer and the deadline per request;
- :mod:`fhirimg.http.fhir`: :class:`FhirClient`, the FHIR REST semantics (OperationOutcome,
  CapabilityStatement, transactions, Binary uploads).

Errors are in :mod:`fhirimg.errors`: :class:`~fhirimg.errors.PushError` and its children
:class:`~fhirimg.errors.AuthError`, :class:`~fhirimg.errors.ServerUnreachableError`,
:class:`~fhirimg.errors.UntrustedUrlError` and :class:`~fhirimg.errors.ResponseTooLargeError`.
"""

from __future__ import annotations

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
from fhirimg.http.client import (
    ClientCert,
    HttpClient,
    RetryPolicy,
    TlsSettings,
    parse_retry_after,
    ssl_context,
)
from fhirimg.http.fhir import FhirClient, format_outcome, outcome_issues

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
