"""The one HTTP client of fhirimg: one server base URL, authentication, retries with backoff.

Every command that talks to a server (push to FHIR, STOW/QIDO/WADO to DICOMweb, ``$validate``,
``verify``) goes through :class:`HttpClient`, and this module is the only place an
:class:`httpx.Client` is built: connection limits, TLS verification, redirects (never followed:
a redirect could carry credentials to another host) and retries are decided once, here.

Retrying is safe because everything fhirimg sends is idempotent by construction (conditional
create and update, Binary PUT with deterministic ids, STOW-RS of the same instance, reads): a
request that timed out after the server acted on it does nothing new when it is sent again.

The client knows HTTP, not FHIR or DICOM: a refusal is described by :meth:`HttpClient.refusal`,
which :class:`fhirimg.http.fhir.FhirClient` overrides to read the OperationOutcome.
"""

from __future__ import annotations

import email.utils
import logging
import random
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self
from urllib.parse import urlsplit, urlunsplit

import httpx

from fhirimg.errors import AuthError, ConfigError, PushError, ServerUnreachableError

log = logging.getLogger(__name__)

__all__ = ["USER_AGENT", "HttpClient", "RetryPolicy", "parse_retry_after"]

# Kept from when push had the only client: servers' access logs and allow-lists may match it.
USER_AGENT = "fhirimg-push"

# Transport failures worth another try: the request may not have arrived, or its answer was lost.
_RETRYABLE_ERRORS: tuple[type[Exception], ...] = (
    httpx.TimeoutException,
    httpx.NetworkError,
    httpx.RemoteProtocolError,
)


