"""Bulk NDJSON for FHIR ``$import``: the study bundles of a run as one file set per resource type.

FHIR Bulk Data import (HAPI FHIR, Azure Health Data Services, AWS HealthLake, Google Cloud
Healthcare) takes newline-delimited JSON, one resource per line, grouped by resource type, with no
transaction around them. So every resource needs what a transaction gave it:

- an ``id``: the UUIDv5 of its entry's fullUrl (:mod:`fhirimg.ids`), which is the id a ``PUT
  Type/<id>`` in the bundle already used (Patient without identifier system, Binary), so a
  resource has the same id in both formats;
- literal references ``Type/<id>``: a ``urn:uuid:`` fullUrl, and in the part files of a split
  study a conditional reference (``Patient?identifier=...``, ``ImagingStudy?identifier=...``),
  become the ``Type/<id>`` of the resource they name. A reference left ``urn:uuid:`` or
  conditional has nothing to resolve against in ``$import``, so it is refused here, never written.

The files are built from the bundles the run wrote (:func:`write_ndjson`), study by study in Study
Instance UID order, so the same bundles give byte-identical files whichever engine wrote them.
Patients (several studies of one patient) and Endpoints (one PACS for every study) are written
once, the first time their id is met; the other types are one per study or instance by
construction. Memory follows one bundle file and the set of Patient and Endpoint ids.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from fhirimg import jsonio
from fhirimg.errors import InputError
from fhirimg.jsonio import JSON

NDJSON_DIR = "ndjson"
"""The folder in the output folder that holds the NDJSON file set."""

_SHARED = frozenset({"Patient", "Endpoint"})  # met again in other studies: written once
_URN = "urn:uuid:"


def file_name(resource_type: str) -> str:
    """The NDJSON file of one resource type (``Patient.ndjson``, ...).

    >>> file_name("ImagingStudy")
    'ImagingStudy.ndjson'
    """
    return f"{resource_type}.ndjson"


def _conditional(request: JSON) -> str | None:
    """The conditional URL that finds what an entry creates (as the part files refer to it)."""
    url = str(request.get("url", ""))
    if request.get("method") == "POST" and request.get("ifNoneExist"):
        return f"{url}?{request['ifNoneExist']}"
    if request.get("method") == "PUT":
        return url
    return None


def _id_of(entry: JSON) -> str:
    """The resource's own id, or the UUID of its ``urn:uuid:`` fullUrl (the same UUIDv5)."""
    resource = entry["resource"]
    if "id" in resource:
        return str(resource["id"])
    full_url = str(entry.get("fullUrl", ""))
    if not full_url.startswith(_URN):
        raise InputError(f"a {resource['resourceType']} entry has no id and no urn:uuid fullUrl")
    return full_url.removeprefix(_URN)


def study_references(head: JSON) -> dict[str, str]:
    """Every way the bundles of one study name a resource of its first bundle (fullUrl, and the
    conditional URL of its request), mapped to the literal ``Type/<id>``."""
    refs: dict[str, str] = {}
    for item in head.get("entry", ()):
        literal = f"{item['resource']['resourceType']}/{_id_of(item)}"
        refs[str(item["fullUrl"])] = literal
        conditional = _conditional(item.get("request", {}))
        if conditional:
            refs[conditional] = literal
    return refs


def _literal(value: Any, refs: dict[str, str], where: str) -> Any:
    """``value`` with every ``reference`` (and an attachment ``url`` naming an entry) made
    literal; raises :class:`InputError` for one that cannot be."""
    if isinstance(value, dict):
        out: JSON = {}
        for key, item in value.items():
            if key in ("reference", "url") and isinstance(item, str) and item in refs:
                out[key] = refs[item]
            elif key in ("reference", "url") and isinstance(item, str) and _unresolved(key, item):
                raise InputError(f"{where}: reference {item!r} names no resource of its study")
            else:
                out[key] = _literal(item, refs, where)
        return out
    if isinstance(value, list):
        return [_literal(item, refs, where) for item in value]
    return value


