"""Bounds on what a server can make fhirimg spend: bytes per answer, seconds per request.

A server is not trusted to be reasonable (issue 18): a 200 MB ``/metadata`` answer, a QIDO-RS page
that never ends, or one byte every half second must end with a clear error, not with the memory or
the night gone. :class:`~fhirimg.http.client.HttpClient` applies both bounds to every request:

- **Size caps.** Every answer is read as a stream and reading stops as soon as it passes the cap of
  its kind (a ``Content-Length`` above the cap is refused before reading): at most the cap (plus one
  decoded chunk) is ever held. The caps, chosen well above any answer a sane server sends:

  ======================================  =========  ===================================
  answer                                  cap        constant
  ======================================  =========  ===================================
  OAuth2 token response                   1 MiB      :data:`TOKEN_MAX`
  CapabilityStatement (``/metadata``)     16 MiB     :data:`CAPABILITY_MAX`
  FHIR search page, QIDO-RS page          64 MiB     :data:`SEARCH_PAGE_MAX`
  anything else (STOW-RS, ``$validate``)  64 MiB     :data:`DEFAULT_MAX`
  WADO-RS study metadata                  256 MiB    :data:`METADATA_MAX`
  transaction response Bundle             256 MiB    :data:`TRANSACTION_MAX`
  refusal body (4xx/5xx), for its text    1 MiB      :data:`REFUSAL_MAX` (truncated, no error)
  ======================================  =========  ===================================

  Bodies meant to be large (a WADO-RS instance) go to a caller's ``sink`` instead of memory.

- **A deadline per request** (curl's ``--max-time``): ``deadline`` seconds for one attempt, from
  connecting to the last byte of the answer, on top of the per-read ``timeout``. With fhirimg's own
  transport every socket operation (connect, TLS handshake, sending, the header and body reads) is
  given at most the time left, so a server dripping its headers or its body ends at the deadline.
  With a caller's ``transport=`` (tests) only the body phase is checked, between chunks. The
  deadline is per attempt; a deadline passed counts as a timeout, retried per
  :class:`~fhirimg.http.client.RetryPolicy`, whose ``max_elapsed`` still bounds the whole.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpcore
import httpx

from fhirimg.errors import ResponseTooLargeError

__all__ = [
    "CAPABILITY_MAX",
    "DEFAULT_MAX",
    "METADATA_MAX",
    "REFUSAL_MAX",
    "SEARCH_PAGE_MAX",
    "TOKEN_MAX",
    "TRANSACTION_MAX",
    "DeadlineExceeded",
    "default_deadline",
    "read_body",
]

MiB = 1024 * 1024
TOKEN_MAX = 1 * MiB
CAPABILITY_MAX = 16 * MiB
SEARCH_PAGE_MAX = 64 * MiB
DEFAULT_MAX = 64 * MiB
METADATA_MAX = 256 * MiB
TRANSACTION_MAX = 256 * MiB
REFUSAL_MAX = 1 * MiB

Sink = Callable[[bytes], object]


def default_deadline(timeout: float) -> float:
    """The deadline of one request when none is given: four per-read timeouts, at least 2 min.

    >>> default_deadline(30.0), default_deadline(60.0)
    (120.0, 240.0)
    """
    return max(120.0, 4.0 * timeout)


def format_size(size: int) -> str:
    """``16 MiB``, ``512 KiB``, ``100 bytes``.

    >>> format_size(16 * MiB), format_size(1536), format_size(100)
    ('16 MiB', '1.5 KiB', '100 bytes')
    """
    for unit, scale in (("GiB", 1024 * MiB), ("MiB", MiB), ("KiB", 1024)):
        if size >= scale:
            return f"{size / scale:.4g} {unit}"
    return f"{size} bytes"


class DeadlineExceeded(httpx.TimeoutException):
    """One request took longer than its deadline; a timeout, so retried like one."""


# --------------------------------------------------------------------------- the deadline
# The deadline of the request the current thread is sending (time.monotonic()), read by the
# network streams below. httpx's sync client sends on the calling thread, so a thread-local is
# exactly "this request"; --jobs threads each have their own.
_state = threading.local()


@contextmanager
def deadline_scope(seconds: float) -> Iterator[float]:
    """Run a request with a deadline ``seconds`` from now; yields the deadline (monotonic)."""
    previous: float | None = getattr(_state, "at", None)
    at = time.monotonic() + seconds
    _state.at = at
    try:
        yield at
    finally:
        _state.at = previous


def time_left() -> float | None:
    """Seconds left before the current request's deadline (None: no deadline in force)."""
    at: float | None = getattr(_state, "at", None)
    return None if at is None else at - time.monotonic()


