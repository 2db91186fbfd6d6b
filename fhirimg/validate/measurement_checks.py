"""Imaging rules on SR measurements (issue 20): Observations and R5 ImagingSelections.

Only Observations ``partOf`` an ImagingStudy are checked (the IG's imaging-observation): FHIR
itself lets an Observation go without a value.

- ``obs-code-value``: a code and a value (value[x], dataAbsentReason, valued components or, for
  a measurement group, members);
- ``obs-ucum``: value and component Quantities are UCUM (HL7 dicom-sr imaging-measurement);
- ``obs-refs-resolve``: subject, partOf, hasMember and derivedFrom resolve in the bundle when it
  holds resources of the type they name;
- ``r5-selection-instances``: an ImagingSelection's instances are listed by the study it names.

Called by :func:`fhirimg.validate.imaging_layer.check` for each Observation and ImagingSelection;
it reports under the rules of :mod:`.rules`.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

from fhirimg.validate.rules import RuleCollector

UCUM = "http://unitsofmeasure.org"
TYPES = frozenset({"Observation", "ImagingSelection"})
_VALUES = (
    "valueQuantity", "valueCodeableConcept", "valueString", "valueBoolean", "valueInteger",
    "valueRange", "valueRatio", "valueSampledData", "valueTime", "valueDateTime", "valuePeriod",
    "valueAttachment", "valueReference",
)  # fmt: skip
_LINKS = ("subject", "partOf", "hasMember", "derivedFrom")

Resolve = Callable[[str], "dict[str, Any] | None"]


def check(
    res: dict[str, Any],
    loc: str,
    out: RuleCollector,
    resolve: Resolve,
    types: Collection[str],
    bundle: dict[str, Any],
) -> None:
    """The rules of this module on one resource of :data:`TYPES` at ``loc``."""
    if res.get("resourceType") == "ImagingSelection":
        if out.applies("r5-selection-instances"):
            _selection(res, loc, out, bundle)
        return
    if not _of_imaging_study(res, resolve):
        return  # an Observation of another kind: FHIR's own rules only
    _code_value(res, loc, out)
    _ucum(res.get("valueQuantity"), f"{loc}.valueQuantity", out)
    for i, comp in enumerate(_list(res.get("component"))):
        if isinstance(comp, dict):
            _ucum(comp.get("valueQuantity"), f"{loc}.component[{i}].valueQuantity", out)
    for name in _LINKS:
        value = res.get(name)
        refs = value if isinstance(value, list) else [value]
        for i, ref in enumerate(refs):
            where = f"{loc}.{name}[{i}]" if isinstance(value, list) else f"{loc}.{name}"
            _resolves(ref, where, out, resolve, types)


def _of_imaging_study(res: dict[str, Any], resolve: Resolve) -> bool:
    """Whether the Observation is an imaging one: ``partOf`` an ImagingStudy (HL7 dicom-sr
    imaging-observation, slice imagingStudyRef 1..1) by reference, type or bundle entry."""
    for part in _list(res.get("partOf")):
        if not isinstance(part, dict):
            continue
        ref = part.get("reference")
        if part.get("type") == "ImagingStudy":
            return True
        if isinstance(ref, str):
            if ref.startswith(("ImagingStudy/", "ImagingStudy?")):
                return True
            target = resolve(ref)
            if target is not None and target.get("resourceType") == "ImagingStudy":
                return True
    return False


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _has_code(concept: Any) -> bool:
    if not isinstance(concept, dict):
        return False
    codings = _list(concept.get("coding"))
    return bool(concept.get("text")) or any(
        isinstance(c, dict) and isinstance(c.get("code"), str) and c["code"] for c in codings
    )


def _code_value(res: dict[str, Any], loc: str, out: RuleCollector) -> None:
    if not _has_code(res.get("code")):
        out.fail("obs-code-value", f"{loc}.code", "the Observation has no code")
    if any(k in res for k in _VALUES) or "dataAbsentReason" in res or _list(res.get("hasMember")):
        return
    comps = [c for c in _list(res.get("component")) if isinstance(c, dict)]
    if comps and all(any(k in c for k in _VALUES) or "dataAbsentReason" in c for c in comps):
        return
    out.fail(
        "obs-code-value",
        loc,
        "the Observation has no value (value[x], dataAbsentReason, valued components) and no "
        "members",
    )


def _ucum(quantity: Any, loc: str, out: RuleCollector) -> None:
    if not isinstance(quantity, dict):
        return
    if quantity.get("system") != UCUM:
        out.fail("obs-ucum", f"{loc}.system", f"the unit is not UCUM (system {UCUM})")
    elif not isinstance(quantity.get("code"), str) or not quantity["code"]:
        out.fail("obs-ucum", f"{loc}.code", "the UCUM quantity has no unit code")


def _resolves(
    value: Any, loc: str, out: RuleCollector, resolve: Resolve, types: Collection[str]
) -> None:
    """A relative or conditional reference to a type the bundle holds must be one of its entries;
    ``urn:uuid:`` references are the bundle layer's (bdl-ref-resolves)."""
    ref = value.get("reference") if isinstance(value, dict) else None
    if not isinstance(ref, str) or ref.startswith(("urn:", "#", "http://", "https://")):
        return
    rtype = ref.split("?", 1)[0].split("/", 1)[0]
    if rtype not in types or resolve(ref) is not None:
        return
    out.fail(
        "obs-refs-resolve",
        f"{loc}.reference",
        f"{ref} is not an entry of the bundle, which holds {rtype} resources: refer to the "
        "entry's fullUrl",
    )


def _listed(bundle: dict[str, Any]) -> dict[str, dict[str, set[str]]]:
    """Study Instance UID -> series UID -> SOP Instance UIDs, of the bundle's ImagingStudies."""
    studies: dict[str, dict[str, set[str]]] = {}
    for entry in _list(bundle.get("entry")):
        res = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(res, dict) or res.get("resourceType") != "ImagingStudy":
            continue
        for ident in _list(res.get("identifier")):
            value = ident.get("value") if isinstance(ident, dict) else None
            if isinstance(value, str) and value.startswith("urn:oid:"):
                series = studies.setdefault(value[len("urn:oid:") :], {})
                for s in _list(res.get("series")):
                    if isinstance(s, dict):
                        uids = [
                            i.get("uid") for i in _list(s.get("instance")) if isinstance(i, dict)
                        ]
                        series.setdefault(str(s.get("uid")), set()).update(
                            u for u in uids if isinstance(u, str)
                        )
    return studies


def _selection(res: dict[str, Any], loc: str, out: RuleCollector, bundle: dict[str, Any]) -> None:
    study = _listed(bundle).get(str(res.get("studyUid")))
    if study is None:
        return  # the study is not in this bundle (a part file, a selection sent alone)
    series_uid = res.get("seriesUid")
    if series_uid is not None and not isinstance(series_uid, str):
        return  # not an id: the model layer's finding
    if series_uid is not None and series_uid not in study:
        out.fail(
            "r5-selection-instances",
            f"{loc}.seriesUid",
            f"series {series_uid} is not a series of the study",
        )
        return
    pool = study[series_uid] if series_uid is not None else set().union(*study.values())
    for i, inst in enumerate(_list(res.get("instance"))):
        uid = inst.get("uid") if isinstance(inst, dict) else None
        if not isinstance(uid, str) or uid not in pool:
            out.fail(
                "r5-selection-instances",
                f"{loc}.instance[{i}].uid",
                f"instance {uid} is not listed by the study"
                + (" in that series" if series_uid is not None else ""),
            )
