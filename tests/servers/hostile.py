"""A hostile HTTP(S) server for the security tests of issue 18: it answers what an attacker, or a
badly configured proxy, would answer, and records every request that reaches it.

fhirimg must keep credentials bound to the origin the user configured them for, and must survive
huge, slow, endless and malformed answers. Proving that needs a server that sends exactly those
answers and a record of which requests reached which host with which headers. This module is both:

- :class:`HostileServer`: a context manager serving on ``127.0.0.1`` (a free port, never another
  address) from a daemon thread; plain HTTP, TLS (``tls=True``, a trustme certificate for both
  ``127.0.0.1`` and ``localhost``, its CA at :attr:`HostileServer.ca_pem`) or mutual TLS
  (``require_client_cert=True``; :attr:`HostileServer.client_cert` is a good pair,
  :attr:`HostileServer.wrong_client_cert` one from another CA, which is refused).
- :class:`RequestLog`: thread-safe, shareable by several servers; one :class:`Request` per request
  (origin of the server that got it, method, path and query, all headers, the body and its length).
- Responders: functions that build the answers, routed with :meth:`HostileServer.route`.

One test per weakness then reads::

    log = RequestLog()
    with HostileServer(log=log, tls=True) as fhir, HostileServer(log=log) as elsewhere:
        fhir.route("GET", "/ImagingStudy", search_page(next_url=elsewhere.url("/steal")))
        ... run fhirimg against fhir.base_url with --token SECRET --ca-bundle fhir.ca_pem ...
        assert log.with_credentials(origin_not=fhir, secrets=["SECRET"]) == [], log.describe()

Everything the server does is bounded: request bodies are capped, a streamed answer stops by itself
after at most :data:`MAX_STREAM_SECONDS` (and at once when the server stops), idle connections time
out, and leaving the ``with`` block shuts every connection down and joins every thread.

>>> with HostileServer() as server:
...     server.route("GET", "/hello", json({"hi": 1}))
...     with urllib.request.urlopen(server.url("/hello?x=1")) as answer:
...         answer.read()
b'{"hi": 1}'
>>> [(r.method, r.target) for r in server.log]
[('GET', '/hello?x=1')]
"""

from __future__ import annotations

import base64
import functools
import itertools
import json as jsonlib
import shutil
import socket
import ssl
import sys
import tempfile
import threading
import time
import urllib.request  # noqa: F401  (used by the module doctest)
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Protocol, runtime_checkable
from urllib.parse import parse_qs, unquote_to_bytes, urlsplit

import trustme

HOST = "127.0.0.1"
MAX_STREAM_SECONDS = 30.0  # no answer takes longer than this, whatever its responder asks
MAX_REQUEST_BODY = 256 * 1024 * 1024  # bigger request bodies get 413 and a closed connection
BODY_KEPT = 1024 * 1024  # the log keeps this much of each request body (and its full length)
SOCKET_TIMEOUT = 10.0  # a silent client (no request, no TLS handshake) frees its thread after this
JOIN_SECONDS = 5.0  # leaving the context waits this long for the threads, then raises

# Headers that carry credentials by themselves, and form/query fields that do.
CREDENTIAL_HEADERS = ("authorization", "proxy-authorization", "cookie", "x-api-key")
CREDENTIAL_FIELDS = (
    "client_secret",
    "client_assertion",
    "password",
    "access_token",
    "refresh_token",
    "api_key",
    "apikey",
)

# What a server may put into OperationOutcome.issue.diagnostics to take over a terminal: clear the
# screen (ESC[2J, cursor home), set the window title (OSC 0 ... BEL), hide text (SGR 8), C1 controls
# (0x9b is CSI, 0x9d OSC, 0x9c ST in 8-bit terminals), backspaces that overwrite what came before,
# and rich markup that must be shown, not interpreted.
ESCAPE_TEXT = (
    "invalid resource\x1b[2J\x1b[H"
    "\x1b]0;pwned window title\x07"
    "\x1b[8mhidden text\x1b[0m"
    "\x9b31mC1 CSI red\x9b0m"
    "\x9d0;c1 title\x9c"
    "erased\x08\x08\x08\x08\x08\x08"
    "\x07[bold red]rich markup[/bold red]"
)

WADO_RS = "dicom-wado-rs"
STUDY_UID = "1.2.826.0.1.3680043.9.7704.18.1"  # the study the canned ImagingStudy describes
_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def control_characters(text: str) -> list[str]:
    """The C0 (except tab, newline, carriage return), DEL and C1 characters in ``text``: what must
    not reach a terminal raw.

    >>> control_characters("ok\\tline\\n")
    []
    >>> control_characters(ESCAPE_TEXT)[:3]
    ['\\x1b', '\\x1b', '\\x1b']
    """
    return [c for c in text if (ord(c) < 0x20 and c not in "\t\n\r") or 0x7F <= ord(c) <= 0x9F]