def _bounded(timeout: float | None, error: type[Exception]) -> float | None:
    """The timeout for one socket operation: ``timeout``, or the time left when that is less."""
    left = time_left()
    if left is None:
        return timeout
    if left <= 0:
        raise error("the request's deadline has passed")
    return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    """A network stream whose every read, write and handshake ends by the request's deadline."""

    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _bounded(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _bounded(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: object,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        tls = self._inner.start_tls(
            ssl_context,  # type: ignore[arg-type]
            server_hostname,
            _bounded(timeout, httpcore.ConnectTimeout),
        )
        return _DeadlineStream(tls)

    def get_extra_info(self, info: str) -> object:
        return self._inner.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    """httpcore's socket backend with :class:`_DeadlineStream` streams."""

    def __init__(self) -> None:
        self._inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: object = None,
    ) -> httpcore.NetworkStream:
        stream = self._inner.connect_tcp(
            host,
            port,
            _bounded(timeout, httpcore.ConnectTimeout),
            local_address,
            socket_options,  # type: ignore[arg-type]
        )
        return _DeadlineStream(stream)

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: object = None
    ) -> httpcore.NetworkStream:
        stream = self._inner.connect_unix_socket(
            path,
            _bounded(timeout, httpcore.ConnectTimeout),
            socket_options,  # type: ignore[arg-type]
        )
        return _DeadlineStream(stream)

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def deadline_transport(verify: object, limits: httpx.Limits) -> httpx.HTTPTransport:
    """httpx's own transport, with sockets that honour the request deadline.

    httpx does not let one choose httpcore's network backend, so the transport's connection pool
    is replaced by an equal one with :class:`_DeadlineBackend` (``_pool`` is httpx's attribute;
    if a later httpx renames it, the transport is kept as it is and only the body phase is
    bounded, which ``tests/test_http_security.py`` would show).
    """
    transport = httpx.HTTPTransport(verify=verify, limits=limits)  # type: ignore[arg-type]
    pool = getattr(transport, "_pool", None)
    if isinstance(pool, httpcore.ConnectionPool):
        transport._pool = httpcore.ConnectionPool(
            ssl_context=getattr(pool, "_ssl_context", None),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=_DeadlineBackend(),
        )
    return transport


# --------------------------------------------------------------------------- the body
def read_body(
    response: httpx.Response,
    limit: int,
    *,
    server: str,
    what: str = "answer",
    truncate: bool = False,
    sink: Sink | None = None,
) -> bytes:
    """Read a streamed ``response`` body, at most ``limit`` bytes (decoded), and return it.

    Past ``limit``: :class:`~fhirimg.errors.ResponseTooLargeError` naming ``server`` and the cap,
    or, with ``truncate``, the first ``limit`` bytes (a refusal's text). With ``sink`` every chunk
    goes to ``sink`` instead, uncapped, and ``b""`` is returned. The request's deadline (see
    :func:`deadline_scope`) is checked between chunks: :class:`DeadlineExceeded`. The body is
    also left on the response (``response.content`` works afterwards).
    """
    declared = response.headers.get("Content-Length", "")
    if sink is None and not truncate and declared.isdigit() and int(declared) > limit:
        response.close()
        raise _too_large(server, what, limit, f"it announced {format_size(int(declared))}")
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_bytes():
        left = time_left()
        if left is not None and left <= 0:
            response.close()
            raise DeadlineExceeded("the request's deadline passed while reading the answer")
        if sink is not None:
            sink(chunk)
            continue
        size += len(chunk)
        if size > limit:
            response.close()
            if truncate:
                chunks.append(chunk[: len(chunk) - (size - limit)])
                break
            raise _too_large(server, what, limit, "reading stopped there")
        chunks.append(chunk)
    body = b"".join(chunks)
    response._content = body  # what Response.read() would have set
    return body


def _too_large(server: str, what: str, limit: int, detail: str) -> ResponseTooLargeError:
    return ResponseTooLargeError(
        f"{server} sent a {what} larger than the cap of {format_size(limit)} ({detail})"
    )