def _unresolved(key: str, value: str) -> bool:
    """A reference ``$import`` cannot resolve: a ``urn:uuid:``, or a conditional (search)
    reference; an attachment ``url`` only when it names a bundle entry (``urn:uuid:``)."""
    return value.startswith(_URN) or (key == "reference" and "?" in value)


def resources(bundle: JSON, refs: dict[str, str]) -> Iterator[JSON]:
    """The resources of one bundle file, each with its id first after ``resourceType`` and its
    references literal (``refs``: :func:`study_references` of the study's first bundle, with
    this bundle's own entries added)."""
    refs = {**refs, **study_references(bundle)}
    for item in bundle.get("entry", ()):
        res = item["resource"]
        rtype = str(res["resourceType"])
        body = {k: v for k, v in res.items() if k not in ("resourceType", "id")}
        resource = {"resourceType": rtype, "id": _id_of(item), **body}
        yield _literal(resource, refs, f"{rtype}/{resource['id']}")


@dataclass
class NdjsonSet:
    """Writes the NDJSON file set, one file per resource type, each atomically (a ``.tmp`` file
    renamed at :meth:`close`), owner-only unless ``modes`` says otherwise."""

    folder: Path
    modes: jsonio.Modes = jsonio.PRIVATE
    counts: dict[str, int] = field(default_factory=dict)
    _seen: set[str] = field(default_factory=set)
    _files: dict[str, tuple[BinaryIO, Path]] = field(default_factory=dict)

    def add(self, resource: JSON) -> None:
        rtype = str(resource["resourceType"])
        if rtype in _SHARED:
            key = f"{rtype}/{resource['id']}"
            if key in self._seen:
                return
            self._seen.add(key)
        if rtype not in self._files:
            self._files[rtype] = jsonio.open_temp(self.folder / file_name(rtype), self.modes)
        self._files[rtype][0].write(orjson.dumps(resource, option=orjson.OPT_APPEND_NEWLINE))
        self.counts[rtype] = self.counts.get(rtype, 0) + 1

    def close(self, ok: bool = True) -> None:
        """Rename the files into place (``ok``), or drop them; NDJSON files of types this run
        did not write (from an earlier run) are removed, so the folder is this run's set."""
        for rtype, (fh, tmp) in sorted(self._files.items()):
            fh.close()
            if ok:
                tmp.replace(self.folder / file_name(rtype))
            else:
                tmp.unlink(missing_ok=True)
        if ok:
            for old in self.folder.glob("*.ndjson"):
                if old.name.removesuffix(".ndjson") not in self._files:
                    old.unlink()
        self._files.clear()


@dataclass(frozen=True)
class StudyFiles:
    """The bundle files of one written study, in push order (first bundle, then its parts)."""

    study_instance_uid: str
    names: tuple[str, ...]


def write_ndjson(
    bundle_dir: Path, out_dir: Path, studies: Iterable[StudyFiles], modes: jsonio.Modes
) -> dict[str, int]:
    """Write ``<out_dir>/ndjson/<Type>.ndjson`` from the bundles of ``studies`` (in
    ``bundle_dir``), studies in Study Instance UID order; returns the lines per type.

    Raises :class:`InputError` when a bundle holds a reference that cannot be made literal (no
    file is replaced then).
    """
    folder = out_dir / NDJSON_DIR
    if not folder.is_dir():
        jsonio.make_folder(folder, modes)
    out = NdjsonSet(folder, modes)
    ok = False
    try:
        for study in sorted(studies, key=lambda s: s.study_instance_uid):
            refs: dict[str, str] = {}
            for number, name in enumerate(study.names):
                bundle = jsonio.loads((bundle_dir / name).read_bytes())
                if number == 0:
                    refs = study_references(bundle)
                for resource in resources(bundle, refs):
                    out.add(resource)
        ok = True
    finally:
        out.close(ok)
    return dict(sorted(out.counts.items()))