def origin_of(url: str) -> str:
    """``scheme://host:port`` of a URL, the port always written out.

    >>> origin_of("HTTPS://LocalHost/fhir?x=1")
    'https://localhost:443'
    >>> origin_of("http://127.0.0.1:8080/a")
    'http://127.0.0.1:8080'
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or {"http": 80, "https": 443}.get(scheme, 0)
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}"


# --------------------------------------------------------------------------- what was seen
class Headers:
    """Request headers in the order received, duplicates kept; names compared case-insensitively."""

    def __init__(self, items: Iterable[tuple[str, str]]) -> None:
        self._items = tuple(items)

    def get(self, name: str, default: str | None = None) -> str | None:
        key = name.lower()
        return next((v for k, v in self._items if k.lower() == key), default)

    def get_all(self, name: str) -> list[str]:
        key = name.lower()
        return [v for k, v in self._items if k.lower() == key]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def items(self) -> tuple[tuple[str, str], ...]:
        return self._items

    def __repr__(self) -> str:
        return f"Headers({list(self._items)!r})"


@dataclass(frozen=True)
class Request:
    """One request that reached a server: ``origin`` is the server's (``http://127.0.0.1:P``, or
    ``https://...``; plain HTTP sent to a TLS port is recorded as ``http://`` on that port)."""

    origin: str
    method: str
    target: str  # path and query, as sent
    headers: Headers
    body: bytes  # the first BODY_KEPT bytes
    body_length: int
    at: float = field(default_factory=time.monotonic)

    @property
    def url(self) -> str:
        return self.origin + self.target

    @property
    def path(self) -> str:
        return urlsplit(self.target).path

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(urlsplit(self.target).query, keep_blank_values=True)

    @property
    def form(self) -> dict[str, list[str]]:
        """The body's fields when it is ``application/x-www-form-urlencoded`` (a token request)."""
        content_type = (self.headers.get("content-type") or "").split(";")[0].strip().lower()
        if content_type != "application/x-www-form-urlencoded":
            return {}
        return parse_qs(self.body.decode("latin-1"), keep_blank_values=True)

    def credentials(self, secrets: Iterable[str] = ()) -> list[str]:
        """Why this request carries a credential: a credential header, a credential-named query or
        form field, or one of ``secrets`` anywhere (target, header values, decoded Basic
        credentials, body, URL-decoded body). Empty when it carries none."""
        found = [f"{name} header" for name in CREDENTIAL_HEADERS if name in self.headers]
        found += [f"{name} in the query" for name in CREDENTIAL_FIELDS if name in self.query]
        found += [f"{name} in the body" for name in CREDENTIAL_FIELDS if name in self.form]
        texts = {
            "target": [unquote_to_bytes(self.target)],
            "headers": [v.encode("latin-1", "replace") for _, v in self.headers.items()],
            "body": [self.body, unquote_to_bytes(self.body.replace(b"+", b" "))],
        }
        for value in self.headers.get_all("authorization"):
            scheme, _, param = value.partition(" ")
            if scheme.lower() == "basic":
                try:
                    texts["headers"].append(base64.b64decode(param.strip(), validate=True))
                except ValueError:
                    pass
        for secret in secrets:
            needle = secret.encode()
            found += [
                f"secret {secret[:4]!r}... in the {where}"
                for where, blobs in texts.items()
                if needle and any(needle in blob for blob in blobs)
            ]
        return found

    def __str__(self) -> str:
        names = ", ".join(k for k, _ in self.headers.items())
        return f"{self.method} {self.url} [{names}] body={self.body_length}B"


@dataclass(frozen=True)
class Refused:
    """A connection that never became a request: the TLS handshake failed (no client certificate,
    one from another CA, a client that does not trust the server's certificate)."""

    origin: str
    reason: str


@runtime_checkable
class _HasOrigin(Protocol):
    @property
    def origin(self) -> str: ...


OriginLike = str | _HasOrigin


def _origins(value: OriginLike | Iterable[OriginLike] | None) -> set[str]:
    if value is None:
        return set()
    items: Iterable[OriginLike] = (
        [value] if isinstance(value, str | _HasOrigin) else value  # one, or several
    )
    return {origin_of(item if isinstance(item, str) else item.origin) for item in items}


