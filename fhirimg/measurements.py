"""DICOM SR measurement and dose reports become FHIR Observations (issue 20, docs/measurements.md).

A study's SR records (their content trees, read by :mod:`fhirimg.srread`) give transaction
entries placed after the study's ImagingStudy:

- a **TID 1500 Measurement Report** (HL7 IG ``hl7.fhir.uv.dicom-sr`` 1.0.0, DICOM PS3.16): each
  Measurement Group (DCM 125007; TID 1501, 1410, 1411) an Observation (profile
  ``imaging-measurement-group``) whose ``hasMember`` lists its NUM measurements (TID 300/1419,
  ``imaging-measurement``) and CODE/TEXT qualitative evaluations
  (``imaging-qualitative-evaluation``); each NUM under DCM 126011 Derived Imaging Measurements
  (TID 1420) a ``derived-imaging-measurement`` derived from the report's groups;
- a **CT Radiation Dose SR** (TID 10011): one Observation for the report (code DCM 113701) with the
  accumulated values of TID 10012 as components, and one per irradiation event (TID 10013, code
  DCM 113819) identified by its Irradiation Event UID, with Mean CTDIvol and DLP as components;
- any other SR (a text report, a key object selection): nothing.

Image regions (SCOORD/SCOORD3D, DCM 111030) and source images (IMAGE items) become R5
ImagingSelection resources reached by ``derivedFrom``; R4 has no ImagingSelection, so there
``derivedFrom`` points at the ImagingStudy and the region rides on fhirimg's image-region
extension (:data:`REGION_EXTENSION`). What differs by release is asked of the release
(``imaging_selection``, ``observation_body_structure``), never branched on by name.

Every entry is a conditional create (``POST`` + ``ifNoneExist`` on its first identifier), with a
``urn:uuid:`` fullUrl from the SR's SOP Instance UID and the content item's position, so a re-push
creates nothing and a late SR adds only its own resources. Bad content never raises: each item
that cannot be mapped (no unit, the wrong value type, a by-reference loop, ...) is a warning
naming the item's position (PS3.3 C.17.3.2.5) and its concept, and the rest is mapped.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from fhirimg import ids, values
from fhirimg.fhir import Release
from fhirimg.jsonio import JSON
from fhirimg.mapping import (
    DCM,
    DICOM_UID_SYSTEM,
    RFC3986,
    V2_0203,
    MapOptions,
    Notes,
    coding_system,
    issuer_system,
    search_token,
)
from fhirimg.model import Code, ContentItem, InstanceRecord, SrContent

log = logging.getLogger(__name__)

UCUM = "http://unitsofmeasure.org"
IDENTIFIER_TYPE = "http://hl7.org/fhir/uv/dicom-sr/CodeSystem/dicom-identifier-type"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
REGION_EXTENSION = "https://fhirimg.dev/fhir/StructureDefinition/image-region"
"""R4 only: the instance, frames and 2D region an Observation was measured on (docs/measurements.md)."""

# Concept names (scheme, value) of the templates, cited where used.
MEASUREMENT_REPORT = ("DCM", "126000")  # TID 1500 root
IMAGING_MEASUREMENTS = ("DCM", "126010")  # TID 1500 row 12
DERIVED_MEASUREMENTS = ("DCM", "126011")  # TID 1500 row 13, TID 1420
MEASUREMENT_GROUP = ("DCM", "125007")  # TID 1501/1410/1411 row 1
QUALITATIVE_EVALUATIONS = ("UMLS", "C0034375")
TRACKING_ID = ("DCM", "112039")  # TID 4108 Tracking Identifier (TEXT)
TRACKING_UID = ("DCM", "112040")  # TID 4108 Tracking Unique Identifier (UIDREF)
FINDING = ("DCM", "121071")
FINDING_CATEGORY = ("SCT", "276214006")
FINDING_SITE = ("SCT", "363698007")
LATERALITY = ("SCT", "272741003")
TOPOGRAPHICAL_MODIFIER = ("SCT", "106233006")
METHOD = ("SCT", "370129005")
ALGORITHM_NAME = ("DCM", "111001")  # TID 4019 row 1
ALGORITHM_VERSION = ("DCM", "111003")  # TID 4019 row 2
IMAGE_REGION = ("DCM", "111030")
# Concept names of a group's CODE/TEXT items that are not qualitative evaluations (IG
# ConceptMap-01), and TID 4019 algorithm identification.
NOT_EVALUATIONS = {
    TRACKING_ID, FINDING, ("DCM", "130400"), ("NCIt", "C67447"), FINDING_CATEGORY, FINDING_SITE,
    METHOD, ALGORITHM_NAME, ALGORITHM_VERSION, ("DCM", "111002"),
}  # fmt: skip
DOSE_REPORT = ("DCM", "113701")  # TID 10011 row 1, X-Ray Radiation Dose Report
CT_ACCUMULATED = ("DCM", "113811")  # TID 10011 row 9 -> TID 10012
CT_ACQUISITION = ("DCM", "113819")  # TID 10011 row 10 -> TID 10013, one per irradiation event
CT_DOSE = ("DCM", "113829")  # TID 10013 row 10, CT Dose container
IRRADIATION_EVENT_UID = ("DCM", "113769")  # TID 10013 row 6
TARGET_REGION = ("DCM", "123014")  # TID 10013 row 3
ACCUMULATED_VALUES = {("DCM", "113812"), ("DCM", "113813"), ("DCM", "113814")}  # TID 10012 rows
EVENT_DOSE_VALUES = {("DCM", "113830"), ("DCM", "113838")}  # Mean CTDIvol, DLP (TID 10013)
_STATUS = {"FINAL": "final", "PRELIMINARY": "preliminary"}  # (0040,A496) Preliminary Flag
_REGION_TYPES = {"POINT", "POLYLINE", "CIRCLE", "ELLIPSE"}  # R5 ImagingSelection regionType


def system_of(scheme: str | None) -> str | None:
    """The FHIR system of a Coding Scheme Designator (0008,0102): the known ones (DCM, SCT, LN,
    UCUM, ...), any other as ``urn:dicom:scheme:<designator>`` (issue 16's rule).

    >>> system_of("SCT"), system_of("99FHIRIMG")
    ('http://snomed.info/sct', 'urn:dicom:scheme:99FHIRIMG')
    """
    return coding_system(scheme)  # the one rule of fhirimg.mapping (no --coding-system here yet)


def concept(code: Code) -> JSON:
    """A CodeableConcept of one DICOM code."""
    coding: JSON = {}
    system = system_of(code.scheme)
    if system:
        coding["system"] = system
    if code.value:
        coding["code"] = code.value
    if code.meaning:
        coding["display"] = code.meaning
    return {"coding": [coding]}


def _key(code: Code | None) -> tuple[str, str] | None:
    return (code.scheme or "", code.value or "") if code is not None else None


def _named(item: ContentItem) -> str:
    """How a warning names a content item: its position, value type and concept."""
    meaning = item.concept.meaning if item.concept and item.concept.meaning else "no concept"
    return f"content item {item.position} ({item.value_type or 'by-reference'} {meaning})"


def _quantity(item: ContentItem, notes: Notes, where: str) -> JSON | None:
    """valueQuantity of a NUM (0040,A30A) + (0040,08EA), or None with a warning naming it."""
    if item.value_type != "NUM" or item.number is None:
        held = f" (it holds {item.value_type} content)" if item.value_type != "NUM" else ""
        if item.value_type == "NUM" and item.text is not None:
            held = " (it holds text instead)"
        notes.add(f"{where}: {_named(item)} has no Numeric Value (0040,A30A){held}; not mapped")
        return None
    try:
        number = float(item.number)
    except ValueError:
        notes.add(f"{where}: {_named(item)}: Numeric Value is not a decimal; not mapped")
        return None
    if not math.isfinite(number):
        notes.add(f"{where}: {_named(item)}: Numeric Value is not finite; not mapped")
        return None
    unit = item.unit
    if unit is None or not unit.value:
        notes.add(
            f"{where}: {_named(item)} has no Measurement Units Code Sequence (0040,08EA); "
            "not mapped"
        )
        return None
    if unit.scheme != "UCUM":
        notes.add(f"{where}: {_named(item)}: unit {unit.value!r} is not UCUM; not mapped")
        return None
    value: int | float = int(number) if item.number.lstrip("+-").isdigit() else number
    out: JSON = {"value": value}
    if unit.meaning:
        out["unit"] = unit.meaning
    out["system"] = UCUM
    out["code"] = unit.value
    return out


@dataclass
class _Context:
    """What every resource of one SR shares."""

    record: InstanceRecord
    content: SrContent
    release: Release
    options: MapOptions
    notes: Notes
    patient_ref: str
    study_ref: str
    instances: dict[str, tuple[str, str]]  # SOP Instance UID -> (series UID, SOP Class UID)
    entries: list[JSON] = field(default_factory=list)
    children: dict[int, list[int]] = field(default_factory=dict)

    @property
    def where(self) -> str:
        return f"SR {self.record.sop_instance_uid}"

    def kids(self, index: int) -> list[tuple[int, ContentItem]]:
        return [(i, self.content.items[i]) for i in self.children.get(index, ())]

    def full_url(self, kind: str, item: ContentItem) -> str:
        return ids.full_url(kind, self.record.sop_instance_uid, item.position)

    def fallback_identifier(self, item: ContentItem) -> JSON:
        """An identifier for an item without Observation UID: a UUID of the SR's SOP Instance
        UID and the item's position (the same on every conversion)."""
        key = ids.resource_uuid("sr-content-item", self.record.sop_instance_uid, item.position)
        return {"system": RFC3986, "value": f"urn:uuid:{key}"}

    def add(self, full_url: str, resource: JSON) -> None:
        first = resource["identifier"][0]
        request = {
            "method": "POST",
            "url": resource["resourceType"],
            "ifNoneExist": search_token(first.get("system"), first["value"]),
        }
        self.entries.append({"fullUrl": full_url, "resource": resource, "request": request})


def measurement_entries(
    records: Sequence[InstanceRecord],
    patient_ref: str,
    study_ref: str,
    release: Release,
    options: MapOptions,
    notes: Notes,
) -> list[JSON]:
    """The Observation (and R5 ImagingSelection, BodyStructure) entries of a study's SRs, in
    record order then document order; none with ``options.measurements`` off."""
    if not options.measurements:
        return []
    instances = {r.sop_instance_uid: (r.series_instance_uid, r.sop_class_uid) for r in records}
    out: list[JSON] = []
    for record in records:
        content = record.sr
        if content is None:
            continue
        ctx = _Context(record, content, release, options, notes, patient_ref, study_ref, instances)
        for warning in content.warnings:
            notes.add(f"{ctx.where}: {warning}")
        for i, item in enumerate(content.items):
            ctx.children.setdefault(item.parent, []).append(i)
        title = _key(content.title)
        try:
            if title == MEASUREMENT_REPORT or content.template == "1500":
                _measurement_report(ctx)
            elif title == DOSE_REPORT:
                _dose_report(ctx)
        except Exception as exc:  # a mapping bug costs this SR's measurements, not the study
            # The type only in the report: a message may quote content (patient data).
            notes.add(f"{ctx.where}: measurements not mapped (internal error {type(exc).__name__})")
            log.debug("%s: measurements not mapped", ctx.where, exc_info=True)
            continue
        out += ctx.entries
    return out


_KINDS = ("Observation", "ImagingSelection", "BodyStructure")


def entry_owners(records: Iterable[InstanceRecord]) -> dict[str, InstanceRecord]:
    """The fullUrls :func:`measurement_entries` may give each SR record (by content item
    position), so that a validation error in one of them is traced to that SR instance
    (:mod:`fhirimg.partial`), never to the whole study."""
    out: dict[str, InstanceRecord] = {}
    for record in records:
        if record.sr is None:
            continue
        for position in ("1", *(i.position for i in record.sr.items)):
            for kind in _KINDS:
                out[ids.full_url(kind, record.sop_instance_uid, position)] = record
    return out


# --------------------------------------------------------------------------- shared elements


def _issued(ctx: _Context, item: ContentItem | None) -> JSON:
    """``issued`` (an instant) and ``effectiveDateTime`` from the item's Observation DateTime
    (0040,A032), else the document's Content Date (0008,0023) + Time (0008,0033)."""
    rec, zone = ctx.record, ctx.options.timezone
    if item is not None and item.observation_datetime:
        value, warn = values.fhir_datetime_from_dt(
            item.observation_datetime, rec.timezone_offset, zone
        )
    else:
        value, warn = values.fhir_datetime(
            rec.content_date, rec.content_time, rec.timezone_offset, zone
        )
    ctx.notes.extend(f"{ctx.where}: observation time: {w}" for w in warn)
    if not value:
        return {}
    if "T" in value:
        return {"effectiveDateTime": value, "issued": value}
    return {"effectiveDateTime": value}


def _identifiers(ctx: _Context, item: ContentItem) -> list[JSON]:
    """(0040,A171) Observation UID (IG slice observationUID), else the fallback identifier."""
    uid = item.observation_uid
    if uid and values.is_valid_uid(uid):
        return [
            {
                "type": {"coding": [{"system": IDENTIFIER_TYPE, "code": "observation-uid"}]},
                "system": DICOM_UID_SYSTEM,
                "value": f"urn:oid:{uid}",
            }
        ]
    if uid:
        ctx.notes.add(f"{ctx.where}: {_named(item)}: Observation UID is not a DICOM UID")
    return [ctx.fallback_identifier(item)]


def _based_on(ctx: _Context) -> list[JSON]:
    """The ServiceRequest by (0008,0050) Accession Number, identifier only (type v2-0203#ACSN)."""
    rec = ctx.record
    if not rec.accession_number:
        return []
    ident: JSON = {"type": {"coding": [{"system": V2_0203, "code": "ACSN"}]}}
    system = issuer_system(rec.accession_issuer, dict(ctx.options.accession_systems))
    if system:
        ident["system"] = system
    ident["value"] = rec.accession_number
    return [{"type": "ServiceRequest", "identifier": ident}]


def _device(ctx: _Context, algorithm: str | None) -> JSON | None:
    """A logical Device reference: the algorithm (TID 4019) or the General Equipment,
    (0008,0070) Manufacturer + (0008,1090) Model, identified by (0018,1002) Device UID."""
    rec = ctx.record
    equipment = " ".join(t for t in (rec.manufacturer, rec.model_name) if t)
    display = algorithm or equipment
    out: JSON = {}
    if ctx.content.device_uid and values.is_valid_uid(ctx.content.device_uid):
        out["identifier"] = {
            "system": DICOM_UID_SYSTEM,
            "value": f"urn:oid:{ctx.content.device_uid}",
        }
    if display:
        out["display"] = display
    return out or None


def _observation(
    ctx: _Context,
    item: ContentItem,
    code: JSON,
    category: JSON | None = None,
    extra_identifiers: Iterable[JSON] = (),
    algorithm: str | None = None,
) -> JSON:
    """The elements every Observation of an SR has, in FHIR's element order (R4 and R5 share
    it for these): identifier, basedOn, partOf, status, category, code, subject, effective,
    issued, device."""
    obs: JSON = {
        "resourceType": "Observation",
        "identifier": [*_identifiers(ctx, item), *extra_identifiers],
    }
    based_on = _based_on(ctx)
    if based_on:
        obs["basedOn"] = based_on
    obs["partOf"] = [{"reference": ctx.study_ref}]
    obs["status"] = _STATUS.get((ctx.content.preliminary or "FINAL").upper(), "final")
    if category is not None:
        obs["category"] = [category]
    obs["code"] = code
    obs["subject"] = {"reference": ctx.patient_ref}
    obs.update(_issued(ctx, item))
    device = _device(ctx, algorithm)
    if device:
        obs["device"] = device
    return obs


_ORDER = (
    "resourceType", "extension", "identifier", "basedOn", "partOf", "status", "category", "code",
    "subject", "effectiveDateTime", "issued", "valueQuantity", "valueCodeableConcept",
    "valueString", "bodySite", "bodyStructure", "method", "device", "hasMember", "derivedFrom",
    "component",
)  # fmt: skip


def _ordered(obs: JSON) -> JSON:
    return {k: obs[k] for k in _ORDER if k in obs}


# --------------------------------------------------------------------------- TID 1500


@dataclass
class _Group:
    """What a measurement group passes on to its members."""

    derived_from: list[JSON] = field(default_factory=list)
    site: JSON = field(default_factory=dict)  # bodySite or bodyStructure
    algorithm: str | None = None
    extensions: list[JSON] = field(default_factory=list)  # R4 image regions


def _measurement_report(ctx: _Context) -> None:
    """TID 1500: the groups under Imaging Measurements (126010), then Derived Imaging
    Measurements (126011, TID 1420)."""
    items = ctx.content.items
    groups: list[str] = []  # fullUrls of the group Observations
    derived: list[int] = []
    nested: set[int] = set()  # groups inside groups (TID 1500 has none): not mapped
    for i, item in enumerate(items):
        key = _key(item.concept)
        if item.value_type == "CONTAINER" and key == MEASUREMENT_GROUP:
            outer = _ancestor_group(ctx, i)
            if outer is not None:
                if outer not in nested:  # one warning for the outermost group inside a group
                    ctx.notes.add(
                        f"{ctx.where}: {_named(item)}: a group inside a group; it and the "
                        "groups inside it are not mapped"
                    )
                nested.add(i)
                continue
            url = _group(ctx, i, item)
            if url:
                groups.append(url)
        elif item.value_type == "CONTAINER" and key == DERIVED_MEASUREMENTS:
            derived.append(i)
    for i in derived:
        for _, child in ctx.kids(i):
            if child.value_type == "NUM" and child.relationship == "CONTAINS":
                _derived(ctx, child, groups)


def _ancestor_group(ctx: _Context, index: int) -> int | None:
    """The index of the nearest Measurement Group containing item ``index``, if any (parents come
    before their children in the flat list, so the walk ends)."""
    parent = ctx.content.items[index].parent
    while 0 <= parent < index:
        if _key(ctx.content.items[parent].concept) == MEASUREMENT_GROUP:
            return parent
        index, parent = parent, ctx.content.items[parent].parent
    return None


def _group(ctx: _Context, index: int, item: ContentItem) -> str | None:
    """One measurement group: its members first (so hasMember resolves), then the group."""
    group = _Group()
    tracking: list[JSON] = []
    finding_category: Code | None = None
    finding: Code | None = None
    members: list[tuple[int, ContentItem]] = []
    for child_index, child in ctx.kids(index):
        key = _key(child.concept)
        if child.value_type is None:  # by-reference: checked, used by TID 1420 only
            _by_reference(ctx, child)
            continue
        if key == TRACKING_ID and child.text:
            tracking.append(_tracking(child.text, TRACKING_ID))
        elif key == TRACKING_UID and child.text:
            if values.is_valid_uid(child.text):
                tracking.append(_tracking(f"urn:oid:{child.text}", TRACKING_UID, DICOM_UID_SYSTEM))
            else:
                ctx.notes.add(f"{ctx.where}: {_named(child)}: not a DICOM UID; left out")
        elif key == FINDING_CATEGORY and child.code:
            finding_category = child.code
        elif key == FINDING and child.code:
            finding = child.code
        elif key == FINDING_SITE and child.code:
            group.site = _finding_site(ctx, child_index, child)
        elif key == ALGORITHM_NAME and child.text:
            version = next(
                (k.text for _, k in ctx.kids(index) if _key(k.concept) == ALGORITHM_VERSION),
                None,
            )
            group.algorithm = f"{child.text} {version}" if version else child.text
        elif key == IMAGE_REGION or child.value_type in ("SCOORD", "SCOORD3D", "IMAGE"):
            _region(ctx, child_index, child, group)
        elif child.relationship == "CONTAINS" and child.value_type in ("NUM", "CODE", "TEXT"):
            members.append((child_index, child))
        elif key == QUALITATIVE_EVALUATIONS and child.value_type == "CONTAINER":
            members += [
                (i, k) for i, k in ctx.kids(child_index) if k.value_type in ("CODE", "TEXT")
            ]
    if not group.derived_from:
        group.derived_from = [{"reference": ctx.study_ref}]
    member_urls = [u for u in (_member(ctx, i, m, group) for i, m in members) if u]
    if finding_category is not None:
        code = concept(finding_category)
        category: JSON | None = concept(Code("125007", "DCM", "Measurement Group"))
    else:  # invariant measurement-group-category: code DCM#125007 carries no category
        code, category = concept(Code("125007", "DCM", "Measurement Group")), None
    obs = _observation(ctx, item, code, category, tracking, group.algorithm)
    if finding is not None:
        obs["valueCodeableConcept"] = concept(finding)
    obs.update(group.site)
    if member_urls:
        obs["hasMember"] = [{"reference": u} for u in member_urls]
    obs["derivedFrom"] = group.derived_from
    if group.extensions:
        obs["extension"] = group.extensions
    url = ctx.full_url("Observation", item)
    ctx.add(url, _ordered(obs))
    return url


def _tracking(value: str, key: tuple[str, str], system: str | None = None) -> JSON:
    """A tracking identifier (IG: trackingIdentifier / trackingUid slices, type DCM code)."""
    ident: JSON = {"type": {"coding": [{"system": DCM, "code": key[1]}]}}
    if system:
        ident["system"] = system
    ident["value"] = value
    return ident


def _by_reference(ctx: _Context, item: ContentItem) -> None:
    """A by-reference relationship (0040,DB73) must not point at the item's own ancestors."""
    target = item.reference_to or ""
    if item.position == target or item.position.startswith(f"{target}."):
        ctx.notes.add(
            f"{ctx.where}: {_named(item)} refers to {target}, which contains it "
            "(a reference loop); ignored"
        )


def _finding_site(ctx: _Context, index: int, item: ContentItem) -> JSON:
    """SCT 363698007 Finding Site: ``bodySite``; with Laterality (SCT 272741003) or a
    Topographical modifier (SCT 106233006), R5 ``bodyStructure`` (a BodyStructure entry, IG
    profile dicom-sr-finding-site; never both: R5 obs-8) and in R4 ``bodySite`` with the
    qualifiers in its text."""
    assert item.code is not None
    laterality = modifier = None
    for _, k in ctx.kids(index):
        if _key(k.concept) == LATERALITY and k.code:
            laterality = k.code
        elif _key(k.concept) == TOPOGRAPHICAL_MODIFIER and k.code:
            modifier = k.code
    site = concept(item.code)
    if laterality is None and modifier is None:
        return {"bodySite": site}
    if not ctx.release.observation_body_structure:
        words = [c.meaning for c in (item.code, laterality, modifier) if c and c.meaning]
        return {"bodySite": {**site, "text": ", ".join(words)}}
    included: JSON = {"structure": site}
    if laterality is not None:
        included["laterality"] = concept(laterality)
    if modifier is not None:
        included["qualifier"] = [concept(modifier)]
    body: JSON = {
        "resourceType": "BodyStructure",
        "identifier": [ctx.fallback_identifier(item)],
        "includedStructure": [included],
        "patient": {"reference": ctx.patient_ref},
    }
    url = ctx.full_url("BodyStructure", item)
    ctx.add(url, body)
    return {"bodyStructure": {"reference": url}}


def _region(ctx: _Context, index: int, item: ContentItem, group: _Group) -> None:
    """An image region (SCOORD with its SELECTED FROM image, or SCOORD3D) or a source image
    (IMAGE): an R5 ImagingSelection in ``derivedFrom``; in R4 the region extension."""
    refs = list(item.references)
    if item.value_type == "SCOORD":
        refs = [r for _, k in ctx.kids(index) if k.value_type == "IMAGE" for r in k.references]
    listed = []
    for ref in refs:
        if ref.sop_instance_uid in ctx.instances:
            listed.append(ref)
        else:
            ctx.notes.add(
                f"{ctx.where}: {_named(item)} refers to an instance the study does not list "
                "(yet); that reference is left out"
            )
    if item.value_type in ("SCOORD", "IMAGE") and not listed:
        return
    if item.value_type == "SCOORD" and (item.graphic_type or "") not in _REGION_TYPES:
        ctx.notes.add(
            f"{ctx.where}: {_named(item)}: graphic type {item.graphic_type!r} has no FHIR "
            "region type; the region is left out"
        )
        return
    if not ctx.release.imaging_selection:
        for ref in listed:
            group.extensions.append(_r4_region(item, ref.sop_instance_uid or "", ref.frames))
        if item.value_type == "SCOORD3D":
            ctx.notes.add(f"{ctx.where}: {_named(item)}: a 3D region has no R4 form; left out")
        return
    selection: JSON = {
        "resourceType": "ImagingSelection",
        "identifier": [ctx.fallback_identifier(item)],
        "status": "available",
        "subject": {"reference": ctx.patient_ref},
        "studyUid": ctx.record.study_instance_uid,
        "derivedFrom": [{"reference": ctx.study_ref}],
    }
    series = {ctx.instances[r.sop_instance_uid or ""][0] for r in listed}
    if len(series) == 1:
        selection["seriesUid"] = series.pop()
    if item.value_type == "SCOORD3D" and item.frame_of_reference_uid:
        selection["frameOfReferenceUid"] = item.frame_of_reference_uid  # (3006,0024)
    selection["code"] = concept(item.concept or Code(*IMAGE_REGION[::-1], "Image Region"))
    instances = []
    for ref in listed:
        uid = ref.sop_instance_uid or ""
        inst: JSON = {
            "uid": uid,
            "sopClass": {"system": RFC3986, "code": f"urn:oid:{ctx.instances[uid][1]}"},
        }
        if ref.frames:
            inst["subset"] = [str(f) for f in ref.frames]
        if item.value_type == "SCOORD":
            inst["imageRegion2D"] = [
                {
                    "regionType": (item.graphic_type or "").lower(),
                    "coordinate": list(item.graphic_data),
                }
            ]
        instances.append(inst)
    if instances:
        selection["instance"] = instances
    url = ctx.full_url("ImagingSelection", item)
    ctx.add(url, selection)
    group.derived_from.append({"reference": url})


def _r4_region(item: ContentItem, uid: str, frames: tuple[int, ...]) -> JSON:
    """fhirimg's R4 image-region extension: instance (0008,1155), frames (0008,1160), region
    type (0070,0023) and coordinates (0070,0022) as column,row pairs, unchanged."""
    parts: list[JSON] = [{"url": "instance", "valueOid": f"urn:oid:{uid}"}]
    parts += [{"url": "frame", "valuePositiveInt": f} for f in frames]
    if item.value_type == "SCOORD":
        parts.append({"url": "regionType", "valueCode": (item.graphic_type or "").lower()})
        parts += [{"url": "coordinate", "valueDecimal": c} for c in item.graphic_data]
    return {"url": REGION_EXTENSION, "extension": parts}


def _member(ctx: _Context, index: int, item: ContentItem, group: _Group) -> str | None:
    """A NUM measurement (TID 300/1419) or a CODE/TEXT qualitative evaluation of a group; the
    group's regions, site and algorithm carried over (IG example.md)."""
    key = _key(item.concept)
    if item.concept is None or key in NOT_EVALUATIONS:
        return None
    obs = _observation(ctx, item, concept(item.concept), None, (), group.algorithm)
    if item.value_type == "NUM":
        quantity = _quantity(item, ctx.notes, ctx.where)
        if quantity is None:
            return None
        obs["valueQuantity"] = quantity
    elif item.value_type == "CODE" and item.code is not None:
        obs["valueCodeableConcept"] = concept(item.code)
    elif item.value_type == "TEXT" and item.text:
        obs["valueString"] = item.text
    else:
        ctx.notes.add(f"{ctx.where}: {_named(item)} has no value; not mapped")
        return None
    for _, k in ctx.kids(index):
        if _key(k.concept) == METHOD and k.code:
            obs["method"] = concept(k.code)
    obs.update(group.site)
    obs["derivedFrom"] = list(group.derived_from)
    if group.extensions:
        obs["extension"] = list(group.extensions)
    url = ctx.full_url("Observation", item)
    ctx.add(url, _ordered(obs))
    return url


def _derived(ctx: _Context, item: ContentItem, groups: list[str]) -> None:
    """TID 1420: category DCM#126011, derivedFrom the report's group Observations."""
    if item.concept is None:
        return
    quantity = _quantity(item, ctx.notes, ctx.where)
    if quantity is None:
        return
    category = concept(Code("126011", "DCM", "Derived Imaging Measurements"))
    obs = _observation(ctx, item, concept(item.concept), category)
    obs["valueQuantity"] = quantity
    obs["derivedFrom"] = [{"reference": u} for u in groups] or [{"reference": ctx.study_ref}]
    ctx.add(ctx.full_url("Observation", item), _ordered(obs))


# --------------------------------------------------------------------------- TID 10011


def _dose_report(ctx: _Context) -> None:
    """CT Radiation Dose (TID 10011): one Observation per irradiation event (TID 10013), then
    the report's (TID 10012 accumulated values as components) with them as members."""
    events: list[str] = []
    accumulated: list[JSON] = []
    for i, item in enumerate(ctx.content.items):
        key = _key(item.concept)
        if key == CT_ACQUISITION and item.value_type == "CONTAINER":
            url = _event(ctx, i, item)
            if url:
                events.append(url)
        elif key == CT_ACCUMULATED and item.value_type == "CONTAINER":
            accumulated += _components(ctx, i, ACCUMULATED_VALUES)
    root = ContentItem(-1, "1", None, "CONTAINER", ctx.content.title)
    code = concept(ctx.content.title or Code(*DOSE_REPORT[::-1], "X-Ray Radiation Dose Report"))
    obs = _observation(ctx, root, code)
    if events:
        obs["hasMember"] = [{"reference": u} for u in events]
    obs["derivedFrom"] = [{"reference": ctx.study_ref}]
    if accumulated:
        obs["component"] = accumulated
    if not events and not accumulated:
        ctx.notes.add(f"{ctx.where}: a dose report without dose values; no Observation")
        return
    ctx.add(ctx.full_url("Observation", root), _ordered(obs))


def _components(ctx: _Context, index: int, wanted: set[tuple[str, str]]) -> list[JSON]:
    """Observation.component of the NUM children of a container whose concept is ``wanted``."""
    out = []
    for _, k in ctx.kids(index):
        if k.concept is None or _key(k.concept) not in wanted:
            continue
        quantity = _quantity(k, ctx.notes, ctx.where)
        if quantity is not None:
            out.append({"code": concept(k.concept), "valueQuantity": quantity})
    return out


def _event(ctx: _Context, index: int, item: ContentItem) -> str | None:
    """One irradiation event (TID 10013): identifier (113769) Irradiation Event UID, Target
    Region (123014) as bodySite, the CT Dose container's (113829) Mean CTDIvol (113830) and
    DLP (113838) as components."""
    event_uid = None
    components: list[JSON] = []
    site = None
    for i, k in ctx.kids(index):
        key = _key(k.concept)
        if key == IRRADIATION_EVENT_UID and k.text:
            event_uid = k.text
        elif key == TARGET_REGION and k.code:
            site = concept(k.code)
        elif key == CT_DOSE:
            components += _components(ctx, i, EVENT_DOSE_VALUES)
    if not components:
        ctx.notes.add(f"{ctx.where}: {_named(item)}: no CTDIvol or DLP; no Observation")
        return None
    extra: list[JSON] = []
    if event_uid and values.is_valid_uid(event_uid):
        extra.append(
            {
                "type": {"coding": [{"system": DCM, "code": "113769"}]},
                "system": DICOM_UID_SYSTEM,
                "value": f"urn:oid:{event_uid}",
            }
        )
    else:
        ctx.notes.add(f"{ctx.where}: {_named(item)}: no valid Irradiation Event UID (113769)")
    obs = _observation(ctx, item, concept(item.concept or Code(*CT_ACQUISITION[::-1], None)))
    # The event's UID is what identifies it (and what a re-push matches on).
    obs["identifier"] = extra + obs["identifier"] if extra else obs["identifier"]
    if site is not None:
        obs["bodySite"] = site
    obs["derivedFrom"] = [{"reference": ctx.study_ref}]
    obs["component"] = components
    url = ctx.full_url("Observation", item)
    ctx.add(url, _ordered(obs))
    return url


__all__ = ["REGION_EXTENSION", "concept", "entry_owners", "measurement_entries", "system_of"]
