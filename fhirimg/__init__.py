"""fhirimg: put DICOM images into FHIR.

Library use (nothing prints; every function returns data)::

    from fhirimg import convert, ConvertOptions
    report = convert(["dicom/"], ConvertOptions(out_dir=Path("out")))
    report.summary()["studies"]

The public names are imported when first used (PEP 562 module ``__getattr__``), so that
``import fhirimg.cli`` or ``fhirimg.push`` does not pay for the conversion machinery (issue 19:
every ``fhirimg`` command starts from this package).

``fhirimg.convert`` is both a module and the function it defines; as the package attribute it is
always the function, as it was when this package imported it eagerly: the import system's
``setattr(fhirimg, "convert", <module>)`` after a first ``import fhirimg.convert`` is ignored
(the module stays in ``sys.modules["fhirimg.convert"]``, where ``from fhirimg.convert import ...``
finds it).
"""

from __future__ import annotations

import sys
import types
from typing import TYPE_CHECKING, Any

from fhirimg._lazy import exports

if TYPE_CHECKING:
    from fhirimg.convert import ConvertOptions, ConvertReport, StudyOutcome, convert
    from fhirimg.errors import ConfigError, FhirimgError, InputError, PushError, ValidationError
    from fhirimg.mapping import MapOptions

_WHERE = {
    "ConvertOptions": "fhirimg.convert",
    "ConvertReport": "fhirimg.convert",
    "StudyOutcome": "fhirimg.convert",
    "convert": "fhirimg.convert",
    "ConfigError": "fhirimg.errors",
    "FhirimgError": "fhirimg.errors",
    "InputError": "fhirimg.errors",
    "PushError": "fhirimg.errors",
    "ValidationError": "fhirimg.errors",
    "MapOptions": "fhirimg.mapping",
}

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


__getattr__, __dir__ = exports(globals(), _WHERE)


class _Package(types.ModuleType):
    """This package's module type: keeps the attribute ``convert`` the function (module docstring)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "convert" and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
