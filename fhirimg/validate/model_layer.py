"""Layer 2, the fhir.resources models: R4B models for R4 output, the top-level (R5) models for R5.

fhir.resources checks required elements, single-vs-list, unknown elements, primitive regexes and
choice exclusivity; it does not check required-binding codes, reference targets, invariants, id
length, base64 or empty arrays (the other layers do). The models come from the release modules of
:mod:`fhirimg.fhir` (the FHIR-version seam, below this package), which load them lazily because they
take a while to load.
"""

from __future__ import annotations

from typing import Any

from fhirimg.fhir import release as get_release
from fhirimg.validate.findings import Collector, Finding, Layer


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
        out.error(rtype, f"{rtype} is not a resource type of FHIR {release.upper()}")
        return out.findings
    try:
        cls.model_validate(obj)
    except pydantic.ValidationError as exc:
        for err in exc.errors(include_url=False):
            msg = str(err.get("msg", "invalid"))
            out.error(_location(rtype, tuple(err.get("loc", ()))), msg)
    except (ValueError, TypeError) as exc:  # fhir.resources raises these for some shapes
        out.error(rtype, f"the {release.upper()} model rejects it: {exc}")
    return out.findings
