"""A FHIR REST client on top of :class:`fhirimg.http.client.HttpClient`: JSON in and out, refusals
read from the server's OperationOutcome.

Used by ``push`` (transactions, Binary uploads), ``verify`` (ImagingStudy searches) and
``validate --server`` (``$validate``). What the FHIR specification says about an exchange lives
here, not in the generic client: the ``application/fhir+json`` media type (FHIR R4 http.html
"Content Types"), the OperationOutcome a server sends with a refusal (http.html "Managing return
content"), the CapabilityStatement at ``[base]/metadata``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

from fhirimg import jsonio
from fhirimg.errors import PushError
from fhirimg.http.client import ClientCert, HttpClient, RetryPolicy
from fhirimg.http.limits import CAPABILITY_MAX, SEARCH_PAGE_MAX, TRANSACTION_MAX
from fhirimg.safetext import clean

__all__ = ["FHIR_JSON", "FhirClient", "format_outcome", "outcome_issues"]

FHIR_JSON = "application/fhir+json"


def outcome_issues(outcome: Mapping[str, Any] | None) -> list[str]:
    """One line per ``OperationOutcome.issue``: severity, code, text and where.

    The text is the server's: terminal control codes are removed (:func:`fhirimg.safetext.clean`)
    and it is kept to one line, so that it can go into messages, report.json and the journal.

    >>> outcome_issues({"resourceType": "OperationOutcome", "issue": [
    ...     {"severity": "error", "code": "invalid", "details": {"text": "Missing name"},
    ...      "expression": ["Patient.name"]}]})
    ['error invalid: Missing name (at Patient.name)']
    >>> outcome_issues({"resourceType": "OperationOutcome", "issue": [
    ...     {"severity": "error", "code": "invalid", "diagnostics": "bad\\x1b[2J\\x1b]0;t\\x07\\nx"}]})
    ['error invalid: bad x']
    """
    if not outcome or outcome.get("resourceType") != "OperationOutcome":
        return []
    lines = []
    for issue in outcome.get("issue") or []:
        if not isinstance(issue, dict):
            continue
        details = issue.get("details") or {}
        text = details.get("text") or issue.get("diagnostics") or ""
        if not text:
            codings = details.get("coding") or []
            text = ", ".join(str(c.get("display") or c.get("code")) for c in codings if c)
        where = issue.get("expression") or issue.get("location") or []
        line = f"{issue.get('severity', '?')} {issue.get('code', '?')}: {text}".rstrip(": ")
        if where:
            line += f" (at {', '.join(map(str, where))})"
        lines.append(" ".join(clean(line).split()))
    return lines


def format_outcome(status: int | None, outcome: Mapping[str, Any] | None) -> str:
    """``HTTP 422: error invalid: ...; error ...``: a refusal in one line.

    >>> format_outcome(None, None)
    'no HTTP response'
    """
    head = f"HTTP {status}" if status is not None else "no HTTP response"
    issues = outcome_issues(outcome)
    return f"{head}: {'; '.join(issues)}" if issues else head


class FhirClient(HttpClient):
    """A FHIR REST client with retries, for one server base URL (see :class:`HttpClient`).

    >>> FhirClient("https://fhir.example/r4/")
    FhirClient('https://fhir.example/r4')
    """

    def __init__(
        self,
        base_url: str,
        *,
        auth: httpx.Auth | None = None,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        verify: bool | str | Path = True,
        max_connections: int = 10,
        transport: httpx.BaseTransport | None = None,
        client_cert: ClientCert | None = None,
        deadline: float | None = None,
        allow_insecure_http: bool = False,
    ) -> None:
        super().__init__(
            base_url,
            auth=auth,
            timeout=timeout,
            retry=retry,
            verify=verify,
            max_connections=max_connections,
            headers={"Accept": FHIR_JSON},
            transport=transport,
            client_cert=client_cert,
            deadline=deadline,
            allow_insecure_http=allow_insecure_http,
        )

    def refusal(self, response: httpx.Response) -> tuple[str, dict[str, Any] | None]:
        """The status and the issues of the OperationOutcome the server sent with it, if any."""
        outcome = _outcome_of(response)
        return format_outcome(response.status_code, outcome), outcome

    def get_json(
        self,
        url: str,
        params: Mapping[str, str] | None = None,
        *,
        max_bytes: int = SEARCH_PAGE_MAX,
    ) -> dict[str, Any]:
        """GET a FHIR resource or search Bundle as JSON (at most ``max_bytes``; a URL outside the
        base URL is refused, see :meth:`HttpClient.request`)."""
        response = self.request("GET", url, params=params, max_bytes=max_bytes)
        return _json_of(response)

    def get_link_json(self, url: str, *, max_bytes: int = SEARCH_PAGE_MAX) -> dict[str, Any]:
        """GET a server-supplied link (a search page's ``next``, an absolute reference) as JSON:
        only under the base URL (:meth:`HttpClient.get_link`), at most ``max_bytes``."""
        return _json_of(self.get_link(url, max_bytes=max_bytes))

    def capabilities(self) -> dict[str, Any]:
        """The server's CapabilityStatement (``GET [base]/metadata``); a cheap reachability test.
        At most :data:`~fhirimg.http.limits.CAPABILITY_MAX` (16 MiB)."""
        return self.get_json("metadata", max_bytes=CAPABILITY_MAX)

    def transaction(self, bundle: Mapping[str, Any] | bytes) -> dict[str, Any]:
        """POST a transaction (or batch) Bundle to the base URL (a mapping, or its JSON bytes as
        read from a file); return the response Bundle (at most
        :data:`~fhirimg.http.limits.TRANSACTION_MAX`, 256 MiB)."""
        response = self.request(
            "POST",
            "",
            content=bundle if isinstance(bundle, bytes) else jsonio.dumps(bundle),
            headers={"Content-Type": FHIR_JSON},
            max_bytes=TRANSACTION_MAX,
        )
        return _json_of(response)

    def pause(self, attempt: int) -> None:
        """Wait the retry policy's backoff after failed attempt ``attempt`` of a step the caller
        repeats itself (a merge re-read after a version conflict); :class:`PushError` when the
        client is stopped (:meth:`stop`) meanwhile."""
        if self._stop.wait(self.retry.delay(attempt)):
            raise PushError("stopped while waiting to retry")

    def put_binary(
        self,
        binary_id: str,
        data: bytes,
        content_type: str = "application/dicom",
        security_context: str | None = None,
    ) -> httpx.Response:
        """Upload raw bytes as ``Binary/<binary_id>`` (update-as-create, hence idempotent).

        ``security_context`` (e.g. ``Patient/123``) goes in ``X-Security-Context`` and becomes
        ``Binary.securityContext`` (FHIR R4 binary.html "Binary Security Context").
        """
        headers = {"Content-Type": content_type}
        if security_context:
            headers["X-Security-Context"] = security_context
        return self.request("PUT", f"Binary/{binary_id}", content=data, headers=headers)


def _json_of(response: httpx.Response) -> dict[str, Any]:
    """The response body as a JSON object (``{}`` when empty); :class:`PushError` otherwise."""
    try:
        body = jsonio.loads(response.content) if response.content else {}
    except ValueError as exc:
        raise PushError(
            f"the server answered HTTP {response.status_code} with a body that is not JSON",
            status=response.status_code,
        ) from exc
    if not isinstance(body, dict):
        raise PushError("the server answered with JSON that is not an object")
    return body


def _outcome_of(response: httpx.Response) -> dict[str, Any] | None:
    try:
        body = jsonio.loads(response.content) if response.content else None
    except ValueError:
        return None
    if isinstance(body, dict) and body.get("resourceType") == "OperationOutcome":
        return body
    return None
