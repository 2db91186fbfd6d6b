"""C-FIND answers to :class:`~fhirimg.model.InstanceRecord`, and conversion from a DIMSE PACS.

:func:`convert_from_pacs` is ``convert --from-pacs``: a C-ECHO first (a PACS that is down or
refuses fhirimg's AE title stops the run at once), then C-FIND at study level for the studies the
:class:`~fhirimg.dicomweb.StudyQuery` selects, then at instance level for each study's instances
with every attribute the mapping reads. A PACS that does not answer relational instance-level
queries (PS3.4 C.4.1.2.2: only hierarchical ones) gets the series level first, then the instance
level per series, with the series' attributes filling what its instance answers lack.

Each answer becomes the record :func:`fhirimg.scan.read_file` makes of the instance's file
(:func:`fhirimg.scan.record_from_dataset`: same values, same character set handling), so the
bundles equal those of a conversion of the same files. No pixel data is read unless
``--binary``/``--media`` ask for it; then :mod:`fhirimg.dimse.fetch` retrieves each study's
instances into temporary storage while it is written.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import replace
from typing import TYPE_CHECKING

from fhirimg.convert import ConvertOptions, ConvertReport, Progress, convert_records
from fhirimg.dicomweb.records import StudyQuery
from fhirimg.dimse.scu import DimseClient
from fhirimg.errors import ConfigError, DimseError
from fhirimg.model import FileProblem, FileStatus, InstanceRecord
from fhirimg.safetext import clean

if TYPE_CHECKING:
    from concurrent.futures import Executor

    from pydicom.dataset import Dataset

    from fhirimg.convert import StudyFetch

log = logging.getLogger(__name__)

# Return keys of the SERIES query (PS3.4 C.6.1.1.4); their values fill an instance's answer where
# the PACS left them out at the IMAGE level.
SERIES_KEYS = (
    "SpecificCharacterSet",
    "SeriesInstanceUID",
    "SeriesNumber",
    "Modality",
    "SeriesDescription",
    "BodyPartExamined",
    "Laterality",
    "SeriesDate",
    "SeriesTime",
    "PerformingPhysicianName",
    "OperatorsName",
    "Manufacturer",
    "ManufacturerModelName",
    "StationName",
)
# What the mapping reads (fhirimg.scan._record), asked for as return keys (PS3.4 C.4.1.1.3.2):
# the instance, study and patient attributes, and the series ones above.
INSTANCE_KEYS = (
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "InstanceNumber",
    "ImageType",
    "ContentLabel",
    "ConceptNameCodeSequence",
    "DocumentTitle",
    "Rows",
    "Columns",
    "BitsAllocated",
    "NumberOfFrames",
    "ContentDate",
    "ContentTime",
    "AcquisitionDateTime",
    "PatientID",
    "IssuerOfPatientID",
    "IssuerOfPatientIDQualifiersSequence",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "TimezoneOffsetFromUTC",
    "AccessionNumber",
    "IssuerOfAccessionNumberSequence",
    "StudyID",
    "StudyDescription",
    "ReferringPhysicianName",
    "NameOfPhysiciansReadingStudy",
    "ProcedureCodeSequence",
    "ReasonForTheRequestedProcedure",
    "ReasonForRequestedProcedureCodeSequence",
    "InstitutionalDepartmentName",
    "ModalitiesInStudy",
    "AvailableTransferSyntaxUID",
) + SERIES_KEYS
_UNANSWERED = "did not answer instance-level C-FIND"


def _dataset(level: str, keys: tuple[str, ...], **matching: str) -> Dataset:
    """A C-FIND identifier: ``level``, every key as a universal (empty) return key, and the
    matching keys given (PS3.4 C.2.2.2)."""
    from pydicom.datadict import dictionary_VR, tag_for_keyword
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword in keys:
        tag = tag_for_keyword(keyword)
        if tag is None:
            continue
        vr = dictionary_VR(tag)
        ds.add_new(tag, vr, [] if vr == "SQ" else None)
    for keyword, value in matching.items():
        setattr(ds, keyword, value)
    return ds


def _match_key(name: str) -> str:
    """A ``--qido`` key as a DICOM keyword: a keyword as is, or a tag as 8 hex digits.

    >>> _match_key("StudyDescription"), _match_key("00081030")
    ('StudyDescription', 'StudyDescription')
    """
    from pydicom.datadict import keyword_for_tag, tag_for_keyword

    if tag_for_keyword(name) is not None:
        return name
    try:
        keyword = keyword_for_tag(int(name, 16)) if len(name) == 8 else ""
    except ValueError:
        keyword = ""
    if not keyword:
        raise ConfigError(f"not a DICOM keyword or tag for C-FIND matching: {name!r}")
    return str(keyword)


def study_identifier(query: StudyQuery, study_uid: str | None = None) -> Dataset:
    """The study-level C-FIND identifier of ``query`` (the QIDO-RS keys of
    :meth:`StudyQuery.params` are DICOM keywords, so they carry over)."""
    matching = {_match_key(k): v for k, v in query.params().items()}
    if study_uid is not None:
        matching["StudyInstanceUID"] = study_uid
    return _dataset("STUDY", ("StudyInstanceUID",), **matching)


def find_studies(client: DimseClient, query: StudyQuery) -> list[str]:
    """The Study Instance UIDs matching ``query`` (C-FIND, study level), sorted, no duplicates."""
    searches = (
        [study_identifier(query, uid) for uid in query.study_uids]
        if query.study_uids
        else [study_identifier(query)]
    )
    found: set[str] = set()
    for identifier in searches:
        for answer in client.find(identifier):
            uid = str(answer.get("StudyInstanceUID", "") or "").strip("\0 ")
            if uid:
                found.add(uid)
    return sorted(found)


def instance_path(client: DimseClient, study: str, series: str = "", sop: str = "") -> str:
    """How report.json names an instance of the PACS (or the study, when the UIDs are missing)."""
    path = f"{client.address.url()}/studies/{study}"
    if series and sop:
        path += f"/series/{series}/instances/{sop}"
    return path


Batch = list[InstanceRecord | FileProblem]


def _record(client: DimseClient, study: str, answer: Dataset) -> InstanceRecord | FileProblem:
    from fhirimg.scan import record_from_dataset

    uids = [str(answer.get(k, "") or "") for k in ("SeriesInstanceUID", "SOPInstanceUID")]
    syntax = answer.get("AvailableTransferSyntaxUID")
    syntax_text = str(syntax[0] if isinstance(syntax, list | tuple) and syntax else syntax or "")
    return record_from_dataset(
        answer, instance_path(client, study, *uids), transfer_syntax_uid=syntax_text or None
    )


def _instances(client: DimseClient, study: str) -> list[Dataset]:
    """A study's instance-level answers: relational first, then series by series."""
    try:
        answers = list(
            client.find(
                _dataset("IMAGE", INSTANCE_KEYS, StudyInstanceUID=study, SeriesInstanceUID="")
            )
        )
        if answers:
            return answers
    except DimseError as exc:
        log.info("%s: relational instance query refused (%s); asking series by series", study, exc)
    out: list[Dataset] = []
    series = list(client.find(_dataset("SERIES", SERIES_KEYS, StudyInstanceUID=study)))
    for one in series:
        uid = str(one.get("SeriesInstanceUID", "") or "")
        if not uid:
            continue
        for answer in client.find(
            _dataset("IMAGE", INSTANCE_KEYS, StudyInstanceUID=study, SeriesInstanceUID=uid)
        ):
            for elem in one:  # the series' attributes where the instance answer has none
                if elem.keyword in SERIES_KEYS and not answer.get(elem.keyword):
                    answer[elem.tag] = elem
            out.append(answer)
    return out


