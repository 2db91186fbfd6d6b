"""A small fault-injecting HTTP proxy for tests: put it in front of the real FHIR test server.

Each request takes the first scripted :class:`Fault` whose ``match`` accepts it (and uses up one of
its ``times``); with none left it is forwarded as is (after ``delay_all`` seconds). Faults::

    with FaultProxy(server.base_url) as proxy:
        proxy.script(Fault("status", status=503), Fault("status", status=429, retry_after="1"))
        push to proxy.base_url ...
        assert [r.action for r in proxy.log] == ["status", "status", "pass"]

Actions: ``pass`` (forward), ``status`` (answer ``status`` with ``body`` and ``headers`` without
forwarding), ``drop`` (read the request, close the connection without an answer), ``drop_after``
(forward, so the server commits, then close without an answer: the lost-response case), ``delay``
(wait ``seconds`` then forward: a response slower than the client's timeout).

It can also play the auth server: ``require_bearer`` / ``require_basic`` answer 401 to requests
without the right credentials, and ``enable_oauth`` serves a client-credentials token endpoint at
``/oauth/token`` whose tokens the proxy then requires (``revoke_tokens`` makes them expire early).
Threads + http.server; loopback only.
"""

from __future__ import annotations

import base64
import http.client
import itertools
import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from urllib.parse import urlsplit

_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailers",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "host",
}


def _outcome(status: int, text: str) -> bytes:
    return json.dumps(
        {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": "transient", "details": {"text": text}}],
        }
    ).encode()


@dataclass
class Fault:
    """One scripted behaviour; see the module docstring for the actions."""

    action: str
    status: int = 503
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    times: int = 1
    retry_after: str | None = None
    match: Callable[[str, str], bool] | None = None  # (method, path) -> bool

    def accepts(self, method: str, path: str) -> bool:
        return self.times > 0 and (self.match is None or self.match(method, path))


@dataclass(frozen=True)
class Seen:
    """A request the proxy received, and what it did with it."""

    method: str
    path: str
    action: str
    authorization: str | None
    at: float
    status: int | None = None


