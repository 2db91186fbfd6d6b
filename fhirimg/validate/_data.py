"""Access to the shipped HL7 definitions in ``fhirimg/data/validate/<release>/`` (see SOURCE.md)."""

from __future__ import annotations

from importlib import resources
from typing import Any

import orjson


def load(release: str, name: str) -> Any:
    """Parse one shipped JSON file, e.g. ``load("r4", "fhir.schema.json")``."""
    ref = resources.files("fhirimg") / "data" / "validate" / release / name
    return orjson.loads(ref.read_bytes())
