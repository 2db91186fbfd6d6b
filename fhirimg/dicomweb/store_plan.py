"""Planning ``push --dicomweb``: which files hold the instances of each bundle's study, and
whether its ImagingStudy points at the PACS.

``report.json`` in the convert output folder lists every input file with its status and, for
converted ones, its bundle; those are the instances of that bundle's study. A path in it is used as
written (absolute, or relative to the current folder, as ``convert`` was given it). When a listed
file is gone or changed, the instance's Binary beside the bundle (``<stem>.binaries/<id>.dcm``,
written by ``convert`` with Binaries) is used instead: the same bytes. Each file's header is read
(``fhirimg.scan.read_file``) to match it to the ImagingStudy's instance by SOP Instance UID; files
converted from a PACS (paths that are URLs) are not sent again.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fhirimg import jsonio
from fhirimg.convert import REPORT_NAME
from fhirimg.dicomweb.store_results import StudyStore
from fhirimg.errors import InputError
from fhirimg.model import InstanceRecord
from fhirimg.push import BINARY_EXTENSION_URL
from fhirimg.push.files import beside_file
from fhirimg.push.merge import imaging_study_problem

log = logging.getLogger(__name__)

__all__ = ["WADO_RS", "SourceFile", "StudyPlan", "endpoint_addresses", "plan_study"]

# Endpoint.connectionType code of a DICOMweb (WADO-RS) service (HL7 endpoint-connection-type).
WADO_RS = "dicom-wado-rs"


def endpoint_addresses(bundle: Mapping[str, Any]) -> set[str]:
    """The addresses of the ``dicom-wado-rs`` Endpoints the bundle's ImagingStudy references.

    >>> endpoint_addresses({"entry": [
    ...   {"fullUrl": "urn:uuid:e", "resource": {"resourceType": "Endpoint",
    ...    "connectionType": {"code": "dicom-wado-rs"}, "address": "http://pacs/dw"}},
    ...   {"resource": {"resourceType": "ImagingStudy", "endpoint": [{"reference": "urn:uuid:e"}]}}]})
    {'http://pacs/dw'}
    """
    endpoints: dict[str, str] = {}
    for entry in bundle.get("entry") or []:
        resource = entry.get("resource") or {}
        if resource.get("resourceType") != "Endpoint":
            continue
        types = resource.get("connectionType")
        codings = types if isinstance(types, list) else [types]  # R5: a list of Codings
        codes: list[object] = []  # a list: a code of the wrong JSON type is not hashable
        for c in codings:
            if isinstance(c, Mapping):
                inner = c.get("coding")
                codes.append(c.get("code"))
                codes += [x.get("code") for x in _list(inner) if isinstance(x, Mapping)]
        if WADO_RS in codes and entry.get("fullUrl"):
            endpoints[str(entry["fullUrl"])] = str(resource.get("address", "")).rstrip("/")
    found: set[str] = set()
    for entry in bundle.get("entry") or []:
        resource = entry.get("resource") or {}
        if resource.get("resourceType") != "ImagingStudy":
            continue
        refs = _list(resource.get("endpoint"))
        for series in _list(resource.get("series")):
            if isinstance(series, Mapping):
                refs += _list(series.get("endpoint"))
        for ref in refs:
            if not isinstance(ref, Mapping):
                continue
            address = endpoints.get(str(ref.get("reference", "")))
            if address:
                found.add(address)
    return found


def _list(value: object) -> list[Any]:
    """``value`` when it is a JSON array, else none (bundle data of the wrong shape)."""
    return list(value) if isinstance(value, list) else []


@dataclass(frozen=True)
class SourceFile:
    """The local file that holds one instance of the study, as planned (read at store time)."""

    sop_instance_uid: str
    path: Path
    size: int


@dataclass
class StudyPlan:
    """One bundle's study: its :class:`StudyStore` (filled in as it is stored) and its files."""

    result: StudyStore
    sources: list[SourceFile]