class FaultProxy:
    """The proxy; ``base_url`` mirrors the upstream's path (``http://127.0.0.1:P/fhir/R4``)."""

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self.upstream_host = parts.hostname or "127.0.0.1"
        self.upstream_port = parts.port or 80
        self.prefix = parts.path.rstrip("/")
        self.delay_all = 0.0
        self.log: list[Seen] = []
        self._faults: list[Fault] = []
        self._lock = threading.Lock()
        self._bearer: set[str] | None = None
        self._basic: str | None = None
        self._oauth: tuple[str, str, int] | None = None
        self._token_counter = itertools.count(1)
        self.tokens_issued = 0
        self.posts_in_flight = 0
        self.max_posts_in_flight = 0  # the most POSTs (transactions) it held at once
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        self.port = self._server.server_address[1]
        self.origin = f"http://127.0.0.1:{self.port}"
        self.base_url = f"{self.origin}{self.prefix}"

    # --- scripting ---
    def script(self, *faults: Fault) -> None:
        with self._lock:
            self._faults.extend(faults)

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()
            self.log.clear()
        self.delay_all = 0.0

    def require_bearer(self, token: str) -> None:
        self._bearer = {token}

    def require_basic(self, user: str, password: str) -> None:
        self._basic = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    def enable_oauth(self, client_id: str, secret: str, lifetime_s: int = 3600) -> None:
        self._oauth = (client_id, secret, lifetime_s)
        self._bearer = set()

    def revoke_tokens(self) -> None:
        with self._lock:
            if self._bearer is not None:
                self._bearer.clear()

    @property
    def token_url(self) -> str:
        return f"{self.origin}/oauth/token"

    def actions(self) -> list[str]:
        return [s.action for s in self.log]

    def _take(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.accepts(method, path):
                    fault.times -= 1
                    if fault.times <= 0:
                        self._faults.remove(fault)
                    return fault
        return None

    # --- life cycle ---
    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- the handler ---
    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass  # quiet

            def _body(self) -> bytes:
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            def _record(self, action: str, status: int | None = None) -> None:
                with proxy._lock:
                    proxy.log.append(
                        Seen(
                            self.command,
                            self.path,
                            action,
                            self.headers.get("Authorization"),
                            time.monotonic(),
                            status,
                        )
                    )

            def _answer(self, status: int, body: bytes, headers: dict[str, str]) -> None:
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                self.wfile.flush()

            def _drop(self) -> None:
                self.close_connection = True
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

            def _token(self, body: bytes) -> None:
                assert proxy._oauth is not None
                client_id, secret, lifetime = proxy._oauth
                want = "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()
                if self.headers.get("Authorization") != want or b"client_credentials" not in body:
                    self._record("token-refused", 401)
                    payload = json.dumps({"error": "invalid_client"}).encode()
                    self._answer(401, payload, {"Content-Type": "application/json"})
                    return
                token = f"tok-{next(proxy._token_counter)}-{time.monotonic_ns()}"
                with proxy._lock:
                    assert proxy._bearer is not None
                    proxy._bearer.add(token)
                    proxy.tokens_issued += 1
                self._record("token", 200)
                payload = json.dumps(
                    {"access_token": token, "token_type": "Bearer", "expires_in": lifetime}
                ).encode()
                self._answer(200, payload, {"Content-Type": "application/json"})

            def _authorized(self) -> bool:
                given = self.headers.get("Authorization")
                if proxy._basic is not None and given != proxy._basic:
                    return False
                if proxy._bearer is not None:
                    with proxy._lock:
                        ok = given is not None and given.removeprefix("Bearer ") in proxy._bearer
                    return ok and given is not None and given.startswith("Bearer ")
                return True

            def _handle(self) -> None:
                body = self._body()
                if self.path == "/oauth/token" and proxy._oauth is not None:
                    self._token(body)
                    return
                if not self._authorized():
                    self._record("unauthorized", 401)
                    self._answer(
                        401,
                        _outcome(401, "Unauthorized"),
                        {"Content-Type": "application/fhir+json", "WWW-Authenticate": "Bearer"},
                    )
                    return
                fault = proxy._take(self.command, self.path)
                action = fault.action if fault else "pass"
                if fault is None and proxy.delay_all:
                    time.sleep(proxy.delay_all)
                if fault is not None and fault.action == "status":
                    headers = {"Content-Type": "application/fhir+json", **fault.headers}
                    if fault.retry_after is not None:
                        headers["Retry-After"] = fault.retry_after
                    self._record("status", fault.status)
                    self._answer(
                        fault.status,
                        fault.body if fault.body is not None else _outcome(fault.status, "fault"),
                        headers,
                    )
                    return
                if fault is not None and fault.action == "drop":
                    self._record("drop")
                    self._drop()
                    return
                if fault is not None and fault.action == "delay":
                    time.sleep(fault.seconds)
                status, headers, payload = self._forward(body)
                if fault is not None and fault.action == "drop_after":
                    self._record("drop_after", status)
                    self._drop()
                    return
                self._record(action, status)
                try:
                    self._answer(status, payload, headers)
                except OSError:
                    pass  # the client gave up (timeout) meanwhile

            def _forward(self, body: bytes) -> tuple[int, dict[str, str], bytes]:
                conn = http.client.HTTPConnection(
                    proxy.upstream_host, proxy.upstream_port, timeout=120
                )
                try:
                    headers = {
                        k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP
                    }
                    headers.pop("Authorization", None)
                    conn.request(self.command, self.path, body=body or None, headers=headers)
                    response = conn.getresponse()
                    payload = response.read()
                    out = {k: v for k, v in response.getheaders() if k.lower() not in _HOP_BY_HOP}
                    return response.status, out, payload
                finally:
                    conn.close()

            def _post(self) -> None:
                with proxy._lock:
                    proxy.posts_in_flight += 1
                    proxy.max_posts_in_flight = max(
                        proxy.max_posts_in_flight, proxy.posts_in_flight
                    )
                try:
                    self._handle()
                finally:
                    with proxy._lock:
                        proxy.posts_in_flight -= 1

            do_GET = do_PUT = do_DELETE = do_PATCH = _handle  # noqa: N815
            do_POST = _post  # noqa: N815

        return Handler
