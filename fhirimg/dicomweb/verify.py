"""``verify``: do the ImagingStudies and the PACS they point at agree?

For each ImagingStudy (read from a FHIR server, or from bundle files) that references a
``dicom-wado-rs`` Endpoint, QIDO-RS lists the study's instances at that Endpoint's address, and the
two lists are compared: instances (and series) the ImagingStudy lists that the PACS lacks ("missing
in PACS"), and those the PACS holds that the ImagingStudy does not list ("missing in FHIR"), plus
instances whose SOP Class differs. ImagingStudies without a DICOMweb Endpoint are listed as
skipped, never silently passed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from fhirimg import jsonio
from fhirimg.dicomweb.client import DicomwebClient, first_value
from fhirimg.dicomweb.store_plan import WADO_RS
from fhirimg.errors import AuthError, InputError, PushError
from fhirimg.http.client import RetryPolicy
from fhirimg.http.fhir import FhirClient
from fhirimg.jsonio import JSONMapping
from fhirimg.push import discover

log = logging.getLogger(__name__)

__all__ = [
    "StudyCheck",
    "VerifyOptions",
    "VerifyReport",
    "check_study",
    "verify_bundles",
    "verify_server",
]


@dataclass(frozen=True)
class VerifyOptions:
    """How to reach the PACS (the Endpoint addresses come from the ImagingStudies)."""

    auth: httpx.Auth | None = None
    timeout: float = 60.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    verify: bool | str | Path = True
    study_uids: tuple[str, ...] = ()
    """Check only these studies (default: all)."""


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
    error: str | None = None

    @property
    def ok(self) -> bool:
        return not (
            self.missing_in_pacs or self.missing_in_fhir or self.sop_class_differs or self.error
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "studyInstanceUid": self.study_instance_uid,
            "endpoint": self.endpoint,
            "ok": self.ok,
            "instancesInFhir": self.instances,
            "instancesInPacs": self.in_pacs,
            "missingInPacs": [{"series": s, "instance": i} for s, i in self.missing_in_pacs],
            "missingInFhir": [{"series": s, "instance": i} for s, i in self.missing_in_fhir],
            "sopClassDiffers": [
                {"instance": i, "fhir": f, "pacs": p} for i, f, p in self.sop_class_differs
            ],
            "error": self.error,
        }


@dataclass
class VerifyReport:
    """Every checked ImagingStudy, and those skipped with the reason."""

    studies: list[StudyCheck] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(s.ok for s in self.studies)

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "checked": len(self.studies),
            "differing": sum(1 for s in self.studies if not s.ok),
            "studies": [s.to_json() for s in self.studies],
            "skipped": [{"source": s, "reason": r} for s, r in self.skipped],
        }


# --------------------------------------------------------------------------- one study
def _study_uid(study: JSONMapping) -> str:
    for ident in study.get("identifier") or []:
        if ident.get("system") == "urn:dicom:uid":
            return str(ident.get("value", "")).removeprefix("urn:oid:")
    return ""


def _fhir_instances(study: JSONMapping) -> dict[tuple[str, str], str]:
    """(series uid, instance uid) -> SOP Class UID, as the ImagingStudy lists them."""
    out: dict[tuple[str, str], str] = {}
    for series in study.get("series") or []:
        for instance in series.get("instance") or []:
            sop_class = str((instance.get("sopClass") or {}).get("code", ""))
            out[(str(series.get("uid")), str(instance.get("uid")))] = sop_class.removeprefix(
                "urn:oid:"
            )
    return out


def check_study(client: DicomwebClient, study: JSONMapping, source: str) -> StudyCheck:
    """Compare one ImagingStudy with what QIDO-RS lists for its Study Instance UID."""
    uid = _study_uid(study)
    check = StudyCheck(source, uid, client.base_url)
    fhir = _fhir_instances(study)
    check.instances = len(fhir)
    try:
        found = client.search_instances(uid) if uid else []
    except AuthError:
        raise
    except PushError as exc:
        if exc.status == 404:
            found = []  # some servers answer 404 for an unknown study
        else:
            check.error = str(exc)
            return check
    pacs: dict[tuple[str, str], str] = {}
    for item in found:
        key = (str(first_value(item, "0020000E") or ""), str(first_value(item, "00080018") or ""))
        pacs[key] = str(first_value(item, "00080016") or "")
    check.in_pacs = len(pacs)
    check.missing_in_pacs = sorted(set(fhir) - set(pacs))
    check.missing_in_fhir = sorted(set(pacs) - set(fhir))
    for key in sorted(set(fhir) & set(pacs)):
        if pacs[key] and fhir[key] and pacs[key] != fhir[key]:
            check.sop_class_differs.append((key[1], fhir[key], pacs[key]))
    return check


# --------------------------------------------------------------------------- many studies
class _Clients:
    """One DICOMweb client per Endpoint address."""

    def __init__(self, options: VerifyOptions, transport: httpx.BaseTransport | None) -> None:
        self._options = options
        self._transport = transport
        self._clients: dict[str, DicomwebClient] = {}

    def get(self, address: str) -> DicomwebClient:
        if address not in self._clients:
            o = self._options
            self._clients[address] = DicomwebClient(
                address,
                auth=o.auth,
                timeout=o.timeout,
                retry=o.retry,
                verify=o.verify,
                transport=self._transport,
            )
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
                isinstance(x, Mapping) and x.get("code") == WADO_RS for x in c.get("coding") or []
            )
        ):
            address = str(endpoint.get("address") or "").rstrip("/")
            return address or None
    return None


def _verify_all(
    items: Iterator[tuple[str, JSONMapping, Callable[[str], JSONMapping | None]]],
    options: VerifyOptions,
    transport: httpx.BaseTransport | None,
) -> VerifyReport:
    report = VerifyReport()
    clients = _Clients(options, transport)
    wanted = set(options.study_uids)
    try:
        for source, study, resolve in items:
            if wanted and _study_uid(study) not in wanted:
                continue
            refs = [str((r or {}).get("reference", "")) for r in study.get("endpoint") or []]
            addresses = [a for a in (_wado_address(resolve(r)) for r in refs if r) if a]
            if not addresses:
                report.skipped.append((source, f"no {WADO_RS} Endpoint"))
                continue
            report.studies.append(check_study(clients.get(addresses[0]), study, source))
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

    Raises :class:`InputError` when there is no bundle.
    """
    files, _ = discover(list(paths))
    if not files:
        raise InputError(f"no transaction Bundle found in {', '.join(map(str, paths))}")

    def items() -> Iterator[tuple[str, JSONMapping, Callable[[str], JSONMapping | None]]]:
        for f in files:
            bundle = jsonio.loads(f.path.read_bytes())
            by_url = {
                str(e.get("fullUrl")): e.get("resource") or {} for e in bundle.get("entry") or []
            }
            for entry in bundle.get("entry") or []:
                resource = entry.get("resource") or {}
                if resource.get("resourceType") == "ImagingStudy":
                    yield f.path.name, resource, by_url.get

    return _verify_all(items(), options or VerifyOptions(), transport)


