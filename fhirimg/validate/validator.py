"""One validator, two callers (``fhirimg validate`` and ``convert``): runs the layers on one object.

Layers (see docs/validate.md): ``json`` (1), ``model`` (2), ``schema`` (3), ``invariant`` (4),
``bundle`` (5), ``imaging`` (6) and, from the CLI only, ``server``. :data:`FAST_LAYERS` are 1, 2,
3, 5 and 6 (each linear in the size of the bundle); :data:`ALL_LAYERS` adds the FHIRPath
invariants. The library API takes a set of :class:`Layer`; the CLI's ``--layers`` text becomes one
in :func:`parse_layers`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

from fhirimg.errors import ConfigError
from fhirimg.fhir.detect import detect_version as detect_version  # re-exported: its old home
from fhirimg.validate import (
    bundle_layer,
    imaging_layer,
    invariant_layer,
    json_layer,
    model_layer,
    schema_layer,
)
from fhirimg.validate.findings import Finding, Layer, Severity, cannot_check

log = logging.getLogger(__name__)

RELEASES = ("r4", "r5")
FAST_LAYERS = frozenset({Layer.JSON, Layer.MODEL, Layer.SCHEMA, Layer.BUNDLE, Layer.IMAGING})
ALL_LAYERS = FAST_LAYERS | {Layer.INVARIANT}


def parse_layers(text: str) -> frozenset[Layer]:
    """The layers the CLI's ``--layers`` names: ``"fast"``, ``"all"`` or a comma-separated list.

    Raises :class:`~fhirimg.errors.ConfigError` for an unknown name.

    >>> sorted(x.value for x in parse_layers("json,bundle"))
    ['bundle', 'json']
    >>> parse_layers("fast") == FAST_LAYERS
    True
    """
    if text == "fast":
        return FAST_LAYERS
    if text == "all":
        return ALL_LAYERS
    try:
        return frozenset(Layer(name.strip()) for name in text.split(",") if name.strip())
    except ValueError:
        raise ConfigError(f"unknown layer in {text!r}: use fast, all or {_names()}") from None


def _names() -> str:
    return ", ".join(x.value for x in Layer if x is not Layer.SERVER)


def validate_resource(
    obj: dict[str, Any],
    *,
    fhir_version: str = "r4",
    layers: Collection[Layer] = FAST_LAYERS,
    source: str = "<memory>",
    beside: Path | None = None,
    known_binaries: Collection[str] = (),
) -> list[Finding]:
    """Validate one resource or Bundle (already parsed JSON) and return every finding.

    ``fhir_version`` is "r4", "r5" or "auto"; ``layers`` the :class:`Layer` values to run
    (:data:`FAST_LAYERS` by default, :data:`ALL_LAYERS`, or any set; see :func:`parse_layers`);
    ``beside`` is the folder where a ``<stem>.binaries/`` folder may hold the Binaries (``stem``
    taken from ``source``); ``known_binaries`` are ids of Binaries that exist outside the bundle
    (other part files of a split study, or Binaries convert is about to write).

    >>> found = validate_resource({"resourceType": "Patient", "id": "p1", "gender": "boy"})
    >>> [(f.layer, f.location) for f in found if f.severity == "error"][:2]
    [('schema', 'Patient.gender')]
    """
    if isinstance(obj, dict) and isinstance(obj.get("resourceType"), str):
        # Refused before any layer walks it: the walks recurse (fhir.resources, fhirpathpy too).
        deep = json_layer.too_deep(obj, obj["resourceType"] or "$")
        if deep is not None:
            if fhir_version.lower() not in (*RELEASES, "auto"):
                raise ConfigError(f"unknown FHIR version {fhir_version!r}: use r4, r5 or auto")
            return [json_layer.too_deep_finding(source, deep)]
    return run_layers(
        obj,
        fhir_version=fhir_version,
        layers=layers,
        source=source,
        beside=beside,
        known_binaries=known_binaries,
    )


def run_layers(
    obj: dict[str, Any],
    *,
    fhir_version: str = "r4",
    layers: Collection[Layer] = FAST_LAYERS,
    source: str = "<memory>",
    beside: Path | None = None,
    known_binaries: Collection[str] = (),
) -> list[Finding]:
    """:func:`validate_resource` of an object already known to nest no deeper than
    :data:`~fhirimg.validate.json_layer.MAX_DEPTH` (:func:`~fhirimg.validate.json_layer.too_deep`
    is None): what the runner calls after its own depth check."""
    wanted = frozenset(layers)
    release = detect_version(obj) if fhir_version == "auto" else fhir_version.lower()
    if release not in RELEASES:
        raise ConfigError(f"unknown FHIR version {fhir_version!r}: use r4, r5 or auto")
    if not isinstance(obj, dict) or not isinstance(obj.get("resourceType"), str):
        return [
            Finding(Severity.ERROR, source, "$", "not a FHIR resource: no resourceType", "json")
        ]
    root = obj["resourceType"] or "$"  # the root of every location
    findings: list[Finding] = []

    def run(layer: Layer, check: Callable[[], list[Finding]]) -> None:
        # A layer that fails on an odd shape costs that layer's findings, not the file's or run's.
        try:
            findings.extend(check())
        except Exception as exc:  # noqa: BLE001 - reported as a finding on this file
            log.debug("layer %s failed on %s", layer.value, source, exc_info=True)
            findings.append(cannot_check(source, exc, layer))

    if Layer.JSON in wanted:
        run(Layer.JSON, lambda: json_layer.check(obj, source, root))
    if Layer.MODEL in wanted:
        run(Layer.MODEL, lambda: model_layer.check(obj, source, release))
    typed: list[schema_layer.TypedNode] = []
    visit = typed.append if Layer.INVARIANT in wanted else None
    if Layer.SCHEMA in wanted or Layer.JSON in wanted or visit is not None:

        def schema() -> list[Finding]:
            # Only the nodes of a type with invariants are handed on (12 of 230 in a bundle of a
            # 100-instance study: Codings and instances have none but ele-1, checked as JSON).
            only = invariant_layer.invariants_for(release) if visit is not None else None
            json_found, schema_found = schema_layer.check(
                obj, source, release, visit=visit, visit_only=only
            )
            return (json_found if Layer.JSON in wanted else []) + (
                schema_found if Layer.SCHEMA in wanted else []
            )

        run(Layer.SCHEMA if Layer.SCHEMA in wanted else Layer.JSON, schema)
    if Layer.INVARIANT in wanted:
        run(Layer.INVARIANT, lambda: invariant_layer.check(typed, source, release))
    if Layer.BUNDLE in wanted:
        run(Layer.BUNDLE, lambda: bundle_layer.check(obj, source, release))
    if Layer.IMAGING in wanted:
        stem = Path(source).stem if source not in ("<memory>", "<stdin>") else None
        run(
            Layer.IMAGING,
            lambda: imaging_layer.check(
                obj, source, release, beside=beside, stem=stem, known_binaries=known_binaries
            ),
        )
    return findings


def resource_errors(
    resource: dict[str, Any],
    release: str,
    strict: bool = False,
    known_binaries: Collection[str] = (),
) -> list[str]:
    """The errors found in ``resource`` before it is written, as ``location: message [layer]``.

    What ``convert`` asks ("never emit a resource that fails validation"): the fast layers (JSON,
    models, HL7 JSON Schema, bundle integrity, imaging rules), or all of them (FHIRPath invariants
    too) when ``strict``. ``known_binaries`` are ids of Binaries written outside this bundle.
    One validator for ``validate`` and ``convert``.

    >>> resource_errors({"resourceType": "Binary", "contentType": "text/plain"}, "r4")
    []
    """
    return [
        error_text(f) for f in resource_error_findings(resource, release, strict, known_binaries)
    ]


def resource_error_findings(
    resource: dict[str, Any],
    release: str,
    strict: bool = False,
    known_binaries: Collection[str] = (),
) -> list[Finding]:
    """The errors :func:`resource_errors` gives, as findings (with their locations: ``convert``
    traces them to the instances they are about)."""
    wanted = ALL_LAYERS if strict else FAST_LAYERS
    if resource.get("resourceType") != "Bundle":
        # One entry of a bundle being streamed: its references point at other entries, so the
        # bundle-integrity layer belongs to the bundle as a whole, not to the entry alone.
        wanted = wanted - {Layer.BUNDLE}
    findings = validate_resource(
        resource, fhir_version=release, layers=wanted, known_binaries=known_binaries
    )
    return [f for f in findings if f.severity is Severity.ERROR]


def error_text(finding: Finding) -> str:
    """A finding as :func:`resource_errors` words it: ``location: message [layer]``."""
    return f"{finding.location}: {finding.message} [{finding.layer}]"
