"""The settings of a connection, as plain values: what the CLI builds from its options before any
HTTP client exists. Kept apart from :mod:`fhirimg.http.client` so that building them imports no
httpx (issue 15: ``convert`` and ``validate`` parse these options on every run and most runs
never open a connection).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ClientCert", "RetryPolicy", "TlsSettings"]

ClientCert = tuple[str | Path, str | Path]
"""A client certificate for mutual TLS: (certificate PEM file, private key PEM file)."""


@dataclass(frozen=True)
class TlsSettings:
    """How to reach a server safely, as one value for code that hands it on to a client it builds
    (``validate --server``): the CA bundle or True (``verify``), the client certificate, and
    whether credentials may go over plain ``http://`` (see :class:`~fhirimg.http.client.HttpClient`)."""

    verify: bool | str | Path = True
    client_cert: ClientCert | None = None
    allow_insecure_http: bool = False


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
