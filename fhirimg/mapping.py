"""DICOM to FHIR: one study's instance records become Patient, Endpoint and ImagingStudy resources.

Element by element this follows ``fhir-imaging-spec.md`` (the HL7 ``dicom`` mappings of the core
StructureDefinitions); each element cites its DICOM tag. Release differences (R4 Coding vs R5
CodeableConcept, accession placement, ...) come from :mod:`fhirimg.fhir`, never from ``if`` here.

Values that cannot be converted leave their element out and add a warning; they never raise.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from fhirimg import values
from fhirimg.fhir import Release
from fhirimg.fhir.base import StudyParts
from fhirimg.jsonio import JSON
from fhirimg.model import Code, InstanceRecord, Issuer
from fhirimg.values import TextKind

DCM = "http://dicom.nema.org/resources/ontology/DCM"
SNOMED = "http://snomed.info/sct"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
RFC3986 = "urn:ietf:rfc:3986"
DICOM_UID_SYSTEM = "urn:dicom:uid"

# DICOM coding scheme designators (0008,0102) -> FHIR code system URIs (DICOM PS3.16 Section 8,
# "Coding Schemes", HL7 FHIR column). Other designators (private "99..." schemes, ones not listed
# here) become urn:dicom:scheme:<designator> (coding_system).
CODING_SCHEMES = {
    "DCM": DCM,
    "SCT": SNOMED,
    # SRT: SNOMED RT style codes ("T-D3000"), not SNOMED CT concept ids; PS3.16 Table 8-1 gives
    # them http://snomed.info/srt (DICOM's FHIR value sets list both). Never relabel them as SCT.
    "SRT": "http://snomed.info/srt",
    "LN": "http://loinc.org",
    "UCUM": "http://unitsofmeasure.org",
    "RADLEX": "http://radlex.org",
    "I10": "http://hl7.org/fhir/sid/icd-10",
    "I9C": "http://hl7.org/fhir/sid/icd-9-cm",
    "C4": "http://www.ama-assn.org/go/cpt",
    "NCIt": "http://ncicb.nci.nih.gov/xml/owl/EVS/Thesaurus.owl",
    # The imaging profiles' alias (the PS3.16 table lists https://www.nlm.nih.gov/research/umls/).
    "UMLS": "http://terminology.hl7.org/CodeSystem/umls",
}

PRIVATE_SCHEME_PREFIX = "urn:dicom:scheme:"
"""Coding.system of a code whose Coding Scheme Designator (0008,0102) has no known URI."""


def coding_system(designator: str | None, overrides: Mapping[str, str] | None = None) -> str | None:
    """Coding.system for a Coding Scheme Designator (0008,0102): ``overrides`` first (the
    ``--coding-system SCHEME=URI`` mapping), then the PS3.16 schemes of :data:`CODING_SCHEMES`,
    else ``urn:dicom:scheme:<designator>``, so that a code of a private scheme (``99ACME``) or
    of one not listed keeps saying whose code it is: a bare code without a system means nothing
    to a receiver. None only without a designator. Characters outside unreserved URI ones are
    percent-encoded (a designator is SH: spaces and punctuation are possible).

    >>> coding_system("DCM")
    'http://dicom.nema.org/resources/ontology/DCM'
    >>> coding_system("99ACME"), coding_system("99 X/Y")
    ('urn:dicom:scheme:99ACME', 'urn:dicom:scheme:99%20X%2FY')
    >>> coding_system("99ACME", {"99ACME": "https://acme.example/codes"})
    'https://acme.example/codes'
    >>> coding_system("") is None
    True
    """
    scheme = (designator or "").strip()
    if not scheme:
        return None
    if overrides and scheme in overrides:
        return overrides[scheme]
    known = CODING_SCHEMES.get(scheme)
    if known is not None:
        return known
    return PRIVATE_SCHEME_PREFIX + quote(scheme, safe="")


# (0018,0015) Body Part Examined -> SNOMED CT, after DICOM PS3.16 Annex L (CID 4 correspondence)
# for common values. Other values keep their text as Coding.display (no code is invented).
BODY_PARTS: Mapping[str, tuple[str, str]] = {
    "ABDOMEN": ("818981001", "Abdomen"),
    "ABDOMENPELVIS": ("818982008", "Abdomen and Pelvis"),
    "ANKLE": ("70258002", "Ankle joint"),
    "BRAIN": ("12738006", "Brain"),
    "BREAST": ("76752008", "Breast"),
    "CHEST": ("43799004", "Chest"),
    "CSPINE": ("122494005", "Cervical spine"),
    "ELBOW": ("16953009", "Elbow joint"),
    "FOOT": ("56459004", "Foot"),
    "HAND": ("85562004", "Hand"),
    "HEAD": ("69536005", "Head"),
    "HEART": ("80891009", "Heart"),
    "HIP": ("24136001", "Hip joint"),
    "KIDNEY": ("64033007", "Kidney"),
    "KNEE": ("72696002", "Knee"),
    "LIVER": ("10200004", "Liver"),
    "LSPINE": ("122496007", "Lumbar spine"),
    "NECK": ("45048000", "Neck"),
    "SHOULDER": ("16982005", "Shoulder"),
    "TSPINE": ("122495006", "Thoracic spine"),
    "WHOLEBODY": ("38266002", "Entire body"),
}

# (0020,0060) Laterality -> SNOMED CT (DICOM CID 244 Laterality).
LATERALITY: Mapping[str, tuple[str, str]] = {
    "L": ("7771000", "Left"),
    "R": ("24028007", "Right"),
    "B": ("51440002", "Right and left"),
}


# The text attributes of a record that reach FHIR, with the DICOM keyword and tag a warning names
# and the FHIR primitive each becomes (values.TextKind). UIDs, dates, times and numbers are not
# here: their own parsers refuse a malformed value (the element is left out, or the instance is
# not valid and is dropped), and a UID must never be changed into another one.
_S, _C, _U = TextKind.STRING, TextKind.CODE, TextKind.URI
_TEXT: Mapping[str, tuple[str, TextKind]] = {
    "patient_id": ("PatientID (0010,0020)", _S),  # Identifier.value
    "issuer_of_patient_id": ("IssuerOfPatientID (0010,0021)", _S),  # assigner.display
    "patient_name": ("PatientName (0010,0010)", _S),  # HumanName parts
    "patient_sex": ("PatientSex (0010,0040)", _C),
    "accession_number": ("AccessionNumber (0008,0050)", _S),
    "study_id": ("StudyID (0020,0010)", _S),
    "study_description": ("StudyDescription (0008,1030)", _S),
    "referring_physician": ("ReferringPhysicianName (0008,0090)", _S),
    "reading_physicians": ("NameOfPhysiciansReadingStudy (0008,1060)", _S),
    "reason_for_procedure": ("ReasonForTheRequestedProcedure (0040,1002)", _S),
    "department": ("InstitutionalDepartmentName (0008,1040)", _S),
    "modalities_in_study": ("ModalitiesInStudy (0008,0061)", _C),  # Coding.code
    "modality": ("Modality (0008,0060)", _C),  # Coding.code
    "series_description": ("SeriesDescription (0008,103E)", _S),
    "body_part_examined": ("BodyPartExamined (0018,0015)", _S),  # bodySite display
    "laterality": ("Laterality (0020,0060)", _C),
    "performing_physicians": ("PerformingPhysicianName (0008,1050)", _S),
    "operators": ("OperatorsName (0008,1070)", _S),
    "manufacturer": ("Manufacturer (0008,0070)", _S),  # Media.deviceName
    "model_name": ("ManufacturerModelName (0008,1090)", _S),
    "station_name": ("StationName (0008,1010)", _S),
    "image_type": ("ImageType (0008,0008)", _S),  # instance.title
    "content_label": ("ContentLabel (0070,0080)", _S),
    "concept_name": ("CodeMeaning (0008,0104) in ConceptNameCodeSequence (0040,A043)", _S),
    "document_title": ("DocumentTitle (0042,0010)", _S),
}
_CODE_ITEMS = {
    "procedure_codes": "ProcedureCodeSequence (0008,1032)",
    "reason_codes": "ReasonForRequestedProcedureCodeSequence (0040,100A)",
}
_CODE_PARTS = (
    ("value", "CodeValue (0008,0100)", _C),  # Coding.code
    ("scheme", "CodingSchemeDesignator (0008,0102)", _C),  # looked up for Coding.system
    ("meaning", "CodeMeaning (0008,0104)", _S),  # Coding.display
)
_ISSUERS = {
    "patient_id_issuer": "IssuerOfPatientIDQualifiersSequence (0010,0024)",
    "accession_issuer": "IssuerOfAccessionNumberSequence (0008,0051)",
}
_ISSUER_PARTS = (
    ("local", "LocalNamespaceEntityID (0040,0031)", _S),  # assigner.display
    ("universal", "UniversalEntityID (0040,0032)", _U),  # Identifier.system
    ("universal_type", "UniversalEntityIDType (0040,0033)", _C),
)


def _nothing_to_clean(record: InstanceRecord) -> bool:
    """Whether :func:`clean_text` would give ``record`` back as it is: each of its text values
    as :func:`fhirimg.values.fhir_text` leaves it, checked a kind at a time in one pass (the
    value by value path cost ~80 us a record, most of the header path's text cleaning)."""
    by_kind: dict[TextKind, list[str]] = {_S: [], _C: [], _U: []}
    for attr, (_, kind) in _TEXT.items():
        value = getattr(record, attr)
        if isinstance(value, tuple):
            by_kind[kind].extend(value)
        elif value is not None:
            by_kind[kind].append(value)
    for attr in _CODE_ITEMS:
        for code in getattr(record, attr):
            for part, _, kind in _CODE_PARTS:
                text = getattr(code, part)
                if text is not None:
                    by_kind[kind].append(text)
    for attr in _ISSUERS:
        issuer = getattr(record, attr)
        if issuer is not None:
            for part, _, kind in _ISSUER_PARTS:
                text = getattr(issuer, part)
                if text is not None:
                    by_kind[kind].append(text)
    return all(values.as_is(texts, kind) for kind, texts in by_kind.items())


def clean_text(record: InstanceRecord) -> tuple[InstanceRecord, tuple[str, ...]]:
    """``record`` with every text value that reaches FHIR made fit for its FHIR type
    (:func:`fhirimg.values.fhir_text`: a NBSP becomes a space, control characters go, ...), and
    one warning per attribute changed, naming it by keyword and tag, never quoting the value.
    The one place DICOM text is cleaned on its way into FHIR; a record with nothing to clean
    comes back as it is.

    >>> rec = InstanceRecord("f.dcm", 0, "1.2", "1.2.3", "1.2.4", "1.2.5", modality="CT\\x00")
    >>> clean_text(rec)[1]
    ('text cleaned in Modality (0008,0060): control character removed',)
    >>> clean_text(rec)[0].modality
    'CT'
    """
    if _nothing_to_clean(record):
        return record, ()
    return _clean_each(record)


def _clean_each(record: InstanceRecord) -> tuple[InstanceRecord, tuple[str, ...]]:
    """:func:`clean_text`, value by value."""
    changed: dict[str, object] = {}
    notes: list[str] = []

    def one(value: str | None, where: str, kind: TextKind) -> str | None:
        if value is None:
            return None
        text, changes = values.fhir_text(value, kind)
        if changes:
            notes.append(f"text cleaned in {where}: {'; '.join(changes)}")
        return text

    for attr, (where, kind) in _TEXT.items():
        value = getattr(record, attr)
        if isinstance(value, tuple):
            new: object = tuple(t for t in (one(v, where, kind) for v in value) if t)
        else:
            new = one(value, where, kind)
        if new != value:
            changed[attr] = new
    for attr, where in _CODE_ITEMS.items():
        codes = getattr(record, attr)
        new_codes = tuple(
            Code(
                *(
                    one(getattr(c, part), f"{name} in {where}", kind)
                    for part, name, kind in _CODE_PARTS
                )
            )
            for c in codes
        )
        if new_codes != codes:
            changed[attr] = tuple(c for c in new_codes if c.value or c.meaning)
    for attr, where in _ISSUERS.items():
        issuer = getattr(record, attr)
        if issuer is None:
            continue
        new_issuer = Issuer(
            *(
                one(getattr(issuer, part), f"{name} in {where}", kind)
                for part, name, kind in _ISSUER_PARTS
            )
        )
        if new_issuer != issuer:
            changed[attr] = new_issuer if (new_issuer.local or new_issuer.universal) else None
    if not changed:
        return record, tuple(dict.fromkeys(notes))
    return dataclasses.replace(record, **changed), tuple(dict.fromkeys(notes))  # type: ignore[arg-type]


@dataclass(frozen=True)
class MapOptions:
    """How the mapping fills what DICOM does not say."""

    timezone: str | None = None
    """IANA zone for DA/TM without (0008,0201) Timezone Offset From UTC."""
    patient_id_system: str | None = None
    """Identifier.system for Patient IDs whose issuer gives no standard system."""
    patient_id_systems: tuple[tuple[str, str], ...] = ()
    """Issuer of Patient ID (0010,0021) local names -> Identifier.system."""
    accession_systems: tuple[tuple[str, str], ...] = ()
    """Issuer of Accession Number local namespaces (0008,0051)>(0040,0031) -> Identifier.system;
    an issuer with a Universal Entity ID needs none (``fhir-imaging-spec.md``, Issuer rule)."""
    dicomweb_url: str | None = None
    """Base URL of the DICOMweb (WADO-RS) service holding the images; adds an Endpoint."""
    measurements: bool = True
    """SR measurement and dose reports become Observations (:mod:`fhirimg.measurements`)."""
    pseudonymised: bool = False
    """The records are de-identified (:mod:`fhirimg.deid`): Patient and ImagingStudy get
    ``meta.security`` PSEUDED."""
    coding_systems: tuple[tuple[str, str], ...] = ()
    """Coding Scheme Designator (0008,0102) -> Coding.system, over the PS3.16 table and the
    ``urn:dicom:scheme:`` default (:func:`coding_system`): ``--coding-system 99ACME=URI``."""


@dataclass
class Notes:
    """Warnings collected while mapping one study (no patient names or ids in them)."""

    items: list[str] = field(default_factory=list)

    def add(self, message: str) -> None:
        if message not in self.items:
            self.items.append(message)

    def extend(self, messages: Iterable[str]) -> None:
        for m in messages:
            self.add(m)


def coding(code: Code, systems: Mapping[str, str] | None = None) -> JSON | None:
    """A DICOM code item to a FHIR Coding (system from the scheme designator,
    :func:`coding_system`)."""
    out: JSON = {}
    system = coding_system(code.scheme, systems)
    if system:
        out["system"] = system
    if code.value:
        out["code"] = code.value
    if code.meaning:
        out["display"] = code.meaning
    return out or None


def concept(
    codes: Sequence[Code], text: str | None = None, systems: Mapping[str, str] | None = None
) -> JSON | None:
    """Code items and/or free text to one CodeableConcept (``systems``: :func:`coding_system`'s
    overrides)."""
    codings = [c for c in (coding(code, systems) for code in codes) if c]
    out: JSON = {}
    if codings:
        out["coding"] = codings
    if text:
        out["text"] = text
    return out or None


def issuer_system(issuer: Issuer | None, local_systems: Mapping[str, str]) -> str | None:
    """Identifier.system from an HL7 v2 HD issuer (``fhir-imaging-spec.md``, Issuer rule):
    Universal Entity ID Type (0040,0033) ISO -> ``urn:oid:``, UUID -> ``urn:uuid:``, URI as is;
    a local namespace (0040,0031) only through the user's mapping.

    >>> issuer_system(Issuer(universal="1.2.3", universal_type="ISO"), {})
    'urn:oid:1.2.3'
    >>> issuer_system(Issuer(local="HOSP"), {"HOSP": "http://hosp.example/mrn"})
    'http://hosp.example/mrn'
    """
    if issuer is None:
        return None
    kind = (issuer.universal_type or "").upper()
    if issuer.universal:
        if kind == "ISO" and values.is_valid_uid(issuer.universal):
            return "urn:oid:" + issuer.universal
        if kind == "UUID":
            return "urn:uuid:" + issuer.universal.lower()
        if kind in ("URI", "URL"):
            return issuer.universal
    if issuer.local:
        return local_systems.get(issuer.local)
    return None


def _identifier(value: str, type_code: str, issuer: Issuer | None, system: str | None) -> JSON:
    ident: JSON = {"type": {"coding": [{"system": V2_0203, "code": type_code}]}}
    if system:
        ident["system"] = system
    ident["value"] = value
    if issuer and issuer.local:
        ident["assigner"] = {"display": issuer.local}
    return ident


def search_token(system: str | None, value: str) -> str:
    """``identifier`` search value ``system|value`` percent-encoded for a conditional URL.

    >>> search_token("urn:dicom:uid", "urn:oid:1.2.3")
    'identifier=urn:dicom:uid|urn:oid:1.2.3'
    >>> search_token(None, "A B&C")
    'identifier=A%20B%26C'
    >>> search_token("urn:oid:1.2", "12,345")
    'identifier=urn:oid:1.2|12%5C%2C345'
    """
    safe = ":/.-_~"
    token = quote(_escape_search(value), safe=safe)
    if system:
        token = quote(_escape_search(system), safe=safe) + "|" + token
    return "identifier=" + token


def _escape_search(text: str) -> str:
    # FHIR search, "Escaping Search Parameters": '\', ',', '$' and '|' inside a value are
    # prefixed with '\' (the server percent-decodes first, so percent-encoding alone is not
    # enough: 'sys|12,345' would search for '12' of sys OR '345' of any system).
    for char in ("\\", ",", "$", "|"):
        text = text.replace(char, "\\" + char)
    return text


def _first(records: Sequence[InstanceRecord], attr: str) -> Any:
    """The first non-empty value of ``attr`` in the (sorted) records of a study."""
    for rec in records:
        value = getattr(rec, attr)
        if value:
            return value
    return None


def _unsigned(raw: str | None, what: str, notes: Notes) -> int | None:
    """An IS for an unsignedInt element; malformed or negative values are left out with a note."""
    if raw is None:
        return None
    number = values.parse_is(raw)
    if number is None or number < 0:
        notes.add(f"{what} {raw!r} is not a valid non-negative IS; left out")
        return None
    return number


def patient(
    records: Sequence[InstanceRecord], options: MapOptions, notes: Notes
) -> tuple[JSON, JSON]:
    """The Patient resource and its transaction request for one study.

    Request: ``POST Patient`` with ``ifNoneExist`` on the identifier (``fhir-imaging-spec.md``,
    Transaction Bundles). Without a Patient ID, or with one whose issuer gives no identifier
    system, there is no safe search to match an existing Patient on (``identifier=<value>`` alone
    would match the same number from any hospital): the caller then uses a deterministic ``PUT``.
    """
    resource: JSON = {"resourceType": "Patient"}
    request: JSON = {"method": "POST", "url": "Patient"}
    pid = _first(records, "patient_id")  # (0010,0020) Patient ID
    ids = {r.patient_id for r in records if r.patient_id}
    if len(ids) > 1:
        notes.add(
            f"{len(ids)} different Patient IDs in one study; the first (by series/instance) is used"
        )
    if pid:
        rec = next(r for r in records if r.patient_id == pid)
        issuer = rec.patient_id_issuer  # (0010,0024) Issuer of Patient ID Qualifiers Sequence
        local = rec.issuer_of_patient_id  # (0010,0021) Issuer of Patient ID
        if local and (issuer is None or not issuer.local):
            issuer = Issuer(
                local,
                issuer.universal if issuer else None,
                issuer.universal_type if issuer else None,
            )
        system = (
            issuer_system(issuer, dict(options.patient_id_systems)) or options.patient_id_system
        )
        resource["identifier"] = [_identifier(pid, "MR", issuer, system)]
        if system:
            request["ifNoneExist"] = search_token(system, pid)
        else:
            notes.add(
                "Patient ID has no issuer system: the Patient is not matched against existing "
                "ones on the server (it gets its own deterministic id); set --patient-id-system"
            )
    pn = _first(records, "patient_name")  # (0010,0010) Patient's Name
    if pn:
        names = values.human_names(pn)
        if names:
            resource["name"] = names
    # (0010,0040) Patient's Sex -> gender; empty -> unknown (fhir-imaging-spec.md, Patient)
    sex = _first(records, "patient_sex")
    resource["gender"] = values.fhir_gender(sex)
    if sex and sex.strip().upper() not in ("M", "F", "O"):
        notes.add(f"Patient's Sex {sex!r} is not M, F or O; gender set to unknown")
    birth = _first(records, "patient_birth_date")  # (0010,0030) Patient's Birth Date
    if birth:
        day = values.parse_da(birth)
        if day:
            resource["birthDate"] = day
        else:
            notes.add("Patient's Birth Date is not a valid DA; left out")
    return resource, request


def endpoint(url: str, release: Release) -> tuple[JSON, JSON]:
    """The WADO-RS Endpoint and its idempotent request (``ifNoneExist`` on its identifier).

    Endpoint has no ``address`` search parameter, so the address doubles as an identifier
    (system ``urn:ietf:rfc:3986``) to make creation idempotent (``fhir-imaging-spec.md``).
    """
    address = url.rstrip("/")  # Endpoint.address: service base, no trailing slash
    identifier = {"system": RFC3986, "value": address}
    resource = release.endpoint(address, identifier, "DICOMweb WADO-RS")
    request = {"method": "POST", "url": "Endpoint", "ifNoneExist": search_token(RFC3986, address)}
    return resource, request


def _sort_key_series(rec: InstanceRecord) -> tuple[int, int, str]:
    number = values.parse_is(rec.series_number) if rec.series_number else None
    return (0 if number is not None else 1, number or 0, rec.series_instance_uid)


def _sort_key_instance(rec: InstanceRecord) -> tuple[int, int, str]:
    number = values.parse_is(rec.instance_number) if rec.instance_number else None
    return (0 if number is not None else 1, number or 0, rec.sop_instance_uid)


def _uid_name(uid: str) -> str:
    """The name PS3.6 Annex A gives a UID (pydicom's UID dictionary), or the UID itself.

    >>> _uid_name("1.2.840.10008.5.1.4.1.1.2"), _uid_name("1.2.3")
    ('CT Image Storage', '1.2.3')
    """
    names = _uid_dictionary()
    uid = uid.strip()
    return str(names[uid][0]) if uid in names else uid


@functools.cache
def _uid_dictionary() -> dict[str, tuple[str, ...]]:
    """pydicom's UID dictionary (``pydicom._uid_dict``, PS3.6 Annex A), without pydicom.

    Importing any pydicom module runs pydicom's ``__init__`` (numpy, its pixel handlers, requests:
    about 0.8 s of CPU), which neither an incremental run nor a run over files the fast header
    parser reads needs (:mod:`fhirimg.scan`). The dictionary is a data module, a dict literal:
    loaded alone from pydicom's package folder, with pydicom's own import as the fallback.
    """
    if "pydicom" not in sys.modules:
        try:
            spec = importlib.util.find_spec("pydicom")  # finds the package, runs none of it
            folder = spec.submodule_search_locations if spec is not None else None
            if folder:
                path = os.path.join(next(iter(folder)), "_uid_dict.py")
                data = importlib.util.spec_from_file_location("fhirimg._pydicom_uid_dict", path)
                if data is not None and data.loader is not None:
                    module = importlib.util.module_from_spec(data)
                    data.loader.exec_module(module)
                    return dict(module.UID_dictionary)
        except (ImportError, OSError, AttributeError, SyntaxError):
            pass  # pydicom's own import below
    from pydicom._uid_dict import UID_dictionary

    return dict(UID_dictionary)


def sort_records(records: Iterable[InstanceRecord]) -> list[InstanceRecord]:
    """Instances in output order: by series number, series UID, instance number, SOP UID."""
    return sorted(records, key=lambda r: (_sort_key_series(r), _sort_key_instance(r)))


def series_groups(records: Sequence[InstanceRecord]) -> list[list[InstanceRecord]]:
    """The records of a study as ImagingStudy lists them: ``series[i].instance[j]`` is
    ``series_groups(records)[i][j]`` for records in :func:`sort_records` order.

    >>> recs = [InstanceRecord(f"{n}.dcm", 0, "1.2", f"1.9.{n}", "1.3", s) for n, s in
    ...         enumerate(["1.5", "1.4", "1.5"])]
    >>> [[r.path for r in group] for group in series_groups(recs)]
    [['0.dcm', '2.dcm'], ['1.dcm']]
    """
    by_series: dict[str, list[InstanceRecord]] = {}
    for rec in records:
        by_series.setdefault(rec.series_instance_uid, []).append(rec)
    return list(by_series.values())


def _modality_coding(code: str) -> JSON:
    # (0008,0060) Modality; system is the DCM URI, never "DCM" (a DICOMcast mistake, peers.md)
    return {"system": DCM, "code": code}


def _instance_title(rec: InstanceRecord) -> str | None:
    """ImagingStudy.series.instance.title: (0042,0010) Document Title | (0040,A043)>(0008,0104)
    Concept Name meaning | (0070,0080) Content Label | (0008,0008) Image Type."""
    if rec.document_title:
        return rec.document_title
    if rec.concept_name:
        return rec.concept_name
    if rec.content_label:
        return rec.content_label
    if rec.image_type:
        return "\\".join(rec.image_type)
    return None


def _performers(rec: InstanceRecord) -> list[JSON]:
    out: list[JSON] = []
    # (0008,1050) Performing Physician's Name -> performer, function PRF (performer)
    for pn in rec.performing_physicians:
        display = values.display_name(pn)
        if display:
            out.append(
                {
                    "function": {
                        "coding": [{"system": PARTICIPATION, "code": "PRF", "display": "performer"}]
                    },
                    "actor": {"display": display},
                }
            )
    # (0008,1070) Operators' Name -> performer, function SPRF (secondary performer), text Operator
    for pn in rec.operators:
        display = values.display_name(pn)
        if display:
            out.append(
                {
                    "function": {
                        "coding": [
                            {
                                "system": PARTICIPATION,
                                "code": "SPRF",
                                "display": "secondary performer",
                            }
                        ],
                        "text": "Operator",
                    },
                    "actor": {"display": display},
                }
            )
    return out


def _series(
    records: Sequence[InstanceRecord],
    release: Release,
    options: MapOptions,
    notes: Notes,
    instance_extensions: Mapping[str, list[JSON]],
) -> JSON:
    first = records[0]
    series: JSON = {"uid": first.series_instance_uid}  # (0020,000E) Series Instance UID, bare id
    number = _unsigned(_first(records, "series_number"), "Series Number (0020,0011)", notes)
    if number is not None:
        series["number"] = number
    modality = _first(records, "modality")  # (0008,0060) Modality
    if not modality:
        notes.add("a series has no Modality (0008,0060); modality set to OT (other)")
        modality = "OT"
    series["modality"] = release.modality(_modality_coding(modality))
    description = _first(records, "series_description")  # (0008,103E)
    if description:
        series["description"] = description
    series["numberOfInstances"] = len(records)
    body = _first(records, "body_part_examined")  # (0018,0015) Body Part Examined
    if body:
        known = BODY_PARTS.get(body.upper())
        site = (
            {"system": SNOMED, "code": known[0], "display": known[1]}
            if known
            else {"display": body}
        )
        series["bodySite"] = release.body_site(site)
    side = _first(records, "laterality")  # (0020,0060) Laterality
    if side:
        known = LATERALITY.get(side.upper())
        if known:
            series["laterality"] = release.laterality(
                {"system": SNOMED, "code": known[0], "display": known[1]}
            )
        else:
            notes.add(f"Laterality {side!r} is not L, R or B; left out")
    started, warn = values.fhir_datetime(
        _first(records, "series_date"),
        _first(records, "series_time"),
        _first(records, "timezone_offset"),
        options.timezone,
    )  # (0008,0021) Series Date + (0008,0031) Series Time, (0008,0201)
    notes.extend(f"series started: {w}" for w in warn)
    if started:
        series["started"] = started
    performers = _performers(first)
    if performers:
        series["performer"] = performers
    instances = []
    for rec in records:
        inst: JSON = {}
        ext = instance_extensions.get(rec.sop_instance_uid)
        if ext:
            inst["extension"] = ext
        inst["uid"] = rec.sop_instance_uid  # (0008,0018) SOP Instance UID, bare id
        sop_class: JSON = {"system": RFC3986, "code": "urn:oid:" + rec.sop_class_uid}
        name = _uid_name(rec.sop_class_uid)
        if name and name != rec.sop_class_uid:
            sop_class["display"] = name
        inst["sopClass"] = sop_class  # (0008,0016) SOP Class UID
        inst_number = _unsigned(rec.instance_number, "Instance Number (0020,0013)", notes)
        if inst_number is not None:
            inst["number"] = inst_number
        title = _instance_title(rec)
        if title:
            inst["title"] = title
        instances.append(inst)
    series["instance"] = instances
    return series


def imaging_study(
    records: Sequence[InstanceRecord],
    subject_ref: str,
    endpoint_ref: str | None,
    release: Release,
    options: MapOptions,
    notes: Notes,
    instance_extensions: Mapping[str, list[JSON]] | None = None,
) -> tuple[JSON, JSON]:
    """The ImagingStudy (and its conditional-update request) for one study's sorted records."""
    study_uid = records[0].study_instance_uid
    for w in sorted({w for r in records for w in r.warnings}):
        notes.add(w)
    if not values.is_valid_uid(study_uid):
        notes.add("Study Instance UID is not a valid DICOM UID")
    identifiers: list[JSON] = [
        # (0020,000D) Study Instance UID as urn:dicom:uid / urn:oid:
        {"system": DICOM_UID_SYSTEM, "value": "urn:oid:" + study_uid}
    ]
    accession_value = _first(records, "accession_number")  # (0008,0050) Accession Number
    accession = None
    if accession_value:
        issuer = _first(records, "accession_issuer")  # (0008,0051) Issuer of Accession Number Seq.
        system = issuer_system(issuer, dict(options.accession_systems))
        accession = _identifier(accession_value, "ACSN", issuer, system)
    interpreters = tuple(
        d
        for d in (values.display_name(pn) for pn in (_first(records, "reading_physicians") or ()))
        if d
    )
    systems = dict(options.coding_systems)
    procedures = tuple(
        c
        for c in (
            concept([code], None, systems) for code in _first(records, "procedure_codes") or ()
        )
        if c
    )  # (0008,1032) Procedure Code Sequence
    reason = concept(
        _first(records, "reason_codes") or (), _first(records, "reason_for_procedure"), systems
    )
    parts = StudyParts(accession, procedures, (reason,) if reason else (), interpreters)
    extra = release.study_elements(parts)
    identifiers += extra.pop("identifier", [])
    study_id = _first(records, "study_id")  # (0020,0010) Study ID
    if study_id:
        identifiers.append({"use": "secondary", "value": study_id})

    series = [
        _series(recs, release, options, notes, instance_extensions or {})
        for recs in series_groups(records)
    ]

    fields: JSON = {
        "resourceType": "ImagingStudy",
        "identifier": identifiers,
        "status": "available",
    }
    # (0008,0061) Modalities in Study, then every series modality it lacks, in series order:
    # each series.modality must appear in ImagingStudy.modality (validate's
    # img-series-modality-in-study), and a header's Modalities in Study can be stale or partial.
    # R4 lists acquisition modalities only (CID 29): SR, DOC, KO, PR ... stay on their series.
    modalities = list(_first(records, "modalities_in_study") or ())
    modalities += [
        s["modality"]["code"] if "code" in s["modality"] else s["modality"]["coding"][0]["code"]
        for s in series
    ]
    study_codes = values.study_modalities(modalities, release.fhir_version)
    if study_codes:
        fields["modality"] = [release.modality(_modality_coding(m)) for m in study_codes]
    fields["subject"] = {"reference": subject_ref}
    started, warn = values.fhir_datetime(
        _first(records, "study_date"),
        _first(records, "study_time"),
        _first(records, "timezone_offset"),
        options.timezone,
    )  # (0008,0020) Study Date + (0008,0030) Study Time, (0008,0201)
    notes.extend(f"study started: {w}" for w in warn)
    if started:
        fields["started"] = started
    referrer = values.display_name(_first(records, "referring_physician") or "")  # (0008,0090)
    if referrer:
        fields["referrer"] = {"display": referrer}
    if endpoint_ref:
        fields["endpoint"] = [{"reference": endpoint_ref}]
    fields["numberOfSeries"] = len(series)
    fields["numberOfInstances"] = len(records)
    department = _first(records, "department")  # (0008,1040) Institutional Department Name
    if department:
        fields["location"] = {"display": department}
    description = _first(records, "study_description")  # (0008,1030) Study Description
    if description:
        fields["description"] = description
    fields["series"] = series
    fields.update(extra)
    resource = {k: fields[k] for k in release.imaging_study_order if k in fields}
    request = {
        "method": "PUT",
        "url": "ImagingStudy?" + search_token(DICOM_UID_SYSTEM, "urn:oid:" + study_uid),
    }
    return resource, request