def study_records(client: DimseClient, study: str) -> Batch:
    """The records of one study, from C-FIND; a study that cannot be queried becomes one FAILED
    problem named by the PACS and the study."""
    try:
        answers = _instances(client, study)
    except DimseError as exc:
        return [FileProblem(instance_path(client, study), FileStatus.FAILED, clean(exc))]
    if not answers:
        return [
            FileProblem(
                instance_path(client, study),
                FileStatus.FAILED,
                f"{client.server} {_UNANSWERED} for this study",
            )
        ]
    return [_record(client, study, answer) for answer in answers]


def convert_from_pacs(
    client: DimseClient,
    query: StudyQuery,
    options: ConvertOptions | None = None,
    progress: Progress | None = None,
    *,
    fetch: StudyFetch | None = None,
) -> ConvertReport:
    """Convert the studies a DIMSE PACS holds (those matching ``query``) to transaction Bundles,
    as :func:`fhirimg.convert.convert` converts their files.

    Raises :class:`~fhirimg.errors.ServerUnreachableError` or :class:`DimseError` when the PACS
    cannot be reached or refuses fhirimg (C-ECHO, study query); a study whose instances cannot be
    queried is reported failed in ``report.json``. ``fetch`` (``--binary``/``--media``) brings
    each study's instance files while it is written. ``progress`` hears ``("read", 1, studies)``
    per study queried, then ``("write", 1, studies)`` per bundle.
    """
    opts = options or ConvertOptions()
    opts.check()
    client.echo()
    studies = find_studies(client, query)
    log.info("%d studies to convert from %s", len(studies), client.server)

    def source(_: Executor | None) -> Iterator[Batch]:
        for study in studies:
            batch = study_records(client, study)
            if progress:
                progress("read", 1, len(studies))
            yield batch

    return convert_records(source, replace(opts), progress, fetch=fetch)


__all__ = [
    "INSTANCE_KEYS",
    "convert_from_pacs",
    "find_studies",
    "instance_path",
    "study_identifier",
    "study_records",
]
