"""Ask a FHIR server's ``$validate`` and turn its OperationOutcome into findings (layer ``server``).

``POST [base]/[type]/$validate`` with the resource as the body (``Bundle/$validate`` for a bundle);
the server answers with an OperationOutcome, with status 200 whether or not it found problems
(FHIR R4 resource-operation-validate; some servers use 400/422 for an invalid resource, which is
read the same way). ``issue.severity`` maps to the finding severity (``fatal`` counts as an error),
``issue.expression`` (or the deprecated ``issue.location``) to the location and
``issue.diagnostics`` (or ``issue.details.text``) to the message.

The request goes through :mod:`fhirimg.http` like every other server request, sent once (no
retries: a validation run reports an unreachable server at once rather than after the backoff).

The answer is the server's, not trusted: a body that is not JSON, JSON nested past the parser's
depth limit, or no OperationOutcome is :class:`~fhirimg.errors.ServerUnreachableError` naming the
server (exit 3, never a crash), and the issues' text has its terminal control codes removed
(:func:`fhirimg.safetext.clean`) before it becomes a finding.
"""

from __future__ import annotations

import logging
from typing import Any

import httpx
import orjson

from fhirimg import jsonio
from fhirimg.errors import PushError, ServerUnreachableError
from fhirimg.http.client import RetryPolicy, TlsSettings
from fhirimg.http.fhir import FHIR_JSON, FhirClient
from fhirimg.safetext import clean, redact_url
from fhirimg.validate.findings import Finding, Layer, Severity

log = logging.getLogger(__name__)

_SEVERITY = {
    "fatal": Severity.ERROR,
    "error": Severity.ERROR,
    "warning": Severity.WARNING,
    "information": Severity.INFORMATION,
}


# $validate answers with an OperationOutcome whatever its status (200, or 400/422 for an invalid
# resource on some servers): every answer is read, none is retried.
_ANY_STATUS = frozenset(range(100, 600))


def server_client(
    base: str,
    *,
    timeout: float = 120.0,
    auth: httpx.Auth | None = None,
    tls: TlsSettings | None = None,
) -> FhirClient:
    """A client for ``base``'s ``$validate``, to share over many files (close it when done);
    ``auth``: the server's credentials (``validate --server`` takes those of ``push``).

    Raises :class:`~fhirimg.errors.ConfigError` when ``base`` is not an http(s) URL.
    """
    tls = tls or TlsSettings()
    return FhirClient(
        base,
        auth=auth,
        timeout=timeout,
        retry=RetryPolicy(max_attempts=1),
        verify=tls.verify,
        client_cert=tls.client_cert,
        allow_insecure_http=tls.allow_insecure_http,
    )


def outcome_findings(outcome: dict[str, Any], file: str) -> list[Finding]:
    """Findings from an OperationOutcome.

    >>> oo = {"resourceType": "OperationOutcome", "issue": [
    ...     {"severity": "fatal", "code": "invalid", "expression": ["Bundle.type"],
    ...      "diagnostics": "bad"}]}
    >>> outcome_findings(oo, "a.json")[0].location
    'Bundle.type'
    """
    out: list[Finding] = []
    issues = outcome.get("issue")
    for issue in issues if isinstance(issues, list) else []:
        if not isinstance(issue, dict):
            continue
        severity = _SEVERITY.get(str(issue.get("severity")), Severity.ERROR)
        where = issue.get("expression") or issue.get("location") or ["$"]
        details = issue.get("details")
        message = (
            issue.get("diagnostics")
            or (details.get("text") if isinstance(details, dict) else None)
            or str(issue.get("code", "issue"))
        )
        # The answer is the server's: any JSON value may stand where a string belongs.
        location = clean(str(where[0])) if isinstance(where, list) and where else "$"
        text = " ".join(clean(str(message)).split())
        out.append(Finding(severity, file, location, text, Layer.SERVER.value))
    return out


def validate_on_server(
    base: str,
    obj: dict[str, Any],
    *,
    file: str,
    client: FhirClient | None = None,
    timeout: float = 120.0,
) -> list[Finding]:
    """POST ``obj`` to ``[base]/[type]/$validate`` and return the server's findings.

    ``client`` (from :func:`server_client`) is used when given, for ``base``. Raises
    :class:`~fhirimg.errors.ServerUnreachableError` when the server cannot be reached or answers
    without an OperationOutcome.
    """
    rtype = obj.get("resourceType", "Bundle")
    path = f"{rtype}/$validate"
    own = client is None
    http = client or server_client(base, timeout=timeout)
    try:
        response = http.request(
            "POST",
            path,
            content=orjson.dumps(obj),
            headers={"Content-Type": FHIR_JSON},
            ok_statuses=_ANY_STATUS,
        )
    except PushError as exc:
        raise ServerUnreachableError(
            f"cannot use {redact_url(base)}: {exc}", status=exc.status
        ) from exc
    finally:
        if own:
            http.close()
    try:
        # orjson, not response.json(): the standard json module overflows the stack (a
        # RecursionError, not a ValueError) on deeply nested arrays; orjson stops at depth 1024.
        body = jsonio.loads(response.content) if response.content else None
    except (ValueError, RecursionError):
        raise ServerUnreachableError(
            f"{redact_url(http.base_url)}/{path} answered HTTP {response.status_code} with a "
            "body that is not JSON (or nested too deep)",
            status=response.status_code,
        ) from None
    if not isinstance(body, dict) or body.get("resourceType") != "OperationOutcome":
        raise ServerUnreachableError(
            f"{redact_url(http.base_url)}/{path} answered HTTP {response.status_code} without an "
            "OperationOutcome",
            status=response.status_code,
        )
    findings = outcome_findings(body, file)
    log.debug("%s: HTTP %s, %d issues", path, response.status_code, len(findings))
    return findings