class RequestLog:
    """Every request that reached any server given this log, in arrival order; thread-safe.

    ``origin`` / ``origin_not`` arguments take a URL, an origin, a server, or several of them.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: list[Request] = []
        self._refused: list[Refused] = []
        self._changed = threading.Condition(self._lock)

    def record(self, request: Request) -> None:
        with self._changed:
            self._requests.append(request)
            self._changed.notify_all()

    def record_refused(self, refused: Refused) -> None:
        with self._changed:
            self._refused.append(refused)
            self._changed.notify_all()

    def clear(self) -> None:
        with self._lock:
            self._requests.clear()
            self._refused.clear()

    def requests(
        self,
        *,
        origin: OriginLike | Iterable[OriginLike] | None = None,
        origin_not: OriginLike | Iterable[OriginLike] | None = None,
        method: str | None = None,
        path: str | None = None,
    ) -> list[Request]:
        """The requests matching every filter given (``path`` ignores the query)."""
        wanted, unwanted = _origins(origin), _origins(origin_not)
        with self._lock:
            snapshot = list(self._requests)
        return [
            r
            for r in snapshot
            if (not wanted or r.origin in wanted)
            and r.origin not in unwanted
            and (method is None or r.method == method.upper())
            and (path is None or r.path == path)
        ]

    def with_credentials(
        self,
        *,
        origin: OriginLike | Iterable[OriginLike] | None = None,
        origin_not: OriginLike | Iterable[OriginLike] | None = None,
        secrets: Iterable[str] = (),
    ) -> list[Request]:
        """The requests (filtered by origin) that carry any credential: see
        :meth:`Request.credentials`. The assertion of issue 18 is
        ``log.with_credentials(origin_not=configured, secrets=[...]) == []``."""
        secrets = list(secrets)
        return [
            r for r in self.requests(origin=origin, origin_not=origin_not) if r.credentials(secrets)
        ]

    def origins(self) -> list[str]:
        """The distinct origins that got requests, in order of first request."""
        return list(dict.fromkeys(r.origin for r in self))

    @property
    def refused(self) -> list[Refused]:
        with self._lock:
            return list(self._refused)

    def wait_for(self, count: int, timeout: float = 10.0, *, refused: int = 0) -> bool:
        """Wait until at least ``count`` requests (and ``refused`` refusals) are recorded; False
        on timeout. A request is recorded before it is answered, but a refusal may be recorded
        after the client has given up: wait for it before asserting on :attr:`refused`."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(self._requests) < count or len(self._refused) < refused:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(left)
        return True

    def describe(self) -> str:
        """One line per request and refusal, for assertion messages."""
        lines = [str(r) for r in self]
        lines += [f"refused {x.origin}: {x.reason}" for x in self.refused]
        return "\n".join(lines) or "(no requests)"

    def __iter__(self) -> Iterator[Request]:
        with self._lock:
            return iter(list(self._requests))

    def __len__(self) -> int:
        with self._lock:
            return len(self._requests)


# --------------------------------------------------------------------------- answers
@dataclass(frozen=True)
class Reply:
    """What a responder answers. ``chunks``, when given, replaces ``body`` and is generated while
    sending (huge answers never sit in memory); ``length`` is then its Content-Length (None: no
    length, the connection closes at the end). ``interval`` pauses between chunks (a slow server).
    A stream stops after ``max_seconds`` (at most :data:`MAX_STREAM_SECONDS`) or when the server
    stops, closing the connection: the client sees a truncated answer."""

    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    chunks: Callable[[], Iterable[bytes]] | None = None
    length: int | None = None
    interval: float = 0.0
    max_seconds: float = MAX_STREAM_SECONDS


Responder = Callable[[Request], Reply]

FHIR_JSON = "application/fhir+json"
DICOM_JSON = "application/dicom+json"


def _dumps(obj: Any) -> bytes:
    # ensure_ascii=False so C1 controls travel as raw UTF-8, as a careless server would send them
    return jsonlib.dumps(obj, ensure_ascii=False).encode()


def json(
    obj: Any,
    status: int = 200,
    headers: Mapping[str, str] | None = None,
    *,
    content_type: str = FHIR_JSON,
) -> Responder:
    """Answer ``obj`` as JSON (``application/fhir+json`` unless told)."""
    body = _dumps(obj)
    all_headers = {"Content-Type": content_type, **(headers or {})}
    return lambda request: Reply(status, all_headers, body)


def raw(
    body: bytes | str,
    status: int = 200,
    content_type: str = "text/plain; charset=utf-8",
    headers: Mapping[str, str] | None = None,
) -> Responder:
    """Answer these exact bytes."""
    data = body.encode() if isinstance(body, str) else body
    all_headers = {"Content-Type": content_type, **(headers or {})}
    return lambda request: Reply(status, all_headers, data)


def not_json(status: int = 200, content_type: str = FHIR_JSON) -> Responder:
    """An HTML error page that claims to be JSON (a proxy's login or error page)."""
    return raw(b"<html><body><h1>502 Bad Gateway</h1></body></html>\n", status, content_type)


def outcome_resource(text: str, code: str = "processing") -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": code, "diagnostics": text}],
    }


