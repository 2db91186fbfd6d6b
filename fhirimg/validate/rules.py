"""The rule table of the bundle and imaging layers: one list, each rule with its releases and paths.

Every check of :mod:`.bundle_layer` and :mod:`.imaging_layer` reports under the id of a rule of
:data:`RULES` (``Finding.rule``), and only for a release the rule lists: a check that fires for a
release its rule does not list is a bug, and :class:`RuleCollector` raises for it (the validator
turns that into a "could not check" finding, which the tests see). Where the same idea sits in
another place in R5 (``ImagingStudy.modality`` is a CodeableConcept, rendered images are
DocumentReference), the layers read the element paths the table gives for the release (:func:`read`),
so a rule cannot hold for one release only by accident. A rule that does not apply to a release
says why in ``not_in`` (what that release removed, or has not got).

docs/validate.md lists this table; tests/test_validate_rules.py breaks each rule in each release.

>>> rule("img-series-modality-in-study").releases
('r4', 'r5')
>>> study = {"resourceType": "ImagingStudy", "modality": [{"coding": [{}]}]}
>>> [loc for loc, _ in read("img-modality-coding", "r5", study, "S")]
['S.modality[0].coding[0]']
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from fhirimg.validate.findings import Collector, Layer, Severity

RELEASES = ("r4", "r5")


@dataclass(frozen=True, eq=False)
class Rule:
    """One check: ``paths`` maps each release the rule applies to onto the element paths it reads
    there (FHIRPath-like, from the resource type, without indices); ``not_in`` says for each other
    release why the rule does not apply."""

    id: str
    layer: Layer
    severity: Severity
    checks: str
    source: str
    paths: Mapping[str, tuple[str, ...]]
    not_in: Mapping[str, str] = field(default_factory=dict)

    @property
    def releases(self) -> tuple[str, ...]:
        return tuple(r for r in RELEASES if r in self.paths)


def _both(*paths: str) -> dict[str, tuple[str, ...]]:
    return {"r4": paths, "r5": paths}


_B, _I = Layer.BUNDLE, Layer.IMAGING
_E, _W = Severity.ERROR, Severity.WARNING
_HTTP = "FHIR http.html#transaction"
_REQ = ("Bundle.entry.request.method", "Bundle.entry.request.url")
# Where an attachment sits. R5 removed Media: its content (an Attachment) became
# DocumentReference.content.attachment (HL7 cross-version profile-DocumentReference-for-Media).
_ATTACHMENTS = {
    "r4": ("Media.content", "DocumentReference.content.attachment", "Binary.contentType"),
    "r5": ("DocumentReference.content.attachment", "Binary.contentType"),
}
# The rendered image of one frame (fhir-imaging-spec.md, Media / DocumentReference).
_RENDERED_TYPE = {"r4": "Media", "r5": "DocumentReference"}
_NO_R4_DOCREF_INVARIANT = (
    "R4 DocumentReference.context is one backbone element with its own facilityType and "
    "practiceSetting; docRef-1/docRef-2 are R5 invariants"
)

RULES: tuple[Rule, ...] = (
    # -- bundle layer: Bundle integrity (the same in R4 and R5) -------------------------------
    Rule("bdl-fullurl-unique", _B, _E,
         "fullUrl unique: in a transaction or batch outright, elsewhere unless meta.versionId "
         "differs; not in history bundles",
         "bdl-7; bundle.html#bundle-unique",
         _both("Bundle.entry.fullUrl", "Bundle.entry.resource.meta.versionId")),
    Rule("bdl-fullurl-form", _B, _E,
         "fullUrl is urn:uuid: + a lowercase UUID, urn:oid: + an OID, or an absolute URL",
         "bundle.html#bundle-unique; references.html#literal",
         _both("Bundle.entry.fullUrl")),
    Rule("bdl-fullurl-missing", _B, _W,
         "a transaction or batch entry with a resource has a fullUrl (else nothing can refer to it)",
         "bundle.html#references",
         _both("Bundle.entry.fullUrl")),
    Rule("bdl-request", _B, _E,
         "transaction and batch entries carry request with method (an HTTP verb) and url",
         f"bdl-3; {_HTTP}",
         _both("Bundle.entry.request", *_REQ)),
    Rule("bdl-request-resource", _B, _E,
         "a POST, PUT or PATCH entry carries a resource",
         _HTTP,
         _both("Bundle.entry.request.method", "Bundle.entry.resource")),
    Rule("bdl-request-url", _B, _E,
         "request.url starts with a resource type (or is metadata / an operation); a POST url "
         "is the type only; a PUT url is Type/id or Type?query",
         _HTTP,
         _both(*_REQ)),
    Rule("bdl-request-url-relative", _B, _W,
         "request.url is relative to the server base",
         _HTTP,
         _both("Bundle.entry.request.url")),
    Rule("bdl-request-url-type", _B, _E,
         "the type in a POST or PUT request.url is the resource's type",
         _HTTP,
         _both("Bundle.entry.request.url", "Bundle.entry.resource.resourceType")),
    Rule("bdl-put-id", _B, _E,
         "PUT Type/id carries the same id in the resource",
         "http.html#update",
         _both("Bundle.entry.request.url", "Bundle.entry.resource.id")),
    Rule("bdl-conditional-query", _B, _E,
         "conditional URLs and ifNoneExist are well-formed search queries (ifNoneExist without "
         "'Type?')",
         "http.html#cond-update, http.html#ccreate, search.html",
         _both("Bundle.entry.request.url", "Bundle.entry.request.ifNoneExist")),
    Rule("bdl-ifnoneexist-post", _B, _W,
         "ifNoneExist is only given on POST",
         "http.html#ccreate",
         _both("Bundle.entry.request.method", "Bundle.entry.request.ifNoneExist")),
    Rule("bdl-conditional-identifier", _B, _E,
         "the identifier a conditional URL or ifNoneExist names (identifier=system|value) is an "
         "identifier of the resource the entry creates or updates, so a second run finds it",
         "http.html#cond-update, http.html#ccreate; fhir-imaging-spec.md Transaction Bundles",
         _both("Bundle.entry.request.url", "Bundle.entry.request.ifNoneExist",
               "Bundle.entry.resource.identifier")),
    Rule("bdl-ref-resolves", _B, _E,
         "every urn:uuid: reference (in contained resources too) is the fullUrl of an entry",
         "bundle.html#references",
         _both("Reference.reference")),
    Rule("bdl-ref-contained", _B, _E,
         "a #id reference names a contained resource of the same container",
         "ref-1; references.html#contained",
         _both("Reference.reference", "Resource.contained.id")),
    Rule("bdl-ref-form", _B, _E,
         "a relative reference is Type/id; a conditional reference Type?query is a well-formed "
         "query",
         "references.html#literal, http.html#trules",
         _both("Reference.reference")),
    Rule("bdl-ref-target-type", _B, _E,
         "the referenced type is one the element allows (ImagingStudy.subject: Patient, Device, "
         "Group) and agrees with Reference.type",
         "ElementDefinition.type.targetProfile (references.json)",
         _both("Reference.reference", "Reference.type")),
    # -- imaging layer: DICOM and the ImagingStudy notes ------------------------------------
    Rule("img-study-uid-identifier", _I, _E,
         "the Study Instance UID identifier has system urn:dicom:uid and value urn:oid:<uid> "
         "(missing: a warning)",
         "ImagingStudy.identifier notes; DICOM (0020,000D)",
         _both("ImagingStudy.identifier")),
    Rule("img-uid-syntax", _I, _E,
         "study, series and instance UIDs are DICOM UIDs: digits and dots, no leading zeros, "
         "at most 64 characters",
         "DICOM PS3.5 section 9.1; (0020,000D), (0020,000E), (0008,0018)",
         _both("ImagingStudy.identifier.value", "ImagingStudy.series.uid",
               "ImagingStudy.series.instance.uid")),
    Rule("img-series-uid-unique", _I, _E,
         "no series UID repeats within the study",
         "DICOM PS3.3 C.7.3.1 (0020,000E)",
         _both("ImagingStudy.series.uid")),
    Rule("img-instance-uid-unique", _I, _E,
         "no SOP Instance UID repeats within the study",
         "DICOM PS3.3 C.12.1 (0008,0018)",
         _both("ImagingStudy.series.instance.uid")),
    Rule("img-number-of-series", _I, _E,
         "numberOfSeries is not below the series listed (above: a warning, a partial study)",
         "ImagingStudy.numberOfSeries; DICOM (0020,1206)",
         _both("ImagingStudy.numberOfSeries", "ImagingStudy.series")),
    Rule("img-number-of-instances", _I, _E,
         "numberOfInstances of the study and of each series is not below the instances listed "
         "(above: a warning)",
         "ImagingStudy.numberOfInstances, series.numberOfInstances; DICOM (0020,1208), (0020,1209)",
         _both("ImagingStudy.numberOfInstances", "ImagingStudy.series.numberOfInstances",
               "ImagingStudy.series.instance")),
    Rule("img-modality-coding", _I, _E,
         "study and series modality codings use the DICOM system "
         "http://dicom.nema.org/resources/ontology/DCM and have a code",
         "ImagingStudy.modality, series.modality bindings; DICOM (0008,0061), (0008,0060)",
         {"r4": ("ImagingStudy.modality", "ImagingStudy.series.modality"),
          "r5": ("ImagingStudy.modality.coding", "ImagingStudy.series.modality.coding")}),
    Rule("img-series-modality-in-study", _I, _E,
         "when the study lists modalities, every series modality is among them (in R4 every "
         "acquisition one: CID 29)",
         "ImagingStudy.modality definition; DICOM (0008,0061) Modalities in Study",
         {"r4": ("ImagingStudy.modality", "ImagingStudy.series.modality"),
          "r5": ("ImagingStudy.modality.coding", "ImagingStudy.series.modality.coding")}),
    Rule("img-sop-class", _I, _E,
         "SOP Class codings have system urn:ietf:rfc:3986 and code urn:oid:<SOP Class UID>",
         "ImagingStudy.series.instance.sopClass; DICOM (0008,0016)",
         _both("ImagingStudy.series.instance.sopClass")),
    Rule("img-binary-link", _I, _E,
         "the instance-binary extension points at a Binary: an entry of the bundle (urn:uuid: or "
         "Binary/<id>) or <stem>.binaries/<id>.dcm beside the bundle file",
         "fhir-imaging-spec.md Linking an instance to its Binary",
         _both("ImagingStudy.series.instance.extension.valueReference")),
    Rule("img-binary-sop-instance", _I, _E,
         "a linked Binary that holds data is an application/dicom Part 10 file whose File Meta "
         "(0002,0003) Media Storage SOP Instance UID and (0002,0002) SOP Class UID are the "
         "instance's",
         "DICOM PS3.10 section 7.1; (0008,0018), (0008,0016)",
         _both("ImagingStudy.series.instance.extension.valueReference",
               "ImagingStudy.series.instance.uid", "ImagingStudy.series.instance.sopClass",
               "Binary.contentType", "Binary.data")),
    Rule("img-attachment-content-type", _I, _E,
         "a contentType is a MIME type (type/subtype); an attachment with data has one",
         "att-1; Attachment.contentType",
         _ATTACHMENTS),
    Rule("img-attachment-binary-type", _I, _E,
         "an attachment's contentType is the one of the Binary its url points at",
         "Attachment.url, Binary.contentType",
         _ATTACHMENTS),
    Rule("img-attachment-size", _I, _E,
         "Attachment.size is the number of bytes of the data (R5: integer64, a JSON string)",
         "Attachment.size",
         _ATTACHMENTS),
    Rule("img-attachment-hash", _I, _E,
         "Attachment.hash is the base64 SHA-1 of the data",
         "Attachment.hash",
         _ATTACHMENTS),
    Rule("img-dicom-preamble", _I, _E,
         "application/dicom data starts like a DICOM file (DICM at offset 128)",
         "DICOM PS3.10 section 7.1",
         _ATTACHMENTS),
    Rule("img-rendered-content-type", _I, _E,
         "a rendered image (type media-type#image) carries an image/* attachment",
         "fhir-imaging-spec.md Media / DocumentReference; media-type code system",
         {"r4": ("Media.type", "Media.content.contentType"),
          "r5": ("DocumentReference.type", "DocumentReference.content.attachment.contentType")}),
    Rule("img-rendered-study", _I, _E,
         "a rendered image refers to its ImagingStudy (R4 Media.partOf, R5 "
         "DocumentReference.event, which replaced it); a reference into the bundle names an "
         "ImagingStudy entry",
         "fhir-imaging-spec.md Media / DocumentReference",
         {"r4": ("Media.partOf",), "r5": ("DocumentReference.event.reference",)}),
    Rule("img-rendered-instance", _I, _E,
         "the SOP Instance UID of a rendered image (its urn:dicom:uid identifier) is an "
         "instance of the study it refers to, and the subjects agree",
         "fhir-imaging-spec.md Media (identifier: SOP Instance UID + frame); DICOM (0008,0018)",
         {"r4": ("Media.identifier", "Media.subject", "Media.partOf"),
          "r5": ("DocumentReference.identifier", "DocumentReference.subject",
                 "DocumentReference.event.reference")}),
    Rule("img-subject-ref", _I, _E,
         "when the bundle holds the subject (Patient, Device, Group), the subject of a study or "
         "rendered image resolves to that entry (fullUrl or Type/id of an entry) or is an "
         "absolute URL; a part of a split study without it may name it on the server",
         "bundle.html#references; ImagingStudy.subject",
         {"r4": ("ImagingStudy.subject", "Media.subject"),
          "r5": ("ImagingStudy.subject", "DocumentReference.subject")}),
    Rule("img-endpoint-ref", _I, _E,
         "when the bundle holds an Endpoint, the study's endpoint list refers to that entry "
         "(other endpoints, e.g. a server's kept by a merge, may stay)",
         "bundle.html#references; ImagingStudy.endpoint",
         _both("ImagingStudy.endpoint")),
    Rule("r5-docref-1", _I, _E,
         "docRef-1: facilityType only when no context is an Encounter (checked natively: the "
         "FHIRPath uses resolve())",
         "R5 DocumentReference invariant docRef-1",
         {"r5": ("DocumentReference.facilityType", "DocumentReference.context")},
         {"r4": _NO_R4_DOCREF_INVARIANT}),
    Rule("r5-docref-2", _I, _E,
         "docRef-2: practiceSetting only when no context is an Encounter (checked natively)",
         "R5 DocumentReference invariant docRef-2",
         {"r5": ("DocumentReference.practiceSetting", "DocumentReference.context")},
         {"r4": _NO_R4_DOCREF_INVARIANT}),
    Rule("r5-rendered-docref", _I, _E,
         "a rendered-image DocumentReference has the R5 shape: one content with an attachment "
         "holding data or url, and its height and width on the attachment (R5 moved them there "
         "from Media)",
         "R5 Attachment.height/width; HL7 profile-DocumentReference-for-Media",
         {"r5": ("DocumentReference.content.attachment",
                 "DocumentReference.content.attachment.height",
                 "DocumentReference.content.attachment.width")},
         {"r4": "R4 rendered images are Media, whose height and width sit on the resource; "
                "R4 Attachment has no height or width"}),
    # -- imaging layer: SR measurements as Observations (issue 20, docs/measurements.md) -------
    Rule("obs-code-value", _I, _E,
         "an imaging Observation (partOf an ImagingStudy) has a code (a coding with a code, or "
         "text) and a value: value[x], "
         "dataAbsentReason, components that each have one, or members (a measurement group)",
         "Observation.code 1..1, obs-6, obs-7; HL7 dicom-sr imaging-measurement (valueQuantity "
         "1..1), imaging-measurement-group",
         _both("Observation.code", "Observation.valueQuantity", "Observation.valueCodeableConcept",
               "Observation.valueString", "Observation.dataAbsentReason",
               "Observation.component.valueQuantity", "Observation.hasMember")),
    Rule("obs-ucum", _I, _E,
         "a Quantity in an imaging Observation's value or component has system "
         "http://unitsofmeasure.org (UCUM) and a unit code",
         "HL7 dicom-sr imaging-measurement (valueQuantity: UCUM from (0040,08EA)); DICOM CID 82",
         _both("Observation.valueQuantity.system", "Observation.valueQuantity.code",
               "Observation.component.valueQuantity.system",
               "Observation.component.valueQuantity.code")),
    Rule("obs-refs-resolve", _I, _E,
         "an imaging Observation's subject, partOf, hasMember and derivedFrom resolve to entries of the "
         "bundle (fullUrl or Type/id of an entry) when the bundle holds resources of the type "
         "they name",
         "bundle.html#references; HL7 dicom-sr imaging-observation (partOf imagingStudyRef, "
         "derivedFrom)",
         _both("Observation.subject", "Observation.partOf", "Observation.hasMember",
               "Observation.derivedFrom")),
    Rule("r5-selection-instances", _I, _E,
         "an ImagingSelection names instances that the bundle's ImagingStudy of its studyUid "
         "lists, in the series its seriesUid names",
         "R5 ImagingSelection.instance.uid, .studyUid, .seriesUid; HL7 dicom-sr image-region-2d",
         {"r5": ("ImagingSelection.studyUid", "ImagingSelection.seriesUid",
                 "ImagingSelection.instance.uid")},
         {"r4": "ImagingSelection is an R5 resource; R4 measurements carry their regions in "
                "fhirimg's image-region extension (docs/measurements.md)"}),
)  # fmt: skip


@cache
def _by_id() -> dict[str, Rule]:
    table = {r.id: r for r in RULES}
    assert len(table) == len(RULES), "rule ids repeat"
    return table


def rule(rule_id: str) -> Rule:
    """The rule with id ``rule_id`` (KeyError when there is none)."""
    return _by_id()[rule_id]


def rendered_type(release: str) -> str:
    """The resource type of a rendered image in ``release`` (Media in R4, DocumentReference in R5)."""
    return _RENDERED_TYPE[release]


class RuleNotForRelease(Exception):
    """A layer reported a rule for a release the table does not list: a bug in fhirimg."""


class RuleCollector(Collector):
    """A :class:`Collector` whose findings carry a rule id, checked against the table."""

    __slots__ = ("release",)

    def __init__(self, file: str, layer: Layer, release: str) -> None:
        super().__init__(file, layer)
        self.release = release

    def applies(self, rule_id: str) -> bool:
        return self.release in rule(rule_id).paths

    def fail(
        self, rule_id: str, location: str, message: str, severity: Severity | None = None
    ) -> None:
        """Report ``rule_id`` broken at ``location`` (with the rule's severity unless given)."""
        r = rule(rule_id)
        if self.release not in r.paths or r.layer is not self.layer:
            raise RuleNotForRelease(f"{rule_id} reported by {self.layer.value} for {self.release}")
        self.add(severity or r.severity, location, message, rule=rule_id)


def read(
    rule_id: str, release: str, res: dict[str, Any], loc: str, under: str = ""
) -> Iterator[tuple[str, Any]]:
    """(location, value) of every element the table's paths for ``rule_id`` in ``release`` name in
    ``res`` (the paths that start with its resourceType, and then with ``under`` when given;
    lists are walked with their indices).

    Used where R4 and R5 keep the same thing in different places, so that the check reads the
    paths the table (and docs/validate.md) give.
    """
    rtype = res.get("resourceType")
    for path in rule(rule_id).paths.get(release, ()):
        head, _, rest = path.partition(".")
        if head == rtype and rest and rest.startswith(under):
            yield from _select(res, loc, rest.split("."))


def _select(node: Any, loc: str, names: list[str]) -> Iterator[tuple[str, Any]]:
    if not names:
        yield loc, node
        return
    if not isinstance(node, dict) or names[0] not in node:
        return
    value, here = node[names[0]], f"{loc}.{names[0]}"
    if isinstance(value, list):
        for i, item in enumerate(value):
            yield from _select(item, f"{here}[{i}]", names[1:])
    else:
        yield from _select(value, here, names[1:])


def markdown_table() -> str:
    """The rule table as Markdown, as docs/validate.md lists it (a test keeps the two equal)."""

    def cell(text: str) -> str:
        return " ".join(text.split()).replace("|", "\\|")

    lines = [
        "| rule | layer | releases | what it checks | reads | source |",
        "|---|---|---|---|---|---|",
    ]
    for r in RULES:
        releases = ", ".join(x.upper() for x in r.releases)
        for release, why in r.not_in.items():
            releases += f"; not {release.upper()}: {why}"
        paths = {r.paths[x] for x in r.releases}
        if len(paths) == 1:
            reads = ", ".join(f"`{p}`" for p in r.paths[r.releases[0]])
        else:
            reads = "; ".join(
                f"{x.upper()}: " + ", ".join(f"`{p}`" for p in r.paths[x]) for x in r.releases
            )
        severity = "" if r.severity is Severity.ERROR else f" ({r.severity.value})"
        lines.append(
            f"| `{r.id}` | {r.layer.value}{severity} | {cell(releases)} | {cell(r.checks)} "
            f"| {cell(reads)} | {cell(r.source)} |"
        )
    return "\n".join(lines) + "\n"
