"""fhirimg: put DICOM images into FHIR.

Library use (nothing prints; every function returns data)::

    from fhirimg import convert, ConvertOptions
    report = convert(["dicom/"], ConvertOptions(out_dir=Path("out")))
    report.summary()["studies"]
"""

from __future__ import annotations

from fhirimg.convert import ConvertOptions, ConvertReport, StudyOutcome, convert
from fhirimg.errors import ConfigError, FhirimgError, InputError, PushError, ValidationError
from fhirimg.mapping import MapOptions

__all__ = [
    "ConfigError",
    "ConvertOptions",
    "ConvertReport",
    "FhirimgError",
    "InputError",
    "MapOptions",
    "PushError",
    "StudyOutcome",
    "ValidationError",
    "convert",
]