@dataclass(frozen=True)
class RetryPolicy:
    """When and how long to wait before sending a request again.

    Retried: connection errors, timeouts, and the HTTP statuses in ``retry_statuses`` (429 and the
    5xx family). Never retried: other 4xx, which will not change on their own. The wait before
    attempt ``n + 1`` is ``backoff_base * 2 ** (n - 1)`` capped at ``backoff_max``, with "equal
    jitter" (half fixed, half random) so that many clients do not come back in step; a
    ``Retry-After`` header replaces the computed wait. Retrying stops after ``max_attempts`` or
    when the next wait would end beyond ``max_elapsed`` seconds after the first attempt.

    >>> policy = RetryPolicy(backoff_base=1.0, backoff_max=8.0, jitter=False)
    >>> [policy.delay(n) for n in (1, 2, 3, 4, 5)]
    [1.0, 2.0, 4.0, 8.0, 8.0]
    >>> policy.delay(1, retry_after=3.0)
    3.0
    """

    max_attempts: int = 6
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    max_elapsed: float = 300.0
    jitter: bool = True
    retry_statuses: frozenset[int] = field(
        default_factory=lambda: frozenset({408, 425, 429, 500, 502, 503, 504})
    )

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        if retry_after is not None:
            return max(0.0, retry_after)
        base = float(min(self.backoff_max, self.backoff_base * 2.0 ** (attempt - 1)))
        if not self.jitter:
            return base
        return base / 2 + random.uniform(0, base / 2)  # jitter, not cryptography


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from ``Retry-After``: delay-seconds or an HTTP-date (RFC 9110 10.2.3).

    >>> parse_retry_after("2")
    2.0
    >>> parse_retry_after("Wed, 21 Oct 2026 07:28:05 GMT",
    ...                   now=datetime(2026, 10, 21, 7, 28, 0, tzinfo=UTC))
    5.0
    >>> parse_retry_after("soon") is None
    True
    """
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # delay-seconds = 1*DIGIT (ASCII only)
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def _strip_userinfo(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path.rstrip("/"), "", ""))


class HttpClient:
    """A retrying HTTP client for one server base URL; ``request`` paths are relative to it.

    ``verify`` is True (the system's CAs), a path to a CA bundle file, or False (tests only).
    ``headers`` are sent with every request (a per-request header of the same name wins). The
    client is thread-safe: ``--jobs`` threads share its connection pool.

    >>> HttpClient("https://pacs.example/dicom-web/").base_url
    'https://pacs.example/dicom-web'
    >>> HttpClient("ftp://pacs.example")
    Traceback (most recent call last):
    fhirimg.errors.ConfigError: not an http(s) server URL: 'ftp://pacs.example'
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
        headers: Mapping[str, str] | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"not an http(s) server URL: {_strip_userinfo(base_url)!r}")
        if parts.username or parts.password:
            raise ConfigError("put credentials in --user/--token, not in the server URL")
        self.base_url = base_url.rstrip("/")
        self.retry = retry or RetryPolicy()
        self._stop = threading.Event()
        verify_arg: bool | str = str(verify) if isinstance(verify, Path) else verify
        if isinstance(verify_arg, str) and not Path(verify_arg).is_file():
            raise ConfigError(f"CA bundle not found: {verify_arg}")
        self._http = httpx.Client(
            base_url=self.base_url + "/",
            auth=auth,
            timeout=httpx.Timeout(timeout),
            verify=verify_arg,
            limits=httpx.Limits(max_connections=max_connections),
            headers={"User-Agent": USER_AGENT, **(headers or {})},
            transport=transport,
            follow_redirects=False,
        )
        self._stats_lock = threading.Lock()
        self.stats_requests = 0
        self.stats_retries = 0

    # --- life cycle ---
    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def stop(self) -> None:
        """Make waiting retries give up at once (Ctrl-C, or the run is being aborted)."""
        self._stop.set()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base_url!r})"

    # --- what a refusal says ---
    def refusal(self, response: httpx.Response) -> tuple[str, dict[str, Any] | None]:
        """A refused request's answer in one line, and the JSON detail to carry on the error
        (:attr:`PushError.outcome`). Plain HTTP knows only the status; protocol clients say more.
        """
        return f"HTTP {response.status_code}", None

    # --- requests ---
    def request(
        self,
        method: str,
        url: str,
        *,
        content: bytes | Iterable[bytes] | None = None,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        ok_statuses: frozenset[int] = frozenset(),
    ) -> httpx.Response:
        """Send one request, retrying per :attr:`retry`; return the 2xx response.

        Raises :class:`PushError` (with the HTTP status and what :meth:`refusal` found) on a
        refusal or when retries run out, :class:`AuthError` on 401/403,
        :class:`ServerUnreachableError` when no connection could be made. ``url`` is relative to
        the base URL. Statuses in ``ok_statuses`` are returned instead of raised.
        """
        policy = self.retry
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            with self._stats_lock:
                self.stats_requests += 1
            retry_after: float | None = None
            unreachable = False
            try:
                response = self._http.request(
                    method, url.lstrip("/"), content=content, headers=headers, params=params
                )
            except _RETRYABLE_ERRORS as exc:
                failure = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                unreachable = isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)
                status: int | None = None
                outcome: dict[str, Any] | None = None
            else:
                if response.is_success or response.status_code in ok_statuses:
                    log.debug("%s %s -> %d", method, _path_only(url), response.status_code)
                    return response
                status = response.status_code
                failure, outcome = self.refusal(response)
                if status in (401, 403):
                    raise AuthError(
                        f"{method} {_path_only(url)}: {failure} (check the credentials)",
                        status=status,
                        outcome=outcome,
                    )
                if status not in policy.retry_statuses:
                    raise PushError(
                        f"{method} {_path_only(url)}: {failure}", status=status, outcome=outcome
                    )
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
            wait = policy.delay(attempt, retry_after)
            elapsed = time.monotonic() - started
            if attempt >= policy.max_attempts or elapsed + wait > policy.max_elapsed:
                why = (
                    f"{attempt} attempts"
                    if attempt >= policy.max_attempts
                    else f"{elapsed:.1f} s (the next wait would pass {policy.max_elapsed:g} s)"
                )
                error = ServerUnreachableError if unreachable else PushError
                raise error(
                    f"{method} {_path_only(url)}: {failure}; gave up after {why}",
                    status=status,
                    outcome=outcome,
                )
            if self._stop.is_set():
                raise PushError(f"{method} {_path_only(url)}: {failure}; stopped", status=status)
            log.info(
                "%s %s: %s; retry %d/%d in %.2f s",
                method,
                _path_only(url),
                failure,
                attempt,
                policy.max_attempts - 1,
                wait,
            )
            with self._stats_lock:
                self.stats_retries += 1
            if self._stop.wait(wait):
                raise PushError(f"{method} {_path_only(url)}: {failure}; stopped", status=status)


def _path_only(url: str) -> str:
    # Log and report without the query: a search query may carry patient identifiers.
    return url.split("?", 1)[0] or "[base]"
