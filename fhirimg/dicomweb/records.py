"""DICOM JSON (PS3.18 Annex F) to :class:`~fhirimg.model.InstanceRecord`, and conversion from a PACS.

:func:`record_from_json` is the DICOM JSON twin of :func:`fhirimg.scan.read_file`: the same
attributes, read the same way, so that a study converted from a DICOMweb server's WADO-RS metadata
gives the same ImagingStudy as the same study converted from its files. Where the two encodings
differ it normalises to what ``read_file`` gives:

- PN is an object ``{"Alphabetic", "Ideographic", "Phonetic"}``: the groups are joined with ``=``
  (trailing empty groups dropped), as in the PN text of a file;
- IS and DS come as JSON numbers: written back as decimal text (``1``, not ``1.0``);
- multi-valued text is joined with ``\\`` like the raw value of a file.

:func:`convert_from_dicomweb` finds studies with QIDO-RS, reads their metadata with WADO-RS (the
instances themselves only for ``--binary``/``--media``) and feeds the records to :func:`fhirimg.convert.convert_records`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

from fhirimg import values
from fhirimg.convert import ConvertOptions, ConvertReport, Progress, convert_records
from fhirimg.dicomweb.client import DicomwebClient, first_value
from fhirimg.errors import ConfigError, PushError
from fhirimg.jsonio import JSONMapping
from fhirimg.model import Code, FileProblem, FileStatus, InstanceRecord, Issuer, SrContent
from fhirimg.safetext import clean

log = logging.getLogger(__name__)

__all__ = ["StudyQuery", "convert_from_dicomweb", "find_studies", "record_from_json"]


# --------------------------------------------------------------------------- values
def _element(ds: JSONMapping, tag: str) -> JSONMapping | None:
    element = ds.get(tag)
    if element is None:
        element = ds.get(tag.lower())
    return element if isinstance(element, Mapping) else None


def _person_name(value: Any) -> str:
    """A PN value object as PN text: ``Alphabetic=Ideographic=Phonetic``, trailing empties dropped.

    >>> _person_name({"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎"})
    'Yamada^Tarou=山田^太郎'
    >>> _person_name({"Alphabetic": "Doe^John"})
    'Doe^John'
    """
    if not isinstance(value, Mapping):
        return str(value)
    groups = [str(value.get(k) or "") for k in ("Alphabetic", "Ideographic", "Phonetic")]
    while groups and not groups[-1]:
        groups.pop()
    return "=".join(groups)


def _as_text(value: Any) -> str:
    """One DICOM JSON value as the text a file would hold.

    >>> _as_text(3), _as_text(2.5), _as_text(4.0), _as_text("A ")
    ('3', '2.5', '4', 'A ')
    """
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, Mapping):
        return _person_name(value)
    return str(value)


def _strings(ds: JSONMapping, tag: str) -> list[str]:
    element = _element(ds, tag)
    values = element.get("Value") if element else None
    if not isinstance(values, list):
        return []
    return [_as_text(v) for v in values if v is not None]


def _text(ds: JSONMapping, tag: str) -> str | None:
    """An element's value as stripped text (values joined by ``\\``), None when absent or empty."""
    text = "\\".join(_strings(ds, tag)).strip(" \0")
    return text or None


def _multi(ds: JSONMapping, tag: str) -> tuple[str, ...]:
    return tuple(s for s in (v.strip(" \0") for v in _strings(ds, tag)) if s)


def _first_item(ds: JSONMapping, tag: str) -> JSONMapping | None:
    item = first_value(ds, tag)
    return item if isinstance(item, Mapping) else None


def _issuer(item: JSONMapping | None) -> Issuer | None:
    """An HL7 v2 HD from a sequence item: (0040,0031), (0040,0032), (0040,0033)."""
    if item is None:
        return None
    issuer = Issuer(_text(item, "00400031"), _text(item, "00400032"), _text(item, "00400033"))
    return issuer if (issuer.local or issuer.universal) else None


