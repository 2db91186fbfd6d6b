"""Authentication for every server fhirimg talks to (FHIR, DICOMweb): bearer token, HTTP basic,
OAuth2 client credentials with a client secret or, for SMART Backend Services, a signed JWT client
assertion (:class:`PrivateKeyJwtAuth`, :mod:`fhirimg.http.jwt`).

Every scheme is an :class:`httpx.Auth`, so :class:`fhirimg.http.client.HttpClient` applies it to each
request (retries included). The OAuth2 token request is yielded from the auth flow, so it too is sent
by that client, with its TLS settings and connection pool.
Secrets never appear in ``repr``, in log records or in error messages: a token or password is only
ever written into an ``Authorization`` header.

Credentials are bound to an origin (scheme, host, port; RFC 6454): :class:`HttpClient` wraps its auth
in :class:`OriginBoundAuth`, which adds nothing to a request for any other origin, so a URL taken
from a server's answer (a ``next`` link, an absolute reference, an ``Endpoint.address``) never
carries them elsewhere, nor over ``http://`` to the same host. The OAuth2 client secret goes only to
the configured token URL (and redirects are never followed).
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections.abc import Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import urlsplit

import httpx

from fhirimg.errors import AuthError, PushError
from fhirimg.http.limits import TOKEN_MAX, read_body
from fhirimg.safetext import redact_url

if TYPE_CHECKING:
    from fhirimg.http.jwt import SigningKey

log = logging.getLogger(__name__)

__all__ = [
    "BasicAuth",
    "BearerAuth",
    "ClientCredentialsAuth",
    "Origin",
    "OriginBoundAuth",
    "PrivateKeyJwtAuth",
    "is_loopback",
    "origin_of",
]

_DEFAULT_PORTS = {"http": 80, "https": 443}


class Origin(NamedTuple):
    """An origin (RFC 6454): scheme, host (lower case), port (the default written out).

    >>> origin_of("HTTPS://Fhir.Example/r4?x=1")
    Origin(scheme='https', host='fhir.example', port=443)
    >>> str(origin_of("http://[::1]:8080/"))
    'http://[::1]:8080'
    """

    scheme: str
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def origin_of(url: str | httpx.URL) -> Origin:
    """The :class:`Origin` of an absolute URL (``port`` 0 for an unknown scheme without one)."""
    if isinstance(url, httpx.URL):
        scheme, host, port = url.scheme, url.host, url.port
    else:
        parts = urlsplit(url)
        scheme, host, port = parts.scheme, parts.hostname or "", parts.port
    scheme = scheme.lower()
    return Origin(scheme, host.lower(), port or _DEFAULT_PORTS.get(scheme, 0))


def is_loopback(host: str) -> bool:
    """``localhost``, 127.0.0.0/8 or ::1: traffic that never leaves the machine.

    >>> [is_loopback(h) for h in ("localhost", "127.0.0.2", "::1", "[::1]", "10.0.0.1", "pacs")]
    [True, True, True, True, False, False]
    """
    host = host.strip("[]").lower().rstrip(".")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class OriginBoundAuth(httpx.Auth):
    """``auth`` applied only to requests for ``origin``; any other request goes out without it.

    :class:`~fhirimg.http.client.HttpClient` wraps every auth it is given in one, bound to the
    origin of its base URL, so that no caller can send credentials to a URL a server supplied.

    >>> OriginBoundAuth(BearerAuth("s3cret"), origin_of("https://fhir.example"))
    OriginBoundAuth(BearerAuth(token=***), 'https://fhir.example:443')
    """

    def __init__(self, auth: httpx.Auth, origin: Origin) -> None:
        self.auth = auth
        self.origin = origin
        # httpx reads these to decide whether to load bodies before calling the flow.
        self.requires_request_body = auth.requires_request_body
        self.requires_response_body = auth.requires_response_body

    def __repr__(self) -> str:
        return f"OriginBoundAuth({self.auth!r}, {str(self.origin)!r})"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if origin_of(request.url) != self.origin:
            log.warning(
                "not sending credentials to %s: they are for %s",
                redact_url(str(request.url).split("?", 1)[0]),
                self.origin,
            )
            yield request
            return
        yield from self.auth.auth_flow(request)


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

    # The body is replayed after a 401. The token endpoint's answer is read inside the flow, with a
    # cap (TOKEN_MAX); httpx is not asked to read answers (it would read them whole, uncapped).
    requires_request_body = True
    requires_response_body = False

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

    def __getstate__(self) -> dict[str, Any]:
        """Pickled (to a Dask worker, ``convert --push-concurrency``) without the lock and the
        token: its expiry is on this process's monotonic clock; the copy fetches its own."""
        state = dict(self.__dict__)
        del state["_lock"]
        state["_token"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

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
        server = redact_url(self.token_url)
        read_body(
            response,
            TOKEN_MAX,
            server=server,
            what="token response",
            truncate=not response.is_success,
        )
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


class PrivateKeyJwtAuth(ClientCredentialsAuth):
    """OAuth2 client credentials with a ``private_key_jwt`` client assertion (RFC 7523; SMART
    Backend Services): no secret is sent, each token request carries a new JWT signed by
    ``key`` (RS384 or ES384, its ``kid`` in the header) with ``iss`` = ``sub`` = the client id,
    ``aud`` = the token URL, ``exp`` five minutes ahead and a fresh ``jti``. Refresh as for
    :class:`ClientCredentialsAuth`.

    >>> from cryptography.hazmat.primitives.asymmetric import ec
    >>> from fhirimg.http.jwt import SigningKey
    >>> key = SigningKey.from_private_key(ec.generate_private_key(ec.SECP384R1()), kid="k1")
    >>> PrivateKeyJwtAuth("https://ehr.example/token", "fhirimg", key, "system/*.rs")
    PrivateKeyJwtAuth(token_url='https://ehr.example/token', client_id='fhirimg', alg='ES384', kid='k1')
    """

    def __init__(
        self, token_url: str, client_id: str, key: SigningKey, scope: str | None = None
    ) -> None:
        super().__init__(token_url, client_id, "", scope)
        self._key = key

    def __repr__(self) -> str:
        return (
            f"PrivateKeyJwtAuth(token_url={self.token_url!r}, client_id={self.client_id!r}, "
            f"alg={self._key.alg!r}, kid={self._key.kid!r})"
        )

    def _token_request(self) -> httpx.Request:
        from fhirimg.http.jwt import ASSERTION_TYPE, client_assertion

        data = {
            "grant_type": "client_credentials",
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": client_assertion(self._key, self.client_id, self.token_url),
        }
        if self.scope:
            data["scope"] = self.scope
        return httpx.Request(
            "POST", self.token_url, data=data, headers={"Accept": "application/json"}
        )