def status(
    code: int, text: str | None = None, headers: Mapping[str, str] | None = None
) -> Responder:
    """Answer ``code`` with an OperationOutcome."""
    return json(outcome_resource(text or f"hostile server says {code}"), code, headers)


def unauthorized(realm: str = "hostile") -> Responder:
    """401 asking for a bearer token."""
    return status(401, "unauthorized", {"WWW-Authenticate": f'Bearer realm="{realm}"'})


def forbidden() -> Responder:
    return status(403, "forbidden")


def escape_outcome(status: int = 422, text: str = ESCAPE_TEXT) -> Responder:
    """An OperationOutcome whose diagnostics (and details.text) hold terminal escape sequences."""
    resource = outcome_resource(text)
    resource["issue"][0]["details"] = {"text": text}
    return json(resource, status)


def redirect(location: str, status: int = 302) -> Responder:
    """A redirect to ``location`` (302, or 307/308 that keep the method and body)."""
    return lambda request: Reply(status, {"Location": location})


def capability_statement(fhir_version: str = "4.0.1") -> dict[str, Any]:
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2024-01-01",
        "kind": "instance",
        "fhirVersion": fhir_version,
        "format": ["json"],
        "rest": [
            {
                "mode": "server",
                "resource": [
                    {"type": t, "interaction": [{"code": "read"}, {"code": "search-type"}]}
                    for t in ("Endpoint", "ImagingStudy", "Patient")
                ],
            }
        ],
    }


def metadata(fhir_version: str = "4.0.1") -> Responder:
    """A CapabilityStatement (served at any path ending in ``/metadata`` unless routed)."""
    return json(capability_statement(fhir_version))


NextUrl = str | Callable[[Request], str] | None


def same_page(request: Request) -> str:
    """For ``search_page(next_url=same_page)``: the next page is the page itself, for ever."""
    return request.url


def following_page(request: Request) -> str:
    """For ``search_page(next_url=following_page)``: ``?_page=N+1`` under the same path, for
    ever, each page a new URL (a loop that a repeat check alone does not catch)."""
    page = int((request.query.get("_page") or ["1"])[0] or 1)
    return f"{request.origin}{request.path}?_page={page + 1}"


def searchset(
    resources: Iterable[Mapping[str, Any]] = (), self_url: str = "", next_url: str | None = None
) -> dict[str, Any]:
    links = [{"relation": "self", "url": self_url}] if self_url else []
    if next_url:
        links.append({"relation": "next", "url": next_url})
    entries = [
        {"fullUrl": f"urn:hostile:{r.get('resourceType')}/{r.get('id')}", "resource": dict(r)}
        for r in resources
    ]
    return {"resourceType": "Bundle", "type": "searchset", "link": links, "entry": entries}


def search_page(next_url: NextUrl = None, resources: Iterable[Mapping[str, Any]] = ()) -> Responder:
    """A searchset Bundle with ``resources`` whose ``next`` link is ``next_url``: another origin,
    an ``http://`` URL, :func:`same_page` (endless) or :func:`following_page` (endless, new URLs)."""
    kept = [dict(r) for r in resources]

    def respond(request: Request) -> Reply:
        link = next_url(request) if callable(next_url) else next_url
        body = _dumps(searchset(kept, request.url, link))
        return Reply(200, {"Content-Type": FHIR_JSON}, body)

    return respond


def imaging_study_resource(
    endpoint_reference: str, study_uid: str = STUDY_UID, id: str = "hostile-study"
) -> dict[str, Any]:
    """An ImagingStudy with one series and instance whose ``endpoint`` is ``endpoint_reference``
    (write an absolute URL to another origin to test issue 18 item 1)."""
    return {
        "resourceType": "ImagingStudy",
        "id": id,
        "status": "available",
        "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{study_uid}"}],
        "subject": {"reference": "Patient/hostile-patient"},
        "endpoint": [{"reference": endpoint_reference}],
        "numberOfSeries": 1,
        "numberOfInstances": 1,
        "series": [
            {
                "uid": f"{study_uid}.1",
                "modality": {
                    "system": "http://dicom.nema.org/resources/ontology/DCM",
                    "code": "CT",
                },
                "instance": [
                    {
                        "uid": f"{study_uid}.1.1",
                        "sopClass": {
                            "system": "urn:ietf:rfc:3986",
                            "code": f"urn:oid:{_CT_IMAGE_STORAGE}",
                        },
                    }
                ],
            }
        ],
    }


def endpoint_resource(address: str, id: str = "hostile-pacs") -> dict[str, Any]:
    """A WADO-RS Endpoint whose ``address`` is ``address`` (issue 18 item 2: elsewhere)."""
    return {
        "resourceType": "Endpoint",
        "id": id,
        "status": "active",
        "connectionType": {
            "system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type",
            "code": WADO_RS,
        },
        "payloadType": [{"text": "DICOM WADO-RS"}],
        "payloadMimeType": ["application/dicom"],
        "address": address,
    }


