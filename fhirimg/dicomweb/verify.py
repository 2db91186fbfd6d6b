"""``verify``: do the ImagingStudies and the PACS they point at agree?

For each ImagingStudy (read from a FHIR server, or from bundle files) that references a
``dicom-wado-rs`` Endpoint, QIDO-RS lists the study's instances at that Endpoint's address, and the
two lists are compared: instances (and series) the ImagingStudy lists that the PACS lacks ("missing
in PACS"), and those the PACS holds that the ImagingStudy does not list ("missing in FHIR"), plus
instances whose SOP Class differs. ImagingStudies without a DICOMweb Endpoint are listed as
skipped, never silently passed.

Every URL here comes from server data or input files, which are not trusted (issue 18):

- FHIR search pages are followed through their ``next`` link only while it stays under the FHIR
  server's base URL, never to the same page twice, and for at most ``max_pages`` pages
  (:data:`MAX_SEARCH_PAGES`); otherwise the run stops with an error naming both hosts.
- An ``ImagingStudy.endpoint`` reference is read from the FHIR server only when it is relative
  (``Endpoint/id``) or an absolute URL under its base URL; contained (``#id``) Endpoints are read
  from the ImagingStudy. Any other reference is reported on the study, not fetched.
- The PACS is contacted only where the user allows: with ``pacs_urls`` (``--dicomweb-url``), an
  Endpoint address of any other origin is reported on the study, naming both hosts, and not
  contacted; the PACS credentials go to those origins only (and :class:`~fhirimg.http.HttpClient`
  binds them to its origin besides). PACS credentials without ``pacs_urls`` are refused
  (:class:`~fhirimg.errors.ConfigError`): server data would choose where they go.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx

from fhirimg.dicomweb.client import DicomwebClient, first_value
from fhirimg.dicomweb.store_plan import WADO_RS
from fhirimg.errors import (
    AuthError,
    ConfigError,
    FhirimgError,
    InputError,
    PushError,
    ServerUnreachableError,
    UntrustedUrlError,
)
from fhirimg.exitcodes import ExitCode
from fhirimg.http.auth import origin_of
from fhirimg.http.client import ClientCert, RetryPolicy
from fhirimg.http.fhir import FhirClient
from fhirimg.jsonio import JSONMapping
from fhirimg.push import discover
from fhirimg.push.files import load_bundle
from fhirimg.safetext import clean, redact_url

log = logging.getLogger(__name__)

__all__ = [
    "MAX_SEARCH_PAGES",
    "StudyCheck",
    "VerifyOptions",
    "VerifyReport",
    "check_study",
    "verify_bundles",
    "verify_server",
]


# FHIR search pages read at most by one verify_server search (100 000 ImagingStudies at the
# _count asked for): a server whose next links never end stops here, with an error.
MAX_SEARCH_PAGES = 1000
_COUNT = 100  # ImagingStudies asked for per search page


@dataclass(frozen=True)
class VerifyOptions:
    """How to reach the PACS (the Endpoint addresses come from the ImagingStudies), and where
    it may be.

    ``pacs_urls``: the PACS the user named; only Endpoint addresses of these origins are
    contacted, with ``auth``; an Endpoint elsewhere is reported on its study. Empty: every
    Endpoint address is contacted, and ``auth`` must be None (:class:`ConfigError` otherwise).
    ``max_pages``: FHIR search pages read at most (:data:`MAX_SEARCH_PAGES`).
    """

    auth: httpx.Auth | None = None
    timeout: float = 60.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    verify: bool | str | Path = True
    client_cert: ClientCert | None = None  # (certificate, key) PEM files for mutual TLS
    deadline: float | None = None  # seconds per request attempt (None: max(120, 4 x timeout))
    allow_insecure_http: bool = False  # credentials over http:// to a host that is not loopback
    study_uids: tuple[str, ...] = ()
    """Check only these studies (default: all)."""
    pacs_urls: tuple[str, ...] = ()
    max_pages: int = MAX_SEARCH_PAGES


@dataclass
class StudyCheck:
    """The comparison of one ImagingStudy with the PACS."""

    source: str  # bundle file name, or ImagingStudy/<id> on the FHIR server
    study_instance_uid: str
    endpoint: str
    instances: int = 0  # listed in the ImagingStudy
    in_pacs: int = 0
    missing_in_pacs: list[tuple[str, str]] = field(default_factory=list)  # (series, instance)
    missing_in_fhir: list[tuple[str, str]] = field(default_factory=list)
    sop_class_differs: list[tuple[str, str, str]] = field(default_factory=list)  # (uid, FHIR, PACS)
    error: str | None = None  # server text: control codes removed (safetext.clean)
    contacted: bool = True  # False: the Endpoint was not allowed or not usable (see error)
    unreachable: bool = False  # its PACS could not be reached: nothing was compared (exit 3)

    @property
    def ok(self) -> bool:
        return not (
            self.missing_in_pacs or self.missing_in_fhir or self.sop_class_differs or self.error
        )

    def compare(
        self, fhir: Mapping[tuple[str, str], str], pacs: Mapping[tuple[str, str], str]
    ) -> StudyCheck:
        """Fill in the differences between the instances the ImagingStudy lists and those the PACS
        lists, each keyed by (Series Instance UID, SOP Instance UID) with its SOP Class UID (an
        empty class is not compared); returns this check."""
        self.in_pacs = len(pacs)
        self.missing_in_pacs = sorted(set(fhir) - set(pacs))
        self.missing_in_fhir = sorted(set(pacs) - set(fhir))
        for key in sorted(set(fhir) & set(pacs)):
            if pacs[key] and fhir[key] and pacs[key] != fhir[key]:
                self.sop_class_differs.append((key[1], fhir[key], pacs[key]))
        return self

    def to_json(self) -> dict[str, Any]:
        """The check as JSON; every string came from a server or a file, so control codes are
        removed (:func:`~fhirimg.safetext.clean`): ``--json`` output is piped to terminals too."""
        c = clean
        return {
            "source": c(self.source),
            "studyInstanceUid": c(self.study_instance_uid),
            "endpoint": c(self.endpoint),
            "ok": self.ok,
            "instancesInFhir": self.instances,
            "instancesInPacs": self.in_pacs,
            "missingInPacs": [{"series": c(s), "instance": c(i)} for s, i in self.missing_in_pacs],
            "missingInFhir": [{"series": c(s), "instance": c(i)} for s, i in self.missing_in_fhir],
            "sopClassDiffers": [
                {"instance": c(i), "fhir": c(f), "pacs": c(p)} for i, f, p in self.sop_class_differs
            ],
            "error": None if self.error is None else c(self.error),
            "contacted": self.contacted,
            "unreachable": self.unreachable,
        }


@dataclass
class VerifyReport:
    """Every checked ImagingStudy, and those skipped with the reason."""

    studies: list[StudyCheck] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(s.ok for s in self.studies)

    @property
    def not_contacted(self) -> int:
        """Studies whose PACS was not contacted (an Endpoint elsewhere, an unusable address)."""
        return sum(1 for s in self.studies if not s.contacted)

    @property
    def unreachable(self) -> list[str]:
        """The PACS (redacted URLs) that could not be reached, in the order met."""
        return list(dict.fromkeys(s.endpoint for s in self.studies if s.unreachable))

    @property
    def exit_code(self) -> ExitCode:
        """3 when a PACS could not be reached (a verify that could not look is no answer), 4
        when no ImagingStudy was checked at all, 1 when some differ, else 0 (docs/cli.md).

        >>> VerifyReport().exit_code
        <ExitCode.NOTHING_DONE: 4>
        """
        if self.unreachable:
            return ExitCode.CANNOT_START
        if not self.studies:
            return ExitCode.NOTHING_DONE
        return ExitCode.OK if self.ok else ExitCode.PARTIAL

    def to_json(self) -> dict[str, Any]:
        return {
            "exitCode": int(self.exit_code),
            "unreachable": self.unreachable,
            "ok": self.ok,
            "checked": len(self.studies),
            "differing": sum(1 for s in self.studies if not s.ok),
            "notContacted": self.not_contacted,
            "studies": [s.to_json() for s in self.studies],
            "skipped": [{"source": clean(s), "reason": clean(r)} for s, r in self.skipped],
        }


# --------------------------------------------------------------------------- one study
def _objects(resource: JSONMapping, key: str) -> list[JSONMapping]:
    """The JSON objects in the array ``resource[key]``: server data of the wrong shape (an object
    where an array belongs, a string among objects) reads as absent, not as a crash.

    >>> _objects({"entry": [{"a": 1}, "x", 3]}, "entry"), _objects({"entry": {"a": 1}}, "entry")
    ([{'a': 1}], [])
    """
    value = resource.get(key) if isinstance(resource, Mapping) else None
    return [item for item in value if isinstance(item, Mapping)] if isinstance(value, list) else []


def _resource(entry: JSONMapping) -> JSONMapping | None:
    resource = entry.get("resource")
    return resource if isinstance(resource, Mapping) else None


def _study_uid(study: JSONMapping) -> str:
    for ident in _objects(study, "identifier"):
        if ident.get("system") == "urn:dicom:uid":
            return str(ident.get("value", "")).removeprefix("urn:oid:")
    return ""


def _fhir_instances(study: JSONMapping) -> dict[tuple[str, str], str]:
    """(series uid, instance uid) -> SOP Class UID, as the ImagingStudy lists them."""
    out: dict[tuple[str, str], str] = {}
    for series in _objects(study, "series"):
        for instance in _objects(series, "instance"):
            sop_class = instance.get("sopClass")
            code = str(sop_class.get("code", "")) if isinstance(sop_class, Mapping) else ""
            out[(str(series.get("uid")), str(instance.get("uid")))] = code.removeprefix("urn:oid:")
    return out


def check_study(client: DicomwebClient, study: JSONMapping, source: str) -> StudyCheck:
    """Compare one ImagingStudy with what QIDO-RS lists for its Study Instance UID."""
    uid = _study_uid(study)
    check = StudyCheck(source, uid, client.server)
    fhir = _fhir_instances(study)
    check.instances = len(fhir)
    pacs: dict[tuple[str, str], str] = {}
    try:
        # Page by page: only the three UIDs of each instance are kept, not its DICOM JSON.
        for item in client.iter_instances(uid) if uid else ():
            key = (
                str(first_value(item, "0020000E") or ""),
                str(first_value(item, "00080018") or ""),
            )
            pacs[key] = str(first_value(item, "00080016") or "")
    except AuthError as exc:
        raise _naming(exc, f"the PACS {client.server}") from None
    except ServerUnreachableError as exc:
        # No answer is not "differs": the study was not compared (exit 3, naming the PACS).
        check.error = clean(_naming(exc, f"the PACS {client.server}"))
        check.contacted, check.unreachable = False, True
        return check
    except PushError as exc:
        if exc.status == 404:
            pacs = {}  # some servers answer 404 for an unknown study
        else:
            check.error = clean(exc)
            return check
    return check.compare(fhir, pacs)


# --------------------------------------------------------------------------- many studies
class _NotFollowed(Exception):
    """An Endpoint that is not read or not contacted; the message says why, naming the hosts."""


def _naming(exc: PushError, who: str) -> PushError:
    """``exc`` with ``who`` (a server, by its redacted URL) in front of its message, unless the
    message names it already: a message about a server says which one."""
    if who.rsplit(" ", 1)[-1] in str(exc):
        return exc
    return type(exc)(f"{who}: {exc}", status=exc.status, outcome=exc.outcome)


def _host(url: str) -> str:
    """The origin of ``url`` as messages show it: ``https://pacs.example:443`` (two servers on
    one host differ by their port)."""
    return str(origin_of(url)) if origin_of(url).host else "?"


class _Clients:
    """One DICOMweb client per Endpoint address, for the addresses the user allows."""

    def __init__(self, options: VerifyOptions, transport: httpx.BaseTransport | None) -> None:
        if options.auth is not None and not options.pacs_urls:
            raise ConfigError(
                "PACS credentials need the PACS they are for (--dicomweb-url): the Endpoint "
                "addresses come from server data, which must not choose where credentials go"
            )
        self._options = options
        self._transport = transport
        self._allowed = {origin_of(url) for url in options.pacs_urls}
        self._clients: dict[str, DicomwebClient] = {}

    def get(self, address: str) -> DicomwebClient:
        """The client for ``address``; :class:`_NotFollowed` when it may not be contacted."""
        o = self._options
        if self._allowed and origin_of(address) not in self._allowed:
            named = ", ".join(redact_url(url) for url in o.pacs_urls)
            raise _NotFollowed(
                f"its Endpoint address {redact_url(address)} (origin {_host(address)}) is not "
                f"the PACS named by --dicomweb-url ({named}, origin "
                f"{', '.join(sorted({_host(u) for u in o.pacs_urls}))}): not contacted"
            )
        if address not in self._clients:
            try:
                self._clients[address] = DicomwebClient(
                    address,
                    auth=o.auth,
                    timeout=o.timeout,
                    retry=o.retry,
                    verify=o.verify,
                    client_cert=o.client_cert,
                    deadline=o.deadline,
                    allow_insecure_http=o.allow_insecure_http,
                    transport=self._transport,
                )
            except FhirimgError as exc:  # not an http(s) URL, credentials in it, http://
                raise _NotFollowed(
                    f"its Endpoint address {redact_url(address)} cannot be used: {clean(exc)}"
                ) from None
        return self._clients[address]

    def close(self) -> None:
        for client in self._clients.values():
            client.close()


def _wado_address(endpoint: JSONMapping | None) -> str | None:
    if not endpoint or endpoint.get("resourceType") != "Endpoint":
        return None
    types = endpoint.get("connectionType")
    codings = types if isinstance(types, list) else [types]
    for c in codings:
        if isinstance(c, Mapping) and (
            c.get("code") == WADO_RS
            or any(
                isinstance(x, Mapping) and x.get("code") == WADO_RS for x in _objects(c, "coding")
            )
        ):
            address = str(endpoint.get("address") or "").rstrip("/")
            return address or None
    return None


Resolve = Callable[[str], JSONMapping | None]
"""An Endpoint reference to the Endpoint (None: not found); may raise :class:`_NotFollowed`."""


def _contained(study: JSONMapping, reference: str) -> JSONMapping | None:
    """A ``#id`` reference to a resource contained in ``study`` (FHIR R4 references.html)."""
    for resource in _objects(study, "contained"):
        if f"#{resource.get('id')}" == reference:
            return resource
    return None


