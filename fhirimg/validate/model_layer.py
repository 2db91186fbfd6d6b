"""Layer 2, the fhir.resources models: R4B models for R4 output, the top-level (R5) models for R5.

fhir.resources checks required elements, single-vs-list, unknown elements, primitive regexes and
choice exclusivity; it does not check required-binding codes, reference targets, invariants, id
length, base64 or empty arrays (the other layers do). The models come from the release modules of
:mod:`fhirimg.fhir` (the FHIR-version seam, below this package), which load them lazily because they
take a while to load.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from fhirimg.fhir import release as get_release
from fhirimg.validate.findings import Collector, Finding, Layer, cannot_check


def model_class(release: str, resource_type: str) -> Any | None:
    """The model class of ``resource_type`` in ``release``, or None when the release has none.

    The release modules (:mod:`fhirimg.fhir.r4`, :mod:`fhirimg.fhir.r5`) are the only places that
    import ``fhir.resources``: this asks them.
    """
    return get_release(release).model_class(resource_type)


def _location(root: str, loc: tuple[int | str, ...]) -> str:
    out = root
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.startswith("function-after") or part.startswith("function-"):
            continue
        else:
            out += f".{part}"
    return out


def check(obj: Any, file: str, release: str) -> list[Finding]:
    """Validate ``obj`` with the fhir.resources model of its resourceType."""
    import pydantic

    out = Collector(file, Layer.MODEL)
    if not isinstance(obj, dict) or not isinstance(obj.get("resourceType"), str):
        out.error("$", "not a FHIR resource: no resourceType")
        return out.findings
    rtype = obj["resourceType"]
    cls = model_class(release, rtype)
    if cls is None:
        out.error(rtype or "$", f"{rtype!r} is not a resource type of FHIR {release.upper()}")
        return out.findings
    try:
        cls.model_validate(obj)
    except pydantic.ValidationError as exc:
        for err in exc.errors(include_url=False):
            msg = str(err.get("msg", "invalid"))
            out.error(_location(rtype, tuple(err.get("loc", ()))), msg)
    except Exception as exc:  # noqa: BLE001 - fhir.resources fails on shapes it does not expect
        # KeyError or TypeError for a contained or entry resource whose resourceType the release
        # does not have (or that is not a string): name each one where it is.
        unknown = list(_unknown_types(obj, rtype, release))
        for loc, what in unknown:
            out.error(loc, f"{what} is not a resource type of FHIR {release.upper()}")
        if not unknown and isinstance(exc, ValueError | TypeError):  # raised for some shapes
            out.error(rtype, f"the {release.upper()} model rejects it: {exc}")
        elif not unknown:
            out.findings.append(cannot_check(file, exc, Layer.MODEL))
    return out.findings


def _unknown_types(obj: dict[str, Any], root: str, release: str) -> Iterator[tuple[str, str]]:
    """(location of ``resourceType``, its value) for every nested object whose ``resourceType``
    is not a resource type of ``release``, in document order (iterative, as deep as it goes)."""
    stack: list[tuple[Any, str]] = [(v, f"{root}.{k}") for k, v in reversed(obj.items())]
    while stack:
        node, loc = stack.pop()
        if isinstance(node, dict):
            rtype = node.get("resourceType")
            if "resourceType" in node and (
                not isinstance(rtype, str) or model_class(release, rtype) is None
            ):
                yield f"{loc}.resourceType", repr(rtype)
            stack.extend((v, f"{loc}.{k}") for k, v in reversed(node.items()))
        elif isinstance(node, list):
            stack.extend((node[i], f"{loc}[{i}]") for i in reversed(range(len(node))))
