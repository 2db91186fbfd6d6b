"""Access to the shipped HL7 definitions in ``fhirimg/data/validate/<release>/`` (see SOURCE.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

# Package data sits beside the code (pyproject: package-data "data/**/*"); a plain path works for
# wheels, sdists and editable installs alike.
DATA = Path(__file__).resolve().parent.parent / "data" / "validate"


def load(release: str, name: str) -> Any:
    """Parse one shipped JSON file, e.g. ``load("r4", "fhir.schema.json")``."""
    return orjson.loads((DATA / release / name).read_bytes())