def _codes(ds: JSONMapping, tag: str) -> tuple[Code, ...]:
    element = _element(ds, tag)
    items = element.get("Value") if element else None
    out = []
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, Mapping):
            continue
        code = Code(_text(item, "00080100"), _text(item, "00080102"), _text(item, "00080104"))
        if code.value or code.meaning:
            out.append(code)
    return tuple(out)


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


_REQUIRED = (
    ("0020000D", "Study Instance UID (0020,000D)"),
    ("0020000E", "Series Instance UID (0020,000E)"),
    ("00080018", "SOP Instance UID (0008,0018)"),
    ("00080016", "SOP Class UID (0008,0016)"),
)


def record_from_json(
    dataset: JSONMapping, path: str, size: int = 0
) -> InstanceRecord | FileProblem:
    """One instance's DICOM JSON (WADO-RS metadata) as the record :func:`fhirimg.scan.read_file`
    would make of its file. ``path`` names the source (the instance's WADO-RS URL); ``size`` is the
    file size when known (DICOM JSON does not carry it).

    >>> rec = record_from_json({
    ...     "0020000D": {"vr": "UI", "Value": ["1.2"]}, "0020000E": {"vr": "UI", "Value": ["1.2.3"]},
    ...     "00080018": {"vr": "UI", "Value": ["1.2.3.4"]},
    ...     "00080016": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.7"]},
    ...     "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane"}]},
    ...     "00200013": {"vr": "IS", "Value": [7]}}, "http://pacs/x")
    >>> rec.patient_name, rec.instance_number
    ('Doe^Jane', '7')
    """
    uids = {tag: _text(dataset, tag) for tag, _ in _REQUIRED}
    missing = [name for tag, name in _REQUIRED if not uids[tag]]
    if missing:
        return FileProblem(path, FileStatus.FAILED, "metadata misses " + ", ".join(missing))
    rows = _text(dataset, "00280010")
    columns = _text(dataset, "00280011")
    # (0002,0010) is rarely in WADO-RS metadata; (0008,3002) Available Transfer Syntax UID may be.
    transfer_syntax = _text(dataset, "00020010") or (_multi(dataset, "00083002") or (None,))[0]
    return InstanceRecord(
        path=path,
        size=size,
        sop_class_uid=str(uids["00080016"]),
        sop_instance_uid=str(uids["00080018"]),
        study_instance_uid=str(uids["0020000D"]),
        series_instance_uid=str(uids["0020000E"]),
        transfer_syntax_uid=transfer_syntax,
        instance_number=_text(dataset, "00200013"),
        image_type=_multi(dataset, "00080008"),
        content_label=_text(dataset, "00700080"),
        concept_name=_text(_first_item(dataset, "0040A043") or {}, "00080104"),
        document_title=_text(dataset, "00420010"),
        rows=_int(rows),
        columns=_int(columns),
        number_of_frames=_text(dataset, "00280008"),
        has_pixels=bool(rows and columns and _element(dataset, "00280100") is not None),
        content_date=_text(dataset, "00080023"),
        content_time=_text(dataset, "00080033"),
        acquisition_datetime=_text(dataset, "0008002A"),
        patient_id=_text(dataset, "00100020"),
        issuer_of_patient_id=_text(dataset, "00100021"),
        patient_id_issuer=_issuer(_first_item(dataset, "00100024")),
        patient_name=_text(dataset, "00100010"),
        patient_birth_date=_text(dataset, "00100030"),
        patient_sex=_text(dataset, "00100040"),
        study_date=_text(dataset, "00080020"),
        study_time=_text(dataset, "00080030"),
        timezone_offset=_text(dataset, "00080201"),
        accession_number=_text(dataset, "00080050"),
        accession_issuer=_issuer(_first_item(dataset, "00080051")),
        study_id=_text(dataset, "00200010"),
        study_description=_text(dataset, "00081030"),
        referring_physician=_text(dataset, "00080090"),
        reading_physicians=_multi(dataset, "00081060"),
        procedure_codes=_codes(dataset, "00081032"),
        reason_for_procedure=_text(dataset, "00401002"),
        reason_codes=_codes(dataset, "0040100A"),
        department=_text(dataset, "00081040"),
        modalities_in_study=_multi(dataset, "00080061"),
        series_number=_text(dataset, "00200011"),
        modality=_text(dataset, "00080060"),
        series_description=_text(dataset, "0008103E"),
        body_part_examined=_text(dataset, "00180015"),
        laterality=_text(dataset, "00200060"),
        series_date=_text(dataset, "00080021"),
        series_time=_text(dataset, "00080031"),
        performing_physicians=_multi(dataset, "00081050"),
        operators=_multi(dataset, "00081070"),
        manufacturer=_text(dataset, "00080070"),
        model_name=_text(dataset, "00081090"),
        station_name=_text(dataset, "00081010"),
        sr=_sr_content(dataset, str(uids["00080016"])),
    )