def _endpoint_address(study: JSONMapping, resolve: Resolve) -> str | None:
    """The address of the study's first ``dicom-wado-rs`` Endpoint; :class:`_NotFollowed` when
    none could be read and one was refused."""
    refused: _NotFollowed | None = None
    for ref in _objects(study, "endpoint"):
        reference = str(ref.get("reference") or "")
        if not reference:
            continue
        try:
            endpoint = (
                _contained(study, reference) if reference.startswith("#") else resolve(reference)
            )
        except _NotFollowed as exc:
            refused = refused or exc
            continue
        address = _wado_address(endpoint)
        if address:
            return address
    if refused is not None:
        raise refused
    return None


def _verify_all(
    items: Iterator[tuple[str, JSONMapping, Resolve]],
    options: VerifyOptions,
    transport: httpx.BaseTransport | None,
) -> VerifyReport:
    report = VerifyReport()
    clients = _Clients(options, transport)
    wanted = set(options.study_uids)
    unreachable: dict[str, str] = {}  # address -> why: asked once, not once per study
    try:
        for source, study, resolve in items:
            uid = _study_uid(study)
            if wanted and uid not in wanted:
                continue
            address: str | None = None
            try:
                address = _endpoint_address(study, resolve)
                if not address:
                    report.skipped.append((source, f"no {WADO_RS} Endpoint"))
                    continue
                client = clients.get(address)
            except _NotFollowed as exc:
                report.studies.append(
                    StudyCheck(
                        source,
                        uid,
                        redact_url(address) if address else "",
                        error=str(exc),
                        contacted=False,
                    )
                )
                continue
            if address in unreachable:
                report.studies.append(
                    StudyCheck(
                        source,
                        uid,
                        client.server,
                        error=unreachable[address],
                        contacted=False,
                        unreachable=True,
                    )
                )
                continue
            check = check_study(client, study, source)
            if check.unreachable:
                unreachable[address] = check.error or "not reachable"
            report.studies.append(check)
    finally:
        clients.close()
    return report


