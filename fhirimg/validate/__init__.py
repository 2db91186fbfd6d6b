"""Validate FHIR R4/R5 resources and transaction Bundles the way a server will judge them.

Six local layers (JSON, fhir.resources models, HL7 JSON Schema, FHIRPath invariants, Bundle
integrity, imaging rules) and optionally a server's ``$validate``; see docs/validate.md.

>>> from fhirimg.validate import validate_resource
>>> validate_resource({"resourceType": "Binary", "contentType": "text/plain", "data": "aGk="})
[]
"""

from __future__ import annotations

from fhirimg.validate.findings import Finding, Layer, Severity, has_errors
from fhirimg.validate.runner import FileResult, iter_validate, validate_bytes, validate_paths
from fhirimg.validate.validator import (
    ALL_LAYERS,
    FAST_LAYERS,
    detect_version,
    parse_layers,
    resource_errors,
    validate_resource,
)

__all__ = [
    "ALL_LAYERS",
    "FAST_LAYERS",
    "FileResult",
    "Finding",
    "Layer",
    "Severity",
    "detect_version",
    "has_errors",
    "iter_validate",
    "parse_layers",
    "resource_errors",
    "validate_bytes",
    "validate_paths",
    "validate_resource",
]
