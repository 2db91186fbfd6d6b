"""The HTTP layer every server-facing part of fhirimg sits on: ``push`` (FHIR), ``dicomweb``
(STOW-RS, QIDO-RS, WADO-RS), ``validate --server`` and ``verify`` are siblings on top of it.

- :mod:`fhirimg.http.client`: :class:`HttpClient` (the only place an ``httpx.Client`` is built)
  and :class:`RetryPolicy`;
- :mod:`fhirimg.http.auth`: bearer, basic and OAuth2 client-credentials authentication;
- :mod:`fhirimg.http.fhir`: :class:`FhirClient`, the FHIR REST semantics (OperationOutcome,
  CapabilityStatement, transactions, Binary uploads).

Errors are in :mod:`fhirimg.errors`: :class:`~fhirimg.errors.PushError` and its children
:class:`~fhirimg.errors.AuthError` and :class:`~fhirimg.errors.ServerUnreachableError`.
"""

from __future__ import annotations

from fhirimg.http.auth import BasicAuth, BearerAuth, ClientCredentialsAuth
from fhirimg.http.client import HttpClient, RetryPolicy, parse_retry_after
from fhirimg.http.fhir import FhirClient, format_outcome, outcome_issues

__all__ = [
    "BasicAuth",
    "BearerAuth",
    "ClientCredentialsAuth",
    "FhirClient",
    "HttpClient",
    "RetryPolicy",
    "format_outcome",
    "outcome_issues",
    "parse_retry_after",
]