def verify_bundles(
    paths: Sequence[Path],
    options: VerifyOptions | None = None,
    *,
    transport: httpx.BaseTransport | None = None,
) -> VerifyReport:
    """Verify the ImagingStudies of the transaction Bundle files under ``paths``.

    Raises :class:`InputError` when a path does not exist. No bundle at all gives a report
    that checked nothing (:attr:`VerifyReport.exit_code` 4). A bundle push would refuse (an
    odd entry, no request) is still read for its ImagingStudies; a file that is not a JSON
    object at all is listed as skipped, with the reason.
    """
    files, _ = discover(list(paths))
    unreadable: list[tuple[str, str]] = []

    def items() -> Iterator[tuple[str, JSONMapping, Resolve]]:
        for f in files:
            try:
                _, bundle = load_bundle(f.path)
            except (OSError, ValueError, InputError):
                unreadable.append((f.path.name, f.problem or "not a readable JSON object"))
                continue
            resources = [(e.get("fullUrl"), _resource(e)) for e in _objects(bundle, "entry")]
            by_url = {str(url): r for url, r in resources if r is not None}
            for _, resource in resources:
                if resource is not None and resource.get("resourceType") == "ImagingStudy":
                    yield f.path.name, resource, by_url.get

    report = _verify_all(items(), options or VerifyOptions(), transport)
    report.skipped[:0] = unreadable
    return report