def _sr_content(dataset: JSONMapping, sop_class_uid: str) -> SrContent | None:
    """An SR's content tree from its metadata, which WADO-RS gives whole (no bulk data in it),
    read as :func:`fhirimg.scan.read_file` reads it from a file (:mod:`fhirimg.srread`)."""
    from fhirimg.srread import content_of, is_sr

    if not is_sr(sop_class_uid) or "0040A730" not in dataset:  # (0040,A730) Content Sequence
        return None
    from pydicom.dataset import Dataset

    try:
        ds = Dataset.from_json(dict(dataset))
    except Exception as exc:  # malformed DICOM JSON: the instance converts, its content not
        # The type only: the message may quote values (patient data)
        return SrContent(
            None, None, None, None, (), (f"SR content not read: {type(exc).__name__}",)
        )
    return content_of(ds)


# --------------------------------------------------------------------------- finding studies
_DATE = re.compile(r"^(\d{4})-?(\d{2})-?(\d{2})$")


def qido_date(value: str) -> str:
    """``2024-05-20`` or ``20240520`` as a DICOM DA; ConfigError otherwise.

    >>> qido_date("2024-05-20")
    '20240520'
    >>> qido_date("2024-13-01")
    Traceback (most recent call last):
    fhirimg.errors.ConfigError: not a date (YYYY-MM-DD): '2024-13-01'
    """
    m = _DATE.match(value.strip())
    da = "".join(m.groups()) if m else ""
    if not m or values.parse_da(da) is None:  # 2024-13-01 has the shape but is no day
        raise ConfigError(f"not a date (YYYY-MM-DD): {value!r}")
    return da


@dataclass(frozen=True)
class StudyQuery:
    """Which studies to convert from a PACS. Empty means every study the server lists.

    ``study_uids`` are taken as given (each checked with QIDO-RS); the other fields are QIDO-RS
    matching keys (PS3.18 8.3.4): ``since`` becomes ``StudyDate=<since>-``, ``filters`` are
    extra ``(attribute, value)`` pairs such as ``("ModalitiesInStudy", "CT")``.
    """

    study_uids: tuple[str, ...] = ()
    since: str | None = None
    patient_id: str | None = None
    accession_number: str | None = None
    modality: str | None = None
    filters: tuple[tuple[str, str], ...] = ()

    def params(self) -> dict[str, str]:
        """The QIDO-RS query parameters.

        >>> StudyQuery(since="2024-01-01", modality="CT").params()
        {'StudyDate': '20240101-', 'ModalitiesInStudy': 'CT'}
        """
        out: dict[str, str] = {}
        if self.since:
            out["StudyDate"] = qido_date(self.since) + "-"
        if self.patient_id:
            out["PatientID"] = self.patient_id
        if self.accession_number:
            out["AccessionNumber"] = self.accession_number
        if self.modality:
            out["ModalitiesInStudy"] = self.modality
        out.update(self.filters)
        return out


