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

Its promises, kept here so that no caller can forget them (issue 18; docs/security.md "Network and
TLS"):

- credentials are bound to the origin of the base URL (:class:`~fhirimg.http.auth.OriginBoundAuth`),
  and no request leaves the base URL: a URL outside it, from a caller or from a server's answer, is
  refused with :class:`~fhirimg.errors.UntrustedUrlError` (:meth:`HttpClient.under_base`,
  :meth:`HttpClient.get_link`);
- credentials never go over plain ``http://`` except to a loopback host, unless
  ``allow_insecure_http`` (then a warning, once per host);
- every answer has a size cap and every attempt a deadline (:mod:`fhirimg.http.limits`);
- TLS is always verified: the CA bundle given, else ``SSL_CERT_FILE`` / ``SSL_CERT_DIR``, else
  certifi's bundle (httpx 0.28's default, not the operating system's store); a client certificate
  for mutual TLS when given. A TLS failure is not retried and says which server and what to check.
"""

from __future__ import annotations

import email.utils
import logging
import posixpath
import ssl
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self
from urllib.parse import urlsplit, urlunsplit

import httpx

from fhirimg.errors import (
    AuthError,
    ConfigError,
    MissingFileError,
    PushError,
    ResponseTooLargeError,
    ServerUnreachableError,
    UntrustedUrlError,
)
from fhirimg.http.auth import ClientCredentialsAuth, OriginBoundAuth, is_loopback, origin_of
from fhirimg.http.limits import (
    DEFAULT_MAX,
    REFUSAL_MAX,
    DeadlineExceeded,
    Sink,
    deadline_scope,
    deadline_transport,
    default_deadline,
    read_body,
)
from fhirimg.http.settings import ClientCert, RetryPolicy, TlsSettings
from fhirimg.safetext import clean, redact_url

log = logging.getLogger(__name__)

__all__ = [
    "USER_AGENT",
    "ClientCert",
    "HttpClient",
    "TlsSettings",
    "RetryPolicy",
    "check_cleartext",
    "parse_retry_after",
    "ssl_context",
]

# Kept from when push had the only client: servers' access logs and allow-lists may match it.
USER_AGENT = "fhirimg-push"

# Transport failures worth another try: the request may not have arrived, or its answer was lost.
_RETRYABLE_ERRORS: tuple[type[Exception], ...] = (
    httpx.TimeoutException,
    httpx.NetworkError,
    httpx.RemoteProtocolError,
)


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


_warned_hosts: set[str] = set()
_warned_lock = threading.Lock()


def check_cleartext(url: str, allow_insecure_http: bool, what: str = "credentials") -> None:
    """Refuse to send ``what`` to an ``http://`` URL unless its host is loopback or
    ``allow_insecure_http``; then warn once per host (a ``logging`` warning naming it).

    >>> check_cleartext("https://fhir.example/r4", False)
    >>> check_cleartext("http://127.0.0.1:8080/fhir", False)
    >>> check_cleartext("http://fhir.example/r4", False)
    Traceback (most recent call last):
    fhirimg.errors.ConfigError: refusing to send credentials over plain http:// to fhir.example: use https://, or allow it with --allow-insecure-http (allow_insecure_http=True)
    """
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme.lower() != "http" or is_loopback(host):
        return
    if not allow_insecure_http:
        raise ConfigError(
            f"refusing to send {what} over plain http:// to {host}: use https://, or allow it "
            "with --allow-insecure-http (allow_insecure_http=True)"
        )
    with _warned_lock:
        first = host not in _warned_hosts
        _warned_hosts.add(host)
    if first:
        log.warning("sending %s over plain http:// to %s: readable on the network", what, host)


def ssl_context(
    verify: bool | str | Path = True, client_cert: ClientCert | None = None
) -> ssl.SSLContext:
    """The TLS settings of a client: the CA bundle ``verify`` names (True: ``SSL_CERT_FILE``,
    else ``SSL_CERT_DIR``, else certifi's bundle, as httpx 0.28 does), and the client certificate
    (``(cert, key)`` PEM files) presented to servers that ask for one (mutual TLS).
    ``verify=False`` turns verification off (tests only). Raises :class:`ConfigError` for a
    missing or unreadable file.
    """
    if verify is True or verify is False:
        context = httpx.create_ssl_context(verify=verify)
    else:
        if not Path(verify).is_file():
            raise MissingFileError(f"CA bundle not found: {verify}")
        try:
            context = ssl.create_default_context(cafile=str(verify))
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(f"cannot read the CA bundle {verify}: {exc}") from None
    if client_cert is not None:
        cert, key = client_cert
        for path in (cert, key):
            if not Path(path).is_file():
                raise MissingFileError(f"client certificate file not found: {path}")
        try:
            context.load_cert_chain(str(cert), str(key))
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(
                f"cannot use the client certificate {cert} with the key {key}: {exc}"
            ) from None
    return context


def _may_use_tls(base_url: str, auth: httpx.Auth | None) -> bool:
    """Whether a client of ``base_url`` may open a TLS connection: its requests stay at its
    origin (:meth:`HttpClient.under_base`), so only an ``https://`` base URL or an OAuth2 token
    URL that is not plain ``http://`` (:class:`ClientCredentialsAuth`) may.

    >>> _may_use_tls("http://127.0.0.1:8080/fhir", None), _may_use_tls("https://f.example", None)
    (False, True)
    >>> _may_use_tls("http://fhir.local", ClientCredentialsAuth(
    ...     "https://auth.example/token", "id", "secret"))
    True
    """
    if urlsplit(base_url).scheme.lower() != "http":
        return True
    if isinstance(auth, OriginBoundAuth):
        auth = auth.auth
    if isinstance(auth, ClientCredentialsAuth):
        return urlsplit(auth.token_url).scheme.lower() != "http"
    return False


def _refusing_tls() -> ssl.SSLContext:
    """A TLS context for a client that never opens a TLS connection (:func:`_may_use_tls`):
    it verifies like every other (certificate required, host name checked) but trusts no CA,
    so if a TLS connection were ever made it would fail, never go unverified."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def _tls_failure(exc: BaseException, server: str) -> str | None:
    """What to tell about a TLS failure in ``exc``'s causes, or None when it is not one that
    retrying could not fix (a dropped TLS connection is retried like any other)."""
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, ssl.SSLError):
        cause = cause.__cause__ or cause.__context__
    if cause is None:
        return None
    text = str(cause)
    if isinstance(cause, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in text:
        hint = "its certificate is not trusted: give its CA with --ca-bundle (or SSL_CERT_FILE)"
    elif "CERTIFICATE_REQUIRED" in text or "certificate required" in text:
        hint = "it requires a client certificate: give one with --client-cert and --client-key"
    elif "ALERT" in text.upper() and any(
        word in text.upper() for word in ("CERTIFICATE", "UNKNOWN_CA", "ACCESS_DENIED")
    ):
        hint = (
            "it refused the client certificate (--client-cert): is it one its CA signed, "
            "and not expired?"
        )
    elif "HANDSHAKE" in text.upper() or "WRONG_VERSION_NUMBER" in text:
        hint = "the TLS handshake failed (is it a TLS port?)"
    else:
        return None
    return f"TLS with {server} failed: {hint} ({text})"


def _strip_userinfo(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path.rstrip("/"), "", ""))


class HttpClient:
    """A retrying HTTP client for one server base URL; ``request`` paths are relative to it.

    ``verify`` is True (``SSL_CERT_FILE`` / ``SSL_CERT_DIR`` when set, else certifi's CAs), a path
    to a CA bundle file, or False (tests only); ``client_cert`` a (certificate, key) pair of PEM
    files for mutual TLS. ``auth`` is bound to the origin of ``base_url`` and refused over plain
    ``http://`` to a host that is not loopback unless ``allow_insecure_http``. ``timeout`` bounds
    each network read; ``deadline`` one whole attempt (default :func:`default_deadline`).
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
        client_cert: ClientCert | None = None,
        deadline: float | None = None,
        allow_insecure_http: bool = False,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"not an http(s) server URL: {_strip_userinfo(base_url)!r}")
        if parts.username or parts.password:
            raise ConfigError("put credentials in --user/--token, not in the server URL")
        self.base_url = base_url.rstrip("/")
        self.origin = origin_of(self.base_url)
        self._base_path = posixpath.normpath(parts.path or "/").rstrip("/")
        self.server = redact_url(self.base_url)  # how messages name this server
        self.retry = retry or RetryPolicy()
        self.deadline = deadline if deadline is not None else default_deadline(timeout)
        self._stop = threading.Event()
        if auth is not None:
            # No secret over cleartext, and none to any other origin (issue 18 items 1-3).
            check_cleartext(self.base_url, allow_insecure_http)
            if isinstance(auth, ClientCredentialsAuth):
                check_cleartext(auth.token_url, allow_insecure_http, "the OAuth2 client secret")
            auth = OriginBoundAuth(auth, self.origin)
        if verify is True and client_cert is None and not _may_use_tls(self.base_url, auth):
            # Plain http:// and no request can leave its origin (above): reading the CA bundle
            # (certifi's, the largest cost of building a client, issue 19) would buy nothing.
            context = _refusing_tls()
        else:
            context = ssl_context(verify, client_cert)
        self.tls_context = context
        """The TLS settings of this client's connections (see :func:`ssl_context`)."""
        limits = httpx.Limits(max_connections=max_connections)
        self._http = httpx.Client(
            base_url=self.base_url + "/",
            auth=auth,
            timeout=httpx.Timeout(timeout),
            verify=context,
            limits=limits,
            headers={"User-Agent": USER_AGENT, **(headers or {})},
            transport=transport or deadline_transport(context, limits),
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

    # --- where requests may go ---
    def _is_under(self, url: httpx.URL) -> bool:
        if origin_of(url) != self.origin or url.userinfo:
            return False
        segments = url.path.split("/")
        if any(s in (".", "..") for s in segments):
            return False
        path = url.path.rstrip("/")
        return (
            not self._base_path or path == self._base_path or path.startswith(self._base_path + "/")
        )

    def under_base(self, url: str) -> bool:
        """Whether ``url`` (absolute, or relative to the base URL as a link in an answer is)
        is under the base URL: the same origin (scheme, host, port) and a path within the base
        path, no ``..`` segments, no user name.

        >>> client = HttpClient("https://fhir.example/r4")
        >>> [client.under_base(u) for u in ("https://fhir.example/r4/Patient?_page=2",
        ...     "https://FHIR.example:443/r4", "http://fhir.example/r4/Patient",
        ...     "https://fhir.example/r4-admin", "https://fhir.example/r4/../admin",
        ...     "https://other.example/r4/Patient", "Patient/1", "/r4/Patient", "/admin")]
        [True, True, False, False, False, False, True, True, False]
        """
        try:
            target = httpx.URL(self.base_url + "/").join(url)
        except (httpx.InvalidURL, ValueError):
            return False
        return self._is_under(target)

    def _untrusted(self, url: str | httpx.URL) -> UntrustedUrlError:
        shown = redact_url(str(url).split("?", 1)[0])
        return UntrustedUrlError(
            f"refusing to request {shown}: it is not under the configured server {self.server} "
            f"(host {origin_of(str(url)).host or '?'} is not {self.origin.host}, or the path is "
            "outside the base path); credentials stay with the server they were given for"
        )

    def get_link(
        self,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        max_bytes: int = DEFAULT_MAX,
    ) -> httpx.Response:
        """GET a URL that a server supplied (a search page's ``next`` link, an absolute
        reference): only when :meth:`under_base` allows it, else :class:`UntrustedUrlError`
        naming both hosts (nothing is sent). Retries, caps and auth as :meth:`request`.
        """
        if not self.under_base(url):
            raise self._untrusted(url)
        target = httpx.URL(self.base_url + "/").join(url)
        return self.request("GET", str(target), headers=headers, max_bytes=max_bytes)

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
        max_bytes: int = DEFAULT_MAX,
        sink: Sink | None = None,
    ) -> httpx.Response:
        """Send one request, retrying per :attr:`retry`; return the 2xx response, its body read.

        Raises :class:`PushError` (with the HTTP status and what :meth:`refusal` found) on a
        refusal or when retries run out, :class:`AuthError` on 401/403,
        :class:`ServerUnreachableError` when no connection could be made or TLS failed,
        :class:`ResponseTooLargeError` when the answer passes ``max_bytes`` (not retried),
        :class:`UntrustedUrlError` when ``url`` is not under the base URL (nothing is sent).
        ``url`` is relative to the base URL (or absolute, under it). Statuses in ``ok_statuses``
        are returned instead of raised. With ``sink``, a successful answer's body is handed to it
        chunk by chunk instead (the response's ``content`` is then empty).
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
            attempt_started = time.monotonic()
            request = self._http.build_request(
                method, url.lstrip("/"), content=content, headers=headers, params=params
            )
            if not self._is_under(request.url):
                raise self._untrusted(request.url)
            try:
                response = self._send(request, ok_statuses, max_bytes, sink)
            except ResponseTooLargeError:
                raise
            except _RETRYABLE_ERRORS as exc:
                tls = _tls_failure(exc, self.server)
                if tls is not None:
                    raise ServerUnreachableError(f"{method} {_path_only(url)}: {tls}") from None
                if isinstance(exc, DeadlineExceeded) or (
                    isinstance(exc, httpx.TimeoutException)
                    and time.monotonic() - attempt_started >= self.deadline - 0.01
                ):
                    failure = (
                        f"no complete answer from {self.server} within the deadline of "
                        f"{self.deadline:g} s (--max-time)"
                    )
                else:
                    failure = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                unreachable = isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)
                status: int | None = None
                outcome: dict[str, Any] | None = None
            else:
                if response.is_success or response.status_code in ok_statuses:
                    _log_request(method, url, response.status_code)
                    return response
                status = response.status_code
                _log_request(method, url, status)  # -vv: refusals too
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
                    f"{method} {_path_only(url)} at {self.server}: {failure}; gave up after {why}",
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

    def _send(
        self,
        request: httpx.Request,
        ok_statuses: frozenset[int],
        max_bytes: int,
        sink: Sink | None,
    ) -> httpx.Response:
        """One attempt, within :attr:`deadline`: the response with its body read (capped)."""
        with deadline_scope(self.deadline):
            response = self._http.send(request, stream=True)
            try:
                if response.is_success or response.status_code in ok_statuses:
                    read_body(
                        response,
                        max_bytes,
                        server=self.server,
                        sink=sink if response.is_success else None,
                    )
                else:  # a refusal: its first MiB is enough to say why
                    read_body(response, REFUSAL_MAX, server=self.server, truncate=True)
            finally:
                response.close()
        return response


_REQUESTS_FOR: ContextVar[str | None] = ContextVar("fhirimg_requests_for", default=None)


@contextmanager
def requests_for(label: str) -> Iterator[None]:
    """Name what the requests sent inside are for (the bundle file being pushed) in the ``-vv``
    request log: ``POST [base] -> 200 (study-….json)``. A context variable, so each push worker
    thread logs the bundle it sends.

    >>> with requests_for("study-1.json"):
    ...     _REQUESTS_FOR.get()
    'study-1.json'
    >>> print(_REQUESTS_FOR.get())
    None
    """
    token = _REQUESTS_FOR.set(clean(label))
    try:
        yield
    finally:
        _REQUESTS_FOR.reset(token)


def _log_request(method: str, url: str, status: int) -> None:
    """One line of the ``-vv`` request log: method, path (never the query), status, and the
    bundle file the request is for (:func:`requests_for`) when there is one."""
    label = _REQUESTS_FOR.get()
    if label is None:
        log.debug("%s %s -> %d", method, _path_only(url), status)
    else:
        log.debug("%s %s -> %d (%s)", method, _path_only(url), status, label)


def _path_only(url: str) -> str:
    # Log and report without the query: a search query may carry patient identifiers.
    return url.split("?", 1)[0] or "[base]"