def imaging_study_bundle(
    endpoint_reference: str, study_uid: str = STUDY_UID, next_url: NextUrl = None
) -> Responder:
    """A search page holding one ImagingStudy whose endpoint reference is ``endpoint_reference``."""
    return search_page(next_url, [imaging_study_resource(endpoint_reference, study_uid)])


def endpoint(address: str) -> Responder:
    """An Endpoint resource pointing at ``address``."""
    return json(endpoint_resource(address))


def oauth_token(
    access_token: str = "hostile-access-token", expires_in: int = 3600, token_type: str = "Bearer"
) -> Responder:
    """An OAuth2 token endpoint: the form (client_id, client_secret...) is in the log as
    :attr:`Request.form`; every request gets ``access_token``."""
    body = {"access_token": access_token, "token_type": token_type, "expires_in": expires_in}
    return json(body, content_type="application/json", headers={"Cache-Control": "no-store"})


_CHUNK = 64 * 1024


def _filled(prefix: bytes, unit: bytes, suffix: bytes, size: int, pad: bytes) -> Iterator[bytes]:
    """``prefix`` + ``pad`` * k + ``unit`` * n + ``suffix``, exactly ``size`` bytes, in chunks."""
    middle = size - len(prefix) - len(suffix)
    if middle < 0:
        raise ValueError(f"size {size} is smaller than the fixed parts ({size - middle})")
    units, padding = divmod(middle, len(unit))
    yield prefix + pad * padding
    per_block = max(1, _CHUNK // len(unit))
    block = unit * per_block
    full, rest = divmod(units, per_block)
    for _ in range(full):
        yield block
    yield unit * rest + suffix


HugeKind = Literal["array", "capability", "searchset", "padding"]


def _huge_parts(kind: HugeKind) -> tuple[bytes, bytes, bytes]:
    if kind == "array":  # a valid JSON array of empty objects (also a valid QIDO-RS answer)
        return b"[", b"{},", b"{}]"
    if kind == "capability":  # a valid CapabilityStatement with a huge description
        head = capability_statement()
        head["description"] = ""
        text = _dumps(head)
        return text[: -len(b'"}')], b"a", b'"}'
    if kind == "searchset":  # a valid empty searchset Bundle with a huge identifier
        return b'{"resourceType":"Bundle","type":"searchset","identifier":{"value":"', b"a", b'"}}'
    return b"", b"a", b""


def huge(
    size: int = 200_000_000,
    kind: HugeKind = "capability",
    *,
    content_type: str = FHIR_JSON,
    declare_length: bool = True,
) -> Responder:
    """``size`` bytes generated on the fly in 64 KiB chunks: valid JSON of that size (``array``,
    ``capability``, ``searchset``) or ``padding`` (``a`` bytes). ``declare_length=False`` sends no
    Content-Length (the body ends when the connection closes), so a client cannot refuse it early.
    """
    prefix, unit, suffix = _huge_parts(kind)
    pad = b"a" if kind in ("capability", "searchset", "padding") else b" "
    list(itertools.islice(_filled(prefix, unit, suffix, size, pad), 1))  # size check, now

    def respond(request: Request) -> Reply:
        return Reply(
            200,
            {"Content-Type": content_type},
            chunks=lambda: _filled(prefix, unit, suffix, size, pad),
            length=size if declare_length else None,
        )

    return respond


def slow(
    body: bytes | None = None,
    interval: float = 0.5,
    max_seconds: float = 20.0,
    *,
    content_type: str = FHIR_JSON,
) -> Responder:
    """Headers at once, then one byte of ``body`` every ``interval`` seconds (each read is quick,
    the whole answer is not). Stops after ``max_seconds`` (at most :data:`MAX_STREAM_SECONDS`) or
    when the server stops, closing the connection. ``body`` defaults to a CapabilityStatement."""
    data = body if body is not None else _dumps(capability_statement())

    def respond(request: Request) -> Reply:
        return Reply(
            200,
            {"Content-Type": content_type},
            chunks=lambda: (data[i : i + 1] for i in range(len(data))),
            length=len(data),
            interval=interval,
            max_seconds=max_seconds,
        )

    return respond


def nested_json(depth: int = 100_000, content_type: str = FHIR_JSON) -> Responder:
    """``[`` nested ``depth`` deep: valid JSON that overflows recursive parsers."""
    return raw(b"[" * depth + b"]" * depth, 200, content_type)


def qido_study(uid: str) -> dict[str, Any]:
    """One QIDO-RS study result (DICOM JSON)."""
    return {
        "0020000D": {"vr": "UI", "Value": [uid]},
        "00080020": {"vr": "DA", "Value": ["20240101"]},
        "00080061": {"vr": "CS", "Value": ["CT"]},
        "00100020": {"vr": "LO", "Value": ["HOSTILE"]},
    }


def qido_endless(page_size: int | None = None, *, distinct: bool = False) -> Responder:
    """QIDO-RS pages that never end: every page full (``page_size``, else the request's ``limit``,
    else 100; at most 5000), ``offset`` ignored. The same studies on every page, unless
    ``distinct``, then new UIDs on every request (repeats cannot be detected, only counted)."""
    counter = itertools.count()

    def respond(request: Request) -> Reply:
        asked = (request.query.get("limit") or [""])[0]
        size = page_size or (int(asked) if asked.isdigit() and int(asked) > 0 else 100)
        first = next(counter) * size if distinct else 0
        page = [qido_study(f"{STUDY_UID}.{first + i + 1}") for i in range(min(size, 5000))]
        return Reply(200, {"Content-Type": DICOM_JSON}, _dumps(page))

    return respond


def sequence(*responders: Responder) -> Responder:
    """The first request gets the first responder's answer, the next the second, and so on; the
    last one answers every request after that."""
    if not responders:
        raise ValueError("sequence() needs at least one responder")
    lock = threading.Lock()
    position = itertools.count()

    def respond(request: Request) -> Reply:
        with lock:
            n = next(position)
        return responders[min(n, len(responders) - 1)](request)

    return respond


# --------------------------------------------------------------------------- certificates
@functools.cache
def _ca(name: str) -> trustme.CA:
    return trustme.CA(organization_name=f"fhirimg hostile {name}")


@functools.cache
def _server_cert() -> trustme.LeafCert:
    return _ca("server").issue_cert("127.0.0.1", "localhost")


@functools.cache
def _client_cert(ca_name: str) -> trustme.LeafCert:
    return _ca(ca_name).issue_cert("fhirimg-client@example.org", common_name="fhirimg client")


# --------------------------------------------------------------------------- the server
class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = SOCKET_TIMEOUT
    server: _HttpServer

    def __init__(
        self,
        request: Any,
        client_address: Any,
        server: _HttpServer,
        *,
        origin: str = "",
        plain: bool = False,
    ) -> None:
        self.origin = origin
        self.plain_on_tls = plain  # plain HTTP that reached a TLS port: recorded, answered 400
        super().__init__(request, client_address, server)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass  # the RequestLog is the record; stderr stays quiet

    def _read_body(self) -> tuple[bytes, int] | None:
        """(the kept start of the body, its length), or None after answering an error."""
        kept = bytearray()
        total = 0

        def take(n: int) -> bool:
            nonlocal total
            while n > 0:
                data = self.rfile.read(min(n, _CHUNK))
                if not data:
                    return False
                n -= len(data)
                total += len(data)
                if len(kept) < BODY_KEPT:
                    kept.extend(data[: BODY_KEPT - len(kept)])
            return True

        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            for _ in range(1_000_000):  # bounded: MAX_REQUEST_BODY of one-byte chunks at most
                size_line = self.rfile.readline(1024).split(b";")[0].strip()
                try:
                    size = int(size_line, 16)
                except ValueError:
                    self._refuse(400, "bad chunk size")
                    return None
                if size == 0:
                    while self.rfile.readline(8192).strip():  # trailers; bounded by the timeout
                        pass
                    return bytes(kept), total
                if total + size > MAX_REQUEST_BODY:
                    self._refuse(413, "request body too large")
                    return None
                if not take(size):
                    return None
                self.rfile.readline(8)
            self._refuse(413, "too many chunks")
            return None
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self._refuse(400, "bad Content-Length")
            return None
        if length < 0 or length > MAX_REQUEST_BODY:
            self._refuse(413, "request body too large")
            return None
        return (bytes(kept), total) if take(length) else None

    def _refuse(self, code: int, text: str) -> None:
        self.close_connection = True
        self._send(Reply(code, {"Content-Type": FHIR_JSON}, _dumps(outcome_resource(text))))

    def _dispatch(self) -> None:
        hostile = self.server.hostile
        read = self._read_body()
        if read is None:
            self.close_connection = True
            return
        request = Request(
            self.origin, self.command, self.path, Headers(self.headers.items()), read[0], read[1]
        )
        hostile.log.record(request)
        if self.plain_on_tls:
            self.close_connection = True
            text = "The plain HTTP request was sent to HTTPS port"
            self._send(Reply(400, {"Content-Type": "text/plain"}, text.encode()))
            return
        responder = hostile._responder(request.method, request.path)
        try:
            reply = responder(request)
        except Exception as exc:  # a broken responder is a test bug: answer 500, keep the reason
            hostile._error(f"responder for {request.method} {request.path}: {exc!r}")
            reply = Reply(500, {"Content-Type": FHIR_JSON}, _dumps(outcome_resource(repr(exc))))
        self._send(reply)

    def _send(self, reply: Reply) -> None:
        stop = self.server.hostile._stop
        try:
            self.send_response(reply.status)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            length = len(reply.body) if reply.chunks is None else reply.length
            if "content-length" not in {k.lower() for k in reply.headers}:
                if length is not None:
                    self.send_header("Content-Length", str(length))
                else:
                    self.close_connection = True
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            if self.command == "HEAD":
                return
            if reply.chunks is None:
                self.wfile.write(reply.body)
                return
            deadline = time.monotonic() + min(reply.max_seconds, MAX_STREAM_SECONDS)
            sent = 0
            for chunk in reply.chunks():
                if stop.is_set() or time.monotonic() >= deadline:
                    break
                self.wfile.write(chunk)
                sent += len(chunk)
                if reply.interval > 0:
                    left = deadline - time.monotonic()
                    if stop.wait(max(0.0, min(reply.interval, left))):
                        break
            if sent != length:
                self.close_connection = True  # truncated (or undeclared): the close ends it
        except OSError:  # the client went away (or the server is stopping): nothing to answer
            self.close_connection = True


for _method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"):
    setattr(_Handler, f"do_{_method}", _Handler._dispatch)


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # HostileServer joins the connection threads itself, with a bound
    request_queue_size = 64

    def __init__(self, hostile: HostileServer) -> None:
        self.hostile = hostile
        super().__init__((HOST, 0), _Handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        # Runs in the connection's own thread, so a slow TLS handshake holds only this thread.
        self.hostile._serve_connection(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not self.hostile._stop.is_set():
            self.hostile._error(f"connection from {client_address}: {sys.exc_info()[1]!r}")


class HostileServer:
    """A scriptable hostile HTTP(S) server on ``127.0.0.1``; see the module docstring.

    ``log`` may be shared with other servers. Routes can be added before or after entering.
    ``metadata=False`` drops the default CapabilityStatement at ``.../metadata``.
    """

    def __init__(
        self,
        *,
        log: RequestLog | None = None,
        tls: bool = False,
        require_client_cert: bool = False,
        metadata: bool = True,
    ) -> None:
        if require_client_cert and not tls:
            raise ValueError("require_client_cert needs tls=True")
        self.log = log if log is not None else RequestLog()
        self.tls = tls
        self.require_client_cert = require_client_cert
        self.default_metadata = metadata
        self.errors: list[str] = []  # responder exceptions, handler errors: tests assert == []
        self._routes: dict[tuple[str, str], Responder] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._connections: set[socket.socket] = set()
        self._threads: set[threading.Thread] = set()
        self._server: _HttpServer | None = None
        self._port: int | None = None  # kept after close, so the log can still be filtered by it
        self._thread: threading.Thread | None = None
        self._dir: Path | None = None
        self._context: ssl.SSLContext | None = None

    # --- routes ---
    def route(self, method: str, path: str, responder: Responder) -> None:
        """Answer ``method`` (``*``: any) on ``path`` (the query is ignored; a trailing ``*`` makes
        it a prefix) with ``responder``. Exact paths win over prefixes, longer prefixes over
        shorter; a later route for the same method and path replaces the earlier one. Requests
        with no route get 404 (GET ``.../metadata``: a CapabilityStatement, see ``metadata``)."""
        with self._lock:
            self._routes[(method.upper(), path)] = responder

    def _responder(self, method: str, path: str) -> Responder:
        with self._lock:
            routes = dict(self._routes)
        for m in (method, "*"):
            if (m, path) in routes:
                return routes[(m, path)]
        prefixes = [
            (len(p), r)
            for (m, p), r in routes.items()
            if m in (method, "*") and p.endswith("*") and path.startswith(p[:-1])
        ]
        if prefixes:
            return max(prefixes, key=lambda item: item[0])[1]
        if self.default_metadata and method in ("GET", "HEAD") and path.endswith("/metadata"):
            return metadata()
        return status(404, f"no route for {method} {path}")

    # --- addresses and certificates ---
    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the server has not started (use it as a context manager)")
        return self._port

    @property
    def origin(self) -> str:
        """``http://127.0.0.1:P`` or ``https://127.0.0.1:P``: what the log records."""
        return f"{'https' if self.tls else 'http'}://{HOST}:{self.port}"

    @property
    def base_url(self) -> str:
        return self.origin

    @property
    def http_url(self) -> str:
        """The cleartext URL of this port. On a TLS server, requests to it are recorded (origin
        ``http://...``) and answered 400: a downgraded link whose credentials went in clear."""
        return f"http://{HOST}:{self.port}"

    def url(self, path: str = "/") -> str:
        return self.base_url + (path if path.startswith("/") else "/" + path)

    def _files(self) -> Path:
        if self._dir is None:
            raise RuntimeError("no certificates: the server is not running, or not with tls=True")
        return self._dir

    @property
    def ca_pem(self) -> Path:
        """The CA that signed the server's certificate: a client's CA bundle (``--ca-bundle``)."""
        return self._files() / "ca.pem"

    @property
    def client_cert(self) -> tuple[Path, Path]:
        """(certificate, key) PEM files of a client certificate this server accepts."""
        return self._files() / "client.pem", self._files() / "client.key"

    @property
    def wrong_client_cert(self) -> tuple[Path, Path]:
        """(certificate, key) PEM files of a client certificate from another CA: refused."""
        return self._files() / "wrong-client.pem", self._files() / "wrong-client.key"

    def client_ssl_context(
        self, client_cert: Literal["good", "wrong"] | None = None
    ) -> ssl.SSLContext:
        """A client SSLContext trusting :attr:`ca_pem`, presenting a client certificate if asked."""
        context = ssl.create_default_context(cafile=str(self.ca_pem))
        if client_cert is not None:
            cert, key = self.client_cert if client_cert == "good" else self.wrong_client_cert
            context.load_cert_chain(cert, key)
        return context

    def _write_certificates(self, folder: Path) -> ssl.SSLContext:
        _ca("server").cert_pem.write_to_path(str(folder / "ca.pem"))
        for stem, ca_name in (("client", "server"), ("wrong-client", "other")):
            leaf = _client_cert(ca_name)
            leaf.cert_chain_pems[0].write_to_path(str(folder / f"{stem}.pem"))
            leaf.private_key_pem.write_to_path(str(folder / f"{stem}.key"))
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        _server_cert().configure_cert(context)
        if self.require_client_cert:
            context.verify_mode = ssl.CERT_REQUIRED
            _ca("server").configure_trust(context)
        return context

    # --- connections ---
    def _serve_connection(self, sock: socket.socket, client_address: Any) -> None:
        thread = threading.current_thread()
        with self._lock:
            self._threads.add(thread)
            self._connections.add(sock)
        conn: socket.socket = sock
        try:
            if self._stop.is_set():
                return
            sock.settimeout(SOCKET_TIMEOUT)
            scheme, plain = "http", True
            if self._context is not None:
                try:
                    first = sock.recv(1, socket.MSG_PEEK)
                except OSError:
                    return
                if not first:
                    return
                plain = first != b"\x16"  # 0x16: a TLS handshake record
                if not plain:
                    scheme = "https"
                    try:
                        conn = self._context.wrap_socket(sock, server_side=True)
                    except (ssl.SSLError, OSError) as exc:
                        self.log.record_refused(Refused(self.origin, str(exc)))
                        return
                    with self._lock:
                        self._connections.add(conn)
            _Handler(
                conn,
                client_address,
                self._server,  # type: ignore[arg-type]
                origin=f"{scheme}://{HOST}:{self.port}",
                plain=plain and self._context is not None,
            )
        finally:
            with self._lock:
                self._connections.discard(sock)
                self._connections.discard(conn)
                self._threads.discard(thread)
            if conn is not sock:
                conn.close()

    def _error(self, text: str) -> None:
        with self._lock:
            self.errors.append(text)

    # --- life cycle ---
    def __enter__(self) -> HostileServer:
        self._stop.clear()
        if self.tls:
            self._dir = Path(tempfile.mkdtemp(prefix="fhirimg-hostile-"))
            self._context = self._write_certificates(self._dir)
        self._server = _HttpServer(self)
        self._port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"hostile-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop accepting, cut every open connection (slow and huge answers end at once), join the
        threads; RuntimeError if one is still alive after :data:`JOIN_SECONDS`."""
        if self._server is None:
            return
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            try:  # the plain socket call: wakes blocked reads and writes, TLS or not
                socket.socket.shutdown(conn, socket.SHUT_RDWR)
            except OSError:
                pass
        deadline = time.monotonic() + JOIN_SECONDS
        with self._lock:
            threads = list(self._threads)
        for thread in [self._thread, *threads]:
            if thread is not None:
                thread.join(max(0.0, deadline - time.monotonic()))
        alive = [t.name for t in threads if t.is_alive()]
        self._server = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
        if alive:
            raise RuntimeError(f"hostile server threads still running after close: {alive}")

    def threads_alive(self) -> int:
        """Connection threads still running (0 after :meth:`close`)."""
        with self._lock:
            return sum(1 for t in self._threads if t.is_alive())

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.close()
        except RuntimeError:
            if exc_type is None:
                raise