# Endpoint references the FHIR server is asked for: Type/id (FHIR R4 references.html), a version
# at most. Anything else (a query, "..", another server) is not a reference to read from it.
_RELATIVE_REFERENCE = re.compile(
    r"^[A-Z][A-Za-z]{0,63}/[A-Za-z0-9\-.]{1,64}(/_history/[A-Za-z0-9\-.]{1,64})?$"
)


def _next_link(page: JSONMapping) -> str | None:
    for link in _objects(page, "link"):
        if link.get("relation") == "next" and link.get("url"):
            return str(link["url"])
    return None


def _search_pages(fhir: FhirClient, first: str, max_pages: int) -> Iterator[JSONMapping]:
    """The pages of one search, ``first`` (relative to the base URL) and its ``next`` links.

    A ``next`` link outside the base URL (another scheme, host, port or base path), or one that
    repeats a page already read, or a page past ``max_pages`` stops the search with
    :class:`PushError` (:class:`~fhirimg.errors.UntrustedUrlError` for the first), naming the
    server: the pages read so far are no complete answer.
    """
    base = httpx.URL(fhir.base_url + "/")
    url = first
    read: set[str] = set()
    while True:
        # Percent-encoding aside, the same URL is the same page.
        read.add(unquote(str(base.join(url))))
        # The first URL is fhirimg's own; every later one the server's (checked again there).
        page = fhir.get_json(url) if len(read) == 1 else fhir.get_link_json(url)
        yield page
        link = _next_link(page)
        if link is None:
            return
        shown = redact_url(link.split("?", 1)[0])
        if not fhir.under_base(link):
            raise UntrustedUrlError(
                f"the FHIR server {fhir.server} (origin {_host(fhir.base_url)}) sent a search page "
                f"whose next link leaves it: {shown} (origin {_host(link)}); not followed "
                "(credentials stay with the server they are for)"
            )
        if unquote(str(base.join(link))) in read:
            raise PushError(
                f"the FHIR server {fhir.server} sent a search page whose next link repeats a "
                f"page already read ({shown}); stopped after {len(read)} page(s)"
            )
        if len(read) >= max_pages:
            raise PushError(
                f"the FHIR server {fhir.server} has more than {max_pages} search pages for "
                f"{first.split('?', 1)[0]} (the most read, --max-pages); stopped there"
            )
        url = link


