"""Authentication for every server fhirimg talks to (FHIR, DICOMweb): bearer token, HTTP basic,
OAuth2 client credentials.

Every scheme is an :class:`httpx.Auth`, so :class:`fhirimg.http.client.HttpClient` applies it to each
request (retries included). The OAuth2 token request is yielded from the auth flow, so it too is sent
by that client, with its TLS settings and connection pool.
Secrets never appear in ``repr``, in log records or in error messages: a token or password is only
ever written into an ``Authorization`` header.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Generator
from dataclasses import dataclass

import httpx

from fhirimg.errors import AuthError, PushError

log = logging.getLogger(__name__)

__all__ = ["BasicAuth", "BearerAuth", "ClientCredentialsAuth"]


class BearerAuth(httpx.Auth):
    """A fixed bearer token (``Authorization: Bearer <token>``).

    >>> BearerAuth("s3cret")
    BearerAuth(token=***)
    """

    def __init__(self, token: str) -> None:
        self._token = token

    def __repr__(self) -> str:
        return "BearerAuth(token=***)"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self._token}"
        yield request


class BasicAuth(httpx.BasicAuth):
    """HTTP basic authentication whose ``repr`` hides the password.

    >>> BasicAuth("alice", "s3cret")
    BasicAuth(user='alice', password=***)
    """

    def __init__(self, username: str, password: str) -> None:
        super().__init__(username, password)
        self._username = username

    def __repr__(self) -> str:
        return f"BasicAuth(user={self._username!r}, password=***)"


@dataclass
class _Token:
    value: str
    expires_at: float  # time.monotonic() deadline


class ClientCredentialsAuth(httpx.Auth):
    """OAuth2 client-credentials grant (RFC 6749 section 4.4) with refresh.

    A token is fetched on first use, fetched again shortly before ``expires_in`` runs out, and once
    more when the server answers 401 (the token may have been revoked early). The client secret is
    sent with HTTP basic auth to the token endpoint (``client_secret_basic``, the RFC's default).

    >>> ClientCredentialsAuth("https://auth.example/token", "fhirimg", "s3cret")
    ClientCredentialsAuth(token_url='https://auth.example/token', client_id='fhirimg', secret=***)
    """

    # The body is replayed after a 401, and the token endpoint's answer is read inside the flow.
    requires_request_body = True
    requires_response_body = True

    # Refresh this many seconds before the announced expiry, to cover clock skew and transit time.
    EARLY_REFRESH_S = 30.0

    def __init__(
        self, token_url: str, client_id: str, client_secret: str, scope: str | None = None
    ) -> None:
        self.token_url = token_url
        self.client_id = client_id
        self._secret = client_secret
        self.scope = scope
        self._token: _Token | None = None
        self._lock = threading.Lock()
        self.fetch_count = 0  # for tests and -v diagnostics

    def __repr__(self) -> str:
        return (
            f"ClientCredentialsAuth(token_url={self.token_url!r}, client_id={self.client_id!r}, "
            "secret=***)"
        )

    def _token_request(self) -> httpx.Request:
        data = {"grant_type": "client_credentials"}
        if self.scope:
            data["scope"] = self.scope
        request = httpx.Request(
            "POST", self.token_url, data=data, headers={"Accept": "application/json"}
        )
        # client_secret_basic: the id and secret are form-urlencoded then base64'd (RFC 6749 2.3.1).
        return next(httpx.BasicAuth(self.client_id, self._secret).auth_flow(request))

    def _accept_token(self, response: httpx.Response) -> str:
        if response.status_code in (400, 401, 403):
            raise AuthError(
                f"the token endpoint refused the client credentials (HTTP {response.status_code})",
                status=response.status_code,
            )
        if not response.is_success:
            raise PushError(
                f"the token endpoint answered HTTP {response.status_code}",
                status=response.status_code,
            )
        try:
            body = response.json()
            value = str(body["access_token"])
        except (ValueError, KeyError, TypeError) as exc:
            raise AuthError("the token endpoint sent no access_token") from exc
        expires_in = body.get("expires_in")
        lifetime = float(expires_in) if isinstance(expires_in, int | float) else 3600.0
        margin = min(self.EARLY_REFRESH_S, lifetime / 2)
        with self._lock:
            self._token = _Token(value, time.monotonic() + lifetime - margin)
            self.fetch_count += 1
        log.debug("fetched an access token valid for %.0f s", lifetime)
        return value

    def _current(self) -> str | None:
        with self._lock:
            token = self._token
        if token is None or time.monotonic() >= token.expires_at:
            return None
        return token.value

    def invalidate(self) -> None:
        """Forget the current token, so the next request fetches a new one."""
        with self._lock:
            self._token = None

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        token = self._current()
        if token is None:
            token_response = yield self._token_request()
            token = self._accept_token(token_response)
        request.headers["Authorization"] = f"Bearer {token}"
        response = yield request
        if response.status_code == 401:
            # Revoked or expired early: one fresh token, one more try.
            log.info("HTTP 401: fetching a new access token")
            self.invalidate()
            token_response = yield self._token_request()
            token = self._accept_token(token_response)
            request.headers["Authorization"] = f"Bearer {token}"
            yield request
