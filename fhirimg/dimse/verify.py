"""``verify --pacs``: do the ImagingStudies of bundle files and a DIMSE PACS agree?

The DICOMweb ``verify`` (:mod:`fhirimg.dicomweb.verify`) follows each ImagingStudy's
``dicom-wado-rs`` Endpoint. A classic PACS has no such Endpoint, so here the user names it
(``AET@HOST:PORT``) and every ImagingStudy is compared with what C-FIND lists for its Study
Instance UID: instance level (SeriesInstanceUID, SOPInstanceUID, SOPClassUID only), series by
series when the PACS answers only hierarchical queries. The report is the same
:class:`~fhirimg.dicomweb.verify.VerifyReport`: missing in PACS, missing in FHIR, SOP Class
differs.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from fhirimg import jsonio
from fhirimg.dicomweb.verify import StudyCheck, VerifyReport, _fhir_instances, _study_uid
from fhirimg.dimse.records import _dataset
from fhirimg.dimse.scu import DimseClient
from fhirimg.errors import DimseError, InputError
from fhirimg.jsonio import JSONMapping
from fhirimg.push import discover
from fhirimg.safetext import clean

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

_KEYS = ("SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")


def _listed(client: DimseClient, study: str) -> Iterator[Dataset]:
    try:
        answers = list(client.find(_dataset("IMAGE", _KEYS, StudyInstanceUID=study)))
    except DimseError:
        answers = []
    if answers:
        yield from answers
        return
    for series in client.find(_dataset("SERIES", ("SeriesInstanceUID",), StudyInstanceUID=study)):
        uid = str(series.get("SeriesInstanceUID", "") or "")
        if uid:
            yield from client.find(
                _dataset("IMAGE", _KEYS, StudyInstanceUID=study, SeriesInstanceUID=uid)
            )


def check_study_dimse(client: DimseClient, study: JSONMapping, source: str) -> StudyCheck:
    """Compare one ImagingStudy with what C-FIND lists for its Study Instance UID."""
    uid = _study_uid(study)
    check = StudyCheck(source, uid, client.server)
    fhir = _fhir_instances(study)
    check.instances = len(fhir)
    pacs: dict[tuple[str, str], str] = {}
    try:
        for answer in _listed(client, uid) if uid else ():
            key = tuple(str(answer.get(k, "") or "").strip("\0 ") for k in _KEYS[:2])
            pacs[(key[0], key[1])] = str(answer.get("SOPClassUID", "") or "").strip("\0 ")
    except DimseError as exc:
        check.error = clean(exc)
        return check
    return check.compare(fhir, pacs)


def verify_bundles_dimse(
    paths: Sequence[Path], client: DimseClient, study_uids: Sequence[str] = ()
) -> VerifyReport:
    """Verify the ImagingStudies of the bundle files under ``paths`` against the PACS of
    ``client`` (C-ECHO first: a PACS that cannot be used raises, naming it).

    Raises :class:`InputError` when there is no bundle.
    """
    files, _ = discover(list(paths))
    if not files:
        raise InputError(f"no transaction Bundle found in {', '.join(map(str, paths))}")
    client.echo()
    wanted = set(study_uids)
    report = VerifyReport()
    for f in files:
        bundle = jsonio.loads(f.path.read_bytes())
        entries = bundle.get("entry") if isinstance(bundle, dict) else None
        for entry in entries if isinstance(entries, list) else []:
            resource = entry.get("resource") if isinstance(entry, dict) else None
            if not isinstance(resource, dict) or resource.get("resourceType") != "ImagingStudy":
                continue
            if wanted and _study_uid(resource) not in wanted:
                continue
            report.studies.append(check_study_dimse(client, resource, f.path.name))
    return report


__all__ = ["check_study_dimse", "verify_bundles_dimse"]