def verify_server(
    fhir: FhirClient,
    options: VerifyOptions | None = None,
    *,
    transport: httpx.BaseTransport | None = None,
) -> VerifyReport:
    """Verify every ImagingStudy on the FHIR server (search pages followed), or those of
    ``options.study_uids``. Raises :class:`PushError` when the FHIR server cannot be searched
    (or its paging leaves it, repeats or does not end; see :func:`_search_pages`), and
    :class:`ConfigError` for PACS credentials without ``pacs_urls``."""
    opts = options or VerifyOptions()
    endpoints: dict[str, JSONMapping | None | _NotFollowed] = {}

    def read(reference: str) -> JSONMapping | None | _NotFollowed:
        if _RELATIVE_REFERENCE.match(reference):
            fetch: Callable[[], JSONMapping] = lambda: fhir.get_json(reference)  # noqa: E731
        elif reference.lower().startswith(("http://", "https://")):
            if not fhir.under_base(reference):
                return _NotFollowed(
                    f"its endpoint reference {redact_url(reference)} (origin {_host(reference)}) "
                    f"is not on the FHIR server {fhir.server} (origin {_host(fhir.base_url)}): "
                    "not fetched"
                )
            fetch = lambda: fhir.get_link_json(reference)  # noqa: E731
        else:
            return _NotFollowed(
                f"its endpoint reference {clean(reference)[:200]!r} is not one to read from the "
                f"FHIR server {fhir.server}: not fetched"
            )
        try:
            return fetch()
        except AuthError as exc:
            raise _naming(exc, f"the FHIR server {fhir.server}") from None
        except PushError as exc:
            log.warning("cannot read %s: %s", redact_url(reference.split("?")[0]), clean(exc))
            return None

    def resolve(reference: str) -> JSONMapping | None:
        if reference not in endpoints:
            endpoints[reference] = read(reference)
        found = endpoints[reference]
        if isinstance(found, _NotFollowed):
            raise found
        return found

    def searches() -> Iterator[str]:
        if opts.study_uids:
            for uid in opts.study_uids:
                yield f"ImagingStudy?identifier=urn:dicom:uid|urn:oid:{uid}&_count={_COUNT}"
        else:
            yield f"ImagingStudy?_count={_COUNT}"

    def items() -> Iterator[tuple[str, JSONMapping, Resolve]]:
        for first in searches():
            try:
                for page in _search_pages(fhir, first, opts.max_pages):
                    for entry in _objects(page, "entry"):
                        resource = _resource(entry)
                        if resource is not None and resource.get("resourceType") == "ImagingStudy":
                            yield f"ImagingStudy/{clean(resource.get('id'))}", resource, resolve
            except PushError as exc:
                raise _naming(exc, f"the FHIR server {fhir.server}") from None

    return _verify_all(items(), opts, transport)