def find_studies(client: DicomwebClient, query: StudyQuery) -> list[str]:
    """The Study Instance UIDs matching ``query`` (QIDO-RS), sorted, without duplicates.

    Only the UIDs are kept: each QIDO-RS page is dropped once read, and the pages are bounded
    (:data:`~fhirimg.dicomweb.client.QIDO_MAX_RESULTS` results per query, a repeated page is an
    error; see :meth:`DicomwebClient.iter_studies`).
    """
    params = query.params()
    searches = (
        [{**params, "StudyInstanceUID": uid} for uid in query.study_uids]
        if query.study_uids
        else [params]
    )
    found: set[str] = set()
    for search in searches:
        for study in client.iter_studies(search):
            value = first_value(study, "0020000D")
            if value:
                found.add(str(value))
    return sorted(found)


# --------------------------------------------------------------------------- converting
Batch = list[InstanceRecord | FileProblem]


def study_records(client: DicomwebClient, study: str) -> Batch:
    """The records of one study, from its WADO-RS metadata; a study that cannot be read becomes
    one FAILED problem named by its URL."""
    try:
        metadata = client.study_metadata(study)
    except PushError as exc:
        # The server's text goes into report.json and onto the terminal: no control codes.
        return [
            FileProblem(
                f"{client.base_url}/{client.study_path(study)}", FileStatus.FAILED, clean(exc)
            )
        ]
    out: Batch = []
    for dataset in metadata:
        uids = [str(first_value(dataset, t) or "") for t in ("0020000D", "0020000E", "00080018")]
        path = (
            client.instance_url(*uids)
            if all(uids)
            else f"{client.base_url}/{client.study_path(study)}"
        )
        out.append(record_from_json(dataset, path))
    return out


def _ordered(
    executor: Executor, fn: Callable[[str], Batch], items: Iterable[str], window: int
) -> Iterator[Batch]:
    pending: list[Future[Batch]] = []
    for item in items:
        pending.append(executor.submit(fn, item))
        if len(pending) >= window:
            yield pending.pop(0).result()
    for future in pending:
        yield future.result()


def convert_from_dicomweb(
    client: DicomwebClient,
    query: StudyQuery,
    options: ConvertOptions | None = None,
    progress: Progress | None = None,
    *,
    threads: int = 4,
) -> ConvertReport:
    """Convert the studies a DICOMweb server holds (those matching ``query``) to transaction
    Bundles, exactly as :func:`fhirimg.convert.convert` converts files. With ``binary`` /
    ``media`` the instances' bytes are retrieved by WADO-RS, a study at a time
    (:mod:`fhirimg.dicomweb.fetch`).

    The ImagingStudy gets an Endpoint at the server's base URL unless ``options.mapping`` names
    another. Raises :class:`PushError` when the server cannot be queried at all; a study whose
    metadata cannot be read is reported as failed in ``report.json``. ``progress`` hears
    ``("read", 1, studies)`` as each study's metadata is read, then ``("write", 1, studies)``
    as each bundle is written.
    """
    opts = options or ConvertOptions()
    if not opts.mapping.dicomweb_url:
        opts = replace(opts, mapping=replace(opts.mapping, dicomweb_url=client.base_url))
    studies = find_studies(client, query)
    log.info("%d studies to convert from %s", len(studies), client.server)

    def source(_: Executor | None) -> Iterator[Batch]:
        with ThreadPoolExecutor(max(1, threads), thread_name_prefix="wado") as pool:
            for batch in _ordered(
                pool, lambda uid: study_records(client, uid), studies, threads * 2
            ):
                if progress:
                    progress("read", 1, len(studies))
                yield batch

    if opts.binary is None and opts.media is None:
        return convert_records(source, opts, progress)
    from fhirimg.dicomweb.fetch import DicomwebFetch

    # --binary/--media: each study's instances by WADO-RS, just before it is written
    with DicomwebFetch(client, opts.out_dir, opts.modes) as fetch:
        return convert_records(source, opts, progress, fetch=fetch)