def verify_server(
    fhir: FhirClient,
    options: VerifyOptions | None = None,
    *,
    transport: httpx.BaseTransport | None = None,
) -> VerifyReport:
    """Verify every ImagingStudy on the FHIR server (search pages followed), or those of
    ``options.study_uids``. Raises :class:`PushError` when the FHIR server cannot be searched."""
    opts = options or VerifyOptions()
    endpoints: dict[str, JSONMapping | None] = {}

    def resolve(reference: str) -> JSONMapping | None:
        if reference not in endpoints:
            try:
                endpoints[reference] = fhir.get_json(reference)
            except AuthError:
                raise
            except PushError as exc:
                log.warning("cannot read %s: %s", reference.split("?")[0], exc)
                endpoints[reference] = None
        return endpoints[reference]

    def searches() -> Iterator[str]:
        if opts.study_uids:
            for uid in opts.study_uids:
                yield f"ImagingStudy?identifier=urn:dicom:uid|urn:oid:{uid}&_count=100"
        else:
            yield "ImagingStudy?_count=100"

    def items() -> Iterator[tuple[str, JSONMapping, Callable[[str], JSONMapping | None]]]:
        for first in searches():
            url: str | None = first
            while url:
                page = fhir.get_json(url)
                for entry in page.get("entry") or []:
                    resource = entry.get("resource") or {}
                    if resource.get("resourceType") == "ImagingStudy":
                        yield f"ImagingStudy/{resource.get('id')}", resource, resolve
                links = page.get("link") or []
                url = next((ln.get("url") for ln in links if ln.get("relation") == "next"), None)

    return _verify_all(items(), opts, transport)
