"""A DICOMweb client: STOW-RS, QIDO-RS and WADO-RS (PS3.18), with multipart/related encoding.

Transport, authentication and retries are :mod:`fhirimg.http`'s (:class:`~fhirimg.http.HttpClient`),
as for the FHIR server: one retry policy (backoff, ``Retry-After``, 429/5xx, dropped connections) and
one set of auth schemes for both kinds of server. Every request sent here is idempotent: STOW-RS of an instance the archive
already holds stores it again (or keeps it), QIDO and WADO only read.

Why not the ``dicomweb-client`` package: it is built on ``requests`` (a second HTTP stack beside
httpx, with its own retry and auth objects, so ``--token-url`` refresh and ``Retry-After`` handling
would have to be written twice), it pulls numpy and Pillow for pixel decoding fhirimg never does, and
the four requests fhirimg needs are short. The multipart/related codec below (RFC 2387, RFC 2046
section 5.1) is what such a library would contribute; it is tested on its own and against Orthanc.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote, urlencode

import httpx

from fhirimg import jsonio
from fhirimg.errors import DicomwebError
from fhirimg.http.client import ClientCert, HttpClient, RetryPolicy
from fhirimg.http.limits import METADATA_MAX, SEARCH_PAGE_MAX

log = logging.getLogger(__name__)

__all__ = [
    "DICOM",
    "DICOM_JSON",
    "QIDO_MAX_RESULTS",
    "QIDO_PAGE",
    "DicomwebClient",
    "FilePart",
    "MultipartFiles",
    "StowResult",
    "decode_multipart",
    "encode_multipart",
    "first_value",
    "new_boundary",
    "scan_file",
]

DICOM = "application/dicom"
DICOM_JSON = "application/dicom+json"
# Orthanc answers 400 to a bare "application/dicom": ask for the multipart form (PS3.18 8.7.3.3).
_MULTIPART_DICOM = f'multipart/related; type="{DICOM}"'
QIDO_PAGE = 1000  # results asked for per QIDO-RS request (limit/offset paging)
# Results one QIDO-RS query may return at most (100 full pages): a server that never stops
# answering, or keeps inventing new results, ends here with an error, not with the memory gone.
# Far above one study's instances or a day's studies; a query matching more should be narrowed.
QIDO_MAX_RESULTS = 100_000
# Bytes of a file read at a time when hashing it or streaming it into a STOW-RS body: the memory a
# request in flight needs, whatever the size of the files or of the batch.
CHUNK = 1024 * 1024


# --------------------------------------------------------------------------- multipart/related
def new_boundary() -> str:
    """A random multipart boundary (128 bits: it occurring in a DICOM file by chance is negligible;
    callers still check, see :func:`scan_file`)."""
    return "fhirimg-" + secrets.token_hex(16)


def encode_multipart(
    parts: Sequence[bytes], content_type: str = DICOM, *, boundary: str | None = None
) -> tuple[bytes, str]:
    """The body and ``Content-Type`` of a multipart/related message holding ``parts``.

    The boundary is random; a part that happens to contain it is detected and another is drawn.
    A ``boundary`` given is used as it is (the caller has checked it).

    >>> body, ctype = encode_multipart([b"abc"])
    >>> [data for _, data in decode_multipart(body, ctype)]
    [b'abc']
    >>> ctype.startswith('multipart/related; type="application/dicom"; boundary=')
    True
    """
    while boundary is None:
        boundary = new_boundary()
        delimiter = b"--" + boundary.encode("ascii")
        if any(delimiter in part for part in parts):
            boundary = None
    delimiter = b"--" + boundary.encode("ascii")
    chunks: list[bytes] = []
    head = f"\r\nContent-Type: {content_type}\r\n\r\n".encode("ascii")
    for part in parts:
        chunks += [delimiter, head, part, b"\r\n"]
    chunks += [delimiter, b"--\r\n"]
    return b"".join(chunks), f'multipart/related; type="{content_type}"; boundary={boundary}'


@dataclass(frozen=True)
class FilePart:
    """A file to send as one part of a multipart body, as :func:`scan_file` found it."""

    path: Path
    size: int
    sha256: str


def scan_file(path: Path, boundary: str) -> tuple[FilePart, bool]:
    """Read ``path`` once, :data:`CHUNK` bytes at a time: its size and sha256, and whether the
    delimiter ``--boundary`` occurs in it (then it cannot be a part of a body with that boundary).
    Raises ``OSError`` when it cannot be read.
    """
    delimiter = b"--" + boundary.encode("ascii")
    digest = hashlib.sha256()
    size = 0
    clash = False
    tail = b""  # the end of the previous chunk: a delimiter may straddle two chunks
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
            if not clash:
                window = tail + chunk
                clash = delimiter in window
                tail = window[-(len(delimiter) - 1) :]
    return FilePart(path, size, digest.hexdigest()), clash


class MultipartFiles:
    """A multipart/related body whose parts are files, streamed rather than built in memory:
    iterating it reads each file :data:`CHUNK` bytes at a time. It is the same bytes as
    :func:`encode_multipart` of the files' contents with the same boundary, and its exact
    :attr:`length` is known beforehand (sent as ``Content-Length``: not every server takes a
    chunked request).

    Each iteration reads the files again, so a retried request sends them again. A file that is
    no longer what :func:`scan_file` saw (size, sha256) fails the request with
    :class:`DicomwebError` before its last chunk is sent, so the server never gets a complete body
    holding bytes other than those the caller hashed (and will journal).

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = Path(tmp, "a.dcm")
    ...     _ = path.write_bytes(b"DICM...")
    ...     part, clash = scan_file(path, "b0undary")
    ...     body = MultipartFiles([part], "b0undary")
    ...     streamed = b"".join(body)
    >>> streamed == encode_multipart([b"DICM..."], boundary="b0undary")[0]
    True
    >>> body.length == len(streamed), clash
    (True, False)
    """

    def __init__(self, parts: Sequence[FilePart], boundary: str, content_type: str = DICOM) -> None:
        self.parts = tuple(parts)
        self.content_type = f'multipart/related; type="{content_type}"; boundary={boundary}'
        self._delimiter = b"--" + boundary.encode("ascii")
        self._head = f"\r\nContent-Type: {content_type}\r\n\r\n".encode("ascii")
        per_part = len(self._delimiter) + len(self._head) + 2
        self.length = sum(per_part + p.size for p in self.parts) + len(self._delimiter) + 4

    def __iter__(self) -> Iterator[bytes]:
        for part in self.parts:
            yield self._delimiter + self._head
            yield from self._file(part)
            yield b"\r\n"
        yield self._delimiter + b"--\r\n"

    def _file(self, part: FilePart) -> Iterator[bytes]:
        digest = hashlib.sha256()
        size = 0
        held = b""  # the last chunk read, sent only once the next one shows the file is still right
        try:
            with part.path.open("rb") as f:
                while chunk := f.read(CHUNK):
                    size += len(chunk)
                    if size > part.size:
                        break
                    digest.update(chunk)
                    if held:
                        yield held
                    held = chunk
        except OSError as exc:
            raise DicomwebError(f"cannot read {part.path}: {exc.strerror or exc}") from None
        if size != part.size or digest.hexdigest() != part.sha256:
            raise DicomwebError(f"{part.path} changed while it was being stored; run again")
        if held:
            yield held


_PARAM = re.compile(r';\s*([!#$%&\'*+.^_`|~0-9A-Za-z-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^;\s]*))')


def content_type_params(content_type: str) -> tuple[str, dict[str, str]]:
    """The media type (lower case) and its parameters (names lower case) of a Content-Type.

    >>> content_type_params('Multipart/Related; type="application/dicom"; boundary=abc')
    ('multipart/related', {'type': 'application/dicom', 'boundary': 'abc'})
    """
    media = content_type.split(";", 1)[0].strip().lower()
    params = {
        m.group(1).lower(): (
            re.sub(r"\\(.)", r"\1", m.group(2)) if m.group(2) is not None else m.group(3)
        )
        for m in _PARAM.finditer(content_type)
    }
    return media, params


def decode_multipart(body: bytes, content_type: str) -> list[tuple[dict[str, str], bytes]]:
    """Split a multipart body into ``(headers, content)`` pairs; header names in lower case.

    Follows RFC 2046 section 5.1.1: a delimiter is CRLF ``--boundary`` (the first may start the
    body), transport padding after it is ignored, the preamble and epilogue are dropped.
    Raises :class:`DicomwebError` when the body is not multipart or is cut short.
    """
    media, params = content_type_params(content_type)
    boundary = params.get("boundary")
    if not media.startswith("multipart/") or not boundary:
        raise DicomwebError(f"expected a multipart answer, got Content-Type {content_type!r}")
    delimiter = b"--" + boundary.encode("latin-1")
    if body.startswith(delimiter):
        pos = 0
    else:
        pos = body.find(b"\r\n" + delimiter)
        if pos < 0:
            raise DicomwebError("multipart answer without its first boundary")
        pos += 2
    parts: list[tuple[dict[str, str], bytes]] = []
    while True:
        pos += len(delimiter)
        if body[pos : pos + 2] == b"--":
            return parts
        eol = body.find(b"\r\n", pos)
        if eol < 0:
            raise DicomwebError("multipart answer cut short after a boundary")
        start = eol + 2
        end = body.find(b"\r\n" + delimiter, start)
        if end < 0:
            raise DicomwebError("multipart answer cut short (no closing boundary)")
        if body.startswith(b"\r\n", start):  # no headers: the empty line comes first
            raw_headers, content = b"", body[start + 2 : end]
        else:
            raw_headers, sep, content = body[start:end].partition(b"\r\n\r\n")
            if not sep:
                raise DicomwebError("multipart part without the empty line after its headers")
        headers: dict[str, str] = {}
        for line in raw_headers.decode("latin-1").split("\r\n"):
            name, colon, value = line.partition(":")
            if colon:
                headers[name.strip().lower()] = value.strip()
        parts.append((headers, content))
        pos = end + 2


# --------------------------------------------------------------------------- DICOM JSON helpers
class PartWriter:
    r"""A WADO-RS answer of one instance, split as it streams in: the content of its one part
    goes to ``out``, nothing else is kept but a few bytes across chunk edges.

    The boundary is taken from the first line of the body (``--boundary``), since a sink sees the
    body only; :meth:`finish` checks it against the Content-Type's and that the part closed.

    >>> import io
    >>> out = io.BytesIO()
    >>> w = PartWriter(out)
    >>> for chunk in (b"--b1\r\nContent-Type: application/dicom\r\n\r\nDI", b"CM\r\n--b", b"1--"):
    ...     w(chunk)
    >>> w.finish("b1"); out.getvalue()
    b'DICM'
    """

    _MAX_HEAD = 64 * 1024  # a part's headers are a few lines

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.written = 0
        self.boundary: bytes | None = None
        self._buf = b""
        self._state = "head"

    def __call__(self, chunk: bytes) -> None:
        if self._state == "done":
            return  # the epilogue
        self._buf += chunk
        if self._state == "head":
            if self.boundary is None:
                eol = self._buf.find(b"\r\n")
                if eol < 0:
                    self._check_head()
                    return
                first = self._buf[:eol]
                if not first.startswith(b"--"):
                    raise DicomwebError("WADO-RS answer does not start with its boundary")
                self.boundary = first[2:].rstrip(b" \t")
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                self._check_head()
                return
            self._buf = self._buf[end + 4 :]
            self._state = "body"
        assert self.boundary is not None
        delimiter = b"\r\n--" + self.boundary
        end = self._buf.find(delimiter)
        if end >= 0:
            self._write(self._buf[:end])
            self._buf = b""
            self._state = "done"
            return
        keep = len(delimiter) - 1  # a delimiter cut across two chunks
        if len(self._buf) > keep:
            self._write(self._buf[:-keep])
            self._buf = self._buf[-keep:]

    def _check_head(self) -> None:
        if len(self._buf) > self._MAX_HEAD:
            raise DicomwebError("WADO-RS answer: no multipart part headers in the first 64 KiB")

    def _write(self, data: bytes) -> None:
        if data:
            self.out.write(data)
            self.written += len(data)

    def finish(self, boundary: str) -> None:
        """Check the answer once read: ``boundary`` (the Content-Type's) and a closed part."""
        if self.boundary is None or self.boundary.decode("latin-1") != boundary:
            raise DicomwebError("WADO-RS answer: its boundary is not the Content-Type's")
        if self._state != "done":
            raise DicomwebError("WADO-RS answer cut short (no closing boundary)")


def first_value(dataset: Mapping[str, Any], tag: str) -> Any:
    """The first value of ``tag`` (8 hex digits) in a DICOM JSON dataset, or None.

    >>> first_value({"0020000D": {"vr": "UI", "Value": ["1.2.3"]}}, "0020000D")
    '1.2.3'
    >>> first_value({"00081198": {"vr": "SQ"}}, "00081198") is None
    True
    """
    element = dataset.get(tag) or dataset.get(tag.lower())
    if not isinstance(element, Mapping):
        return None
    values = element.get("Value")
    if not isinstance(values, list) or not values:
        return None
    return values[0]


def _items(dataset: Mapping[str, Any], tag: str) -> list[Mapping[str, Any]]:
    element = dataset.get(tag) or dataset.get(tag.lower())
    values = element.get("Value") if isinstance(element, Mapping) else None
    return [v for v in values if isinstance(v, Mapping)] if isinstance(values, list) else []


@dataclass
class StowResult:
    """What a STOW-RS answer says (PS3.18 10.5.3): the SOP Instance UIDs stored, and those refused
    with their (0008,1197) Failure Reason."""

    status: int
    stored: list[str] = field(default_factory=list)
    failed: list[tuple[str, int | None]] = field(default_factory=list)
    warnings: list[tuple[str, int | None]] = field(default_factory=list)

    @classmethod
    def from_json(cls, status: int, body: Mapping[str, Any]) -> StowResult:
        """Read (0008,1199) Referenced SOP Sequence and (0008,1198) Failed SOP Sequence.

        Orthanc always sends (0008,1198), without a Value on success: only items count.

        >>> StowResult.from_json(200, {"00081198": {"vr": "SQ"}, "00081199": {"vr": "SQ",
        ...     "Value": [{"00081155": {"vr": "UI", "Value": ["1.2.3"]}}]}}).stored
        ['1.2.3']
        """
        result = cls(status)
        for item in _items(body, "00081199"):  # Referenced SOP Sequence
            uid = str(first_value(item, "00081155") or "")  # Referenced SOP Instance UID
            result.stored.append(uid)
            warning = first_value(item, "00081196")  # Warning Reason
            if warning is not None:
                result.warnings.append((uid, _int_or_none(warning)))
        for item in _items(body, "00081198"):  # Failed SOP Sequence
            uid = str(first_value(item, "00081155") or "")
            result.failed.append((uid, _int_or_none(first_value(item, "00081197"))))
        return result


def _page_digest(page: list[Any]) -> bytes:
    """What identifies a QIDO-RS page: the Study, Series and SOP Instance UIDs of its results,
    in order (other attributes may change between two answers of the same page)."""
    digest = hashlib.sha256()
    for item in page:
        for tag in ("0020000D", "0020000E", "00080018"):
            value = first_value(item, tag) if isinstance(item, Mapping) else None
            digest.update(str(value).encode("utf-8", "replace") + b"\0")
        digest.update(b"\n")
    return digest.digest()


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


# --------------------------------------------------------------------------- the client
class DicomwebClient:
    """STOW-RS, QIDO-RS and WADO-RS against one DICOMweb service base URL (e.g. Orthanc's
    ``http://host:8042/dicom-web``). Thread-safe; retries, auth (bound to the base URL's origin),
    TLS, size caps and deadlines are :class:`HttpClient`'s.

    QIDO-RS paging is bounded: at most ``max_results`` results per query
    (:data:`QIDO_MAX_RESULTS`), and a page that repeats an earlier one stops the query; both are
    a :class:`DicomwebError` naming the server (see :meth:`iter_studies`).

    >>> DicomwebClient("http://pacs.example/dicom-web/").instance_url("1.2", "1.2.3", "1.2.3.4")
    'http://pacs.example/dicom-web/studies/1.2/series/1.2.3/instances/1.2.3.4'
    """

    def __init__(
        self,
        base_url: str,
        *,
        auth: httpx.Auth | None = None,
        timeout: float = 60.0,
        retry: RetryPolicy | None = None,
        verify: bool | str | Path = True,
        max_connections: int = 10,
        transport: httpx.BaseTransport | None = None,
        client_cert: ClientCert | None = None,
        deadline: float | None = None,
        allow_insecure_http: bool = False,
        max_results: int = QIDO_MAX_RESULTS,
    ) -> None:
        self._http = HttpClient(
            base_url,
            auth=auth,
            timeout=timeout,
            retry=retry,
            verify=verify,
            max_connections=max_connections,
            transport=transport,
            client_cert=client_cert,
            deadline=deadline,
            allow_insecure_http=allow_insecure_http,
        )
        self.base_url = self._http.base_url
        self.server = self._http.server  # how messages name it: redacted, no controls
        self.max_results = max_results

    def close(self) -> None:
        self._http.close()

    def stop(self) -> None:
        """Make waiting retries give up at once."""
        self._http.stop()

    def __enter__(self) -> DicomwebClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"DicomwebClient({self.base_url!r})"

    @property
    def stats_requests(self) -> int:
        return self._http.stats_requests

    @property
    def stats_retries(self) -> int:
        return self._http.stats_retries

    # --- URLs ---
    def study_path(self, study: str) -> str:
        return f"studies/{quote(study, safe='')}"

    def instance_path(self, study: str, series: str, instance: str) -> str:
        return (
            f"{self.study_path(study)}/series/{quote(series, safe='')}"
            f"/instances/{quote(instance, safe='')}"
        )

    def instance_url(self, study: str, series: str, instance: str) -> str:
        """The WADO-RS URL of one instance (also its name in a from-DICOMweb ``report.json``)."""
        return f"{self.base_url}/{self.instance_path(study, series, instance)}"

    def check(self) -> None:
        """Fail early when the server is unreachable or refuses the credentials: one QIDO-RS
        search for at most one study (PS3.18 10.6), the cheapest request every archive answers."""
        self._http.request("GET", "studies", params={"limit": "1"}, headers={"Accept": DICOM_JSON})

    # --- STOW-RS ---
    def store(self, instances: Sequence[bytes]) -> StowResult:
        """Store DICOM Part 10 instances with one STOW-RS request (``POST {base}/studies``).

        Returns what the server stored and refused (HTTP 200, 202, or 409 when all failed);
        raises :class:`PushError` for any other refusal, after the retries.
        """
        body, content_type = encode_multipart(instances)
        return self._stow(body, {"Content-Type": content_type})

    def store_files(self, body: MultipartFiles) -> StowResult:
        """Like :meth:`store`, with the instances streamed from their files: the memory used is
        one :data:`CHUNK`, not the batch (except with an auth scheme that must replay the body
        after a 401, such as OAuth2 client credentials: httpx then reads it into memory).
        """
        headers = {"Content-Type": body.content_type, "Content-Length": str(body.length)}
        # HttpClient.request hands `content` to httpx unchanged, and httpx takes any iterable of
        # bytes (a new iteration for each retry: MultipartFiles is re-iterable, not a generator).
        return self._stow(body, headers)

    def _stow(self, content: bytes | Iterable[bytes], headers: Mapping[str, str]) -> StowResult:
        response = self._http.request(
            "POST",
            "studies",
            content=content,
            headers={**headers, "Accept": DICOM_JSON},
            ok_statuses=frozenset({409}),
        )
        answer = self._json(response, "STOW-RS") if response.content else {}
        if isinstance(answer, list) and answer:  # some servers wrap the dataset in an array
            answer = answer[0]
        if not isinstance(answer, dict):
            answer = {}
        return StowResult.from_json(response.status_code, answer)

    # --- QIDO-RS ---
    def _search(self, path: str, params: Mapping[str, str]) -> Iterator[dict[str, Any]]:
        """The results of one QIDO-RS query, page by page (``limit``/``offset``, PS3.18 8.3.4.4),
        each page dropped once its results are handed on: memory follows one page.

        Bounded whatever the server answers: each page by the HTTP layer's size cap, the query by
        :attr:`max_results`. A page holding the same results as an earlier one (a server that
        ignores ``offset`` and answers the first page for ever) stops the query with
        :class:`DicomwebError`, as does a query matching more than :attr:`max_results`: an
        incomplete list must not pass for a complete one.
        """
        offset = 0
        seen: set[bytes] = set()  # a digest of each page's results
        while True:
            query = {**params, "limit": str(QIDO_PAGE), "offset": str(offset)}
            # Wildcards stay literal: Orthanc 1.10 does not take %2A for '*' (PS3.18 8.3.4.6).
            url = f"{path}?{urlencode(query, safe='*?', quote_via=quote)}"
            response = self._http.request(
                "GET", url, headers={"Accept": DICOM_JSON}, max_bytes=SEARCH_PAGE_MAX
            )
            if response.status_code == 204 or not response.content:
                return  # PS3.18 8.3.4.4: no match
            page = self._json(response, f"QIDO-RS {path}")
            if not isinstance(page, list):
                raise DicomwebError(
                    f"QIDO-RS {path} at {self.server} answered JSON that is not an array of "
                    "DICOM JSON datasets",
                    status=response.status_code,
                )
            if not page:
                return
            digest = _page_digest(page)
            if digest in seen:
                raise DicomwebError(
                    f"QIDO-RS {path} at {self.server}: the page at offset {offset} holds the "
                    f"same results as an earlier page (the server does not page with "
                    f"limit/offset); stopped after {len(seen) + 1} requests"
                )
            seen.add(digest)
            if offset + len(page) > self.max_results:
                raise DicomwebError(
                    f"QIDO-RS {path} at {self.server} matches more than {self.max_results} "
                    "results, the most one query may return: narrow it (--study, --since, "
                    "--patient, --modality, --qido)"
                )
            yield from (item for item in page if isinstance(item, dict))
            if len(page) < QIDO_PAGE:
                return
            offset += len(page)  # > 0: the offset always advances
            del page

    def iter_studies(self, params: Mapping[str, str] | None = None) -> Iterator[dict[str, Any]]:
        """QIDO-RS ``GET {base}/studies?...``: one DICOM JSON dataset per matching study, as the
        pages arrive (see :meth:`_search` for the bounds)."""
        return self._search("studies", params or {})

    def iter_instances(
        self, study: str, params: Mapping[str, str] | None = None
    ) -> Iterator[dict[str, Any]]:
        """QIDO-RS ``GET {base}/studies/{study}/instances`` (each with its Series Instance UID),
        as the pages arrive."""
        return self._search(f"{self.study_path(study)}/instances", params or {})

    def search_studies(self, params: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
        """QIDO-RS ``GET {base}/studies?...``: one DICOM JSON dataset per matching study."""
        return list(self.iter_studies(params))

    def search_series(
        self, study: str, params: Mapping[str, str] | None = None
    ) -> list[dict[str, Any]]:
        """QIDO-RS ``GET {base}/studies/{study}/series``."""
        return list(self._search(f"{self.study_path(study)}/series", params or {}))

    def search_instances(
        self, study: str, params: Mapping[str, str] | None = None
    ) -> list[dict[str, Any]]:
        """QIDO-RS ``GET {base}/studies/{study}/instances`` (each with its Series Instance UID)."""
        return list(self.iter_instances(study, params))

    def _json(self, response: httpx.Response, what: str) -> Any:
        """The body as JSON; :class:`DicomwebError` naming the server when it is not JSON (an
        HTML error page, a cut answer, nesting deeper than the parser's limit): the server's
        fault, never fhirimg's."""
        try:
            return jsonio.loads(response.content)
        except (ValueError, RecursionError) as exc:
            raise DicomwebError(
                f"{what} at {self.server} answered HTTP {response.status_code} with a body that "
                f"is not JSON ({type(exc).__name__})",
                status=response.status_code,
            ) from None

    # --- WADO-RS ---
    def study_metadata(self, study: str) -> list[dict[str, Any]]:
        """WADO-RS ``GET {base}/studies/{study}/metadata``: every instance's header as DICOM JSON,
        bulk data (pixels) as ``BulkDataURI`` references, never downloaded."""
        response = self._http.request(
            "GET",
            f"{self.study_path(study)}/metadata",
            headers={"Accept": DICOM_JSON},
            max_bytes=METADATA_MAX,
        )
        body = (
            self._json(response, f"WADO-RS metadata of study {study}") if response.content else []
        )
        if not isinstance(body, list):
            raise DicomwebError(
                f"WADO-RS metadata of study {study} at {self.server} is not a JSON array",
                status=response.status_code,
            )
        return [item for item in body if isinstance(item, dict)]

    def retrieve_instance_to(
        self, study: str, series: str, instance: str, out: BinaryIO, attempts: int = 3
    ) -> int:
        """WADO-RS ``GET .../instances/{instance}`` streamed into ``out`` (the Part 10 bytes, as
        stored): memory holds one network chunk, never the instance. Returns the bytes written.

        The multipart answer is split as it arrives (:class:`PartWriter`). A body that a retry
        sent twice (the connection dropped mid-answer) is fetched again from the start, up to
        ``attempts`` times; :class:`DicomwebError` when the answer is not one DICOM part.
        """
        for _ in range(max(1, attempts)):
            out.seek(0)
            out.truncate()
            writer = PartWriter(out)
            retries = self._http.stats_retries
            response = self._http.request(
                "GET",
                self.instance_path(study, series, instance),
                headers={"Accept": f"{_MULTIPART_DICOM}; transfer-syntax=*"},
                sink=writer,
            )
            if self._http.stats_retries != retries:
                continue  # an attempt failed part-way: its bytes may be in ``out``, start again
            _, params = content_type_params(response.headers.get("Content-Type", ""))
            writer.finish(params.get("boundary", ""))
            return writer.written
        raise DicomwebError(f"WADO-RS of instance {instance} at {self.server} kept failing")

    def retrieve_instance(self, study: str, series: str, instance: str) -> bytes:
        """WADO-RS ``GET .../instances/{instance}``: the stored Part 10 bytes, as stored."""
        response = self._http.request(
            "GET",
            self.instance_path(study, series, instance),
            headers={"Accept": f"{_MULTIPART_DICOM}; transfer-syntax=*"},
        )
        parts = decode_multipart(response.content, response.headers.get("Content-Type", ""))
        if len(parts) != 1:
            raise DicomwebError(f"WADO-RS of one instance answered {len(parts)} parts")
        return parts[0][1]