def _study_of(bundle: Mapping[str, Any]) -> Mapping[str, Any]:
    for entry in bundle.get("entry") or []:
        resource = entry.get("resource") or {}
        if resource.get("resourceType") == "ImagingStudy":
            return resource
    raise InputError("no ImagingStudy in the bundle")


def _study_uid(study: Mapping[str, Any]) -> str:
    for ident in study.get("identifier") or []:
        if ident.get("system") == "urn:dicom:uid":
            return str(ident.get("value", "")).removeprefix("urn:oid:")
    return ""


def _instances(study: Mapping[str, Any]) -> dict[str, str | None]:
    """SOP Instance UID -> the Binary id its instance-binary extension names (or None)."""
    out: dict[str, str | None] = {}
    for series in study.get("series") or []:
        for instance in series.get("instance") or []:
            binary = None
            for ext in instance.get("extension") or []:
                value = ext.get("valueReference")
                ref = str(value.get("reference", "")) if isinstance(value, Mapping) else ""
                if ext.get("url") == BINARY_EXTENSION_URL and ref.startswith("Binary/"):
                    binary = ref.removeprefix("Binary/")
            out[str(instance.get("uid"))] = binary
    return out


def _report_files(folder: Path, cache: dict[Path, dict[str, list[str]]]) -> dict[str, list[str]]:
    """``report.json`` of a convert output folder: bundle name -> its converted files."""
    if folder not in cache:
        by_bundle: dict[str, list[str]] = {}
        report = folder / REPORT_NAME
        if report.is_file():
            try:
                doc = jsonio.loads(report.read_bytes())
            except ValueError:
                log.warning("%s is not JSON; using the Binaries beside the bundles", report)
                doc = {}
            for item in doc.get("files") or [] if isinstance(doc, dict) else []:
                if item.get("status") == "converted" and item.get("bundle"):
                    by_bundle.setdefault(str(item["bundle"]), []).append(str(item["path"]))
        cache[folder] = by_bundle
    return cache[folder]


def plan_study(
    path: Path, bundle: Mapping[str, Any], dicomweb_url: str, cache: dict[Path, Any]
) -> StudyPlan:
    """The files holding the instances of the bundle at ``path``, in ImagingStudy order; an
    instance with none is already recorded as failed. ``cache`` keeps each folder's
    ``report.json`` read once."""
    study = _study_of(bundle)
    problem = imaging_study_problem(study)  # the walks below rely on its shape
    if problem is not None:
        raise InputError(f"its ImagingStudy cannot be read: {problem}")
    wanted = _instances(study)
    result = StudyStore(
        bundle=path.name,
        path=path,
        study_instance_uid=_study_uid(study),
        instances=len(wanted),
        has_endpoint=dicomweb_url in endpoint_addresses(bundle),
    )
    from fhirimg.scan import read_file  # pydicom: not for commands that only import this module

    sources: dict[str, SourceFile] = {}
    for name in _report_files(path.parent, cache).get(path.name, []):
        if name.startswith(("http://", "https://")):
            continue  # converted from a PACS: the instance is not a local file
        record = read_file(name)
        if isinstance(record, InstanceRecord) and record.sop_instance_uid in wanted:
            sources.setdefault(
                record.sop_instance_uid,
                SourceFile(record.sop_instance_uid, Path(name), record.size),
            )
    binaries = path.with_name(f"{path.stem}.binaries")
    for sop, binary_id in wanted.items():
        if sop in sources:
            continue
        try:  # an id from the bundle: checked before it names a file (no ../, no links out)
            candidate = beside_file(binaries, binary_id) if binary_id else None
        except InputError as exc:
            result.failed.append((sop, str(exc)))
            continue
        if candidate is not None and candidate.is_file():
            sources[sop] = SourceFile(sop, candidate, candidate.stat().st_size)
        else:
            result.failed.append((sop, "source file not found (report.json paths, Binaries)"))
    ordered = [sources[sop] for sop in wanted if sop in sources]
    return StudyPlan(result, ordered)
