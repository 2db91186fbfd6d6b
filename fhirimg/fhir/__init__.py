"""The FHIR release seam: every difference between R4 and R5 lives in one module per release.

Only :mod:`fhirimg.fhir.r4` imports ``fhir.resources.R4B`` and only :mod:`fhirimg.fhir.r5` imports
the R5 models; the pipeline asks :func:`release` for the one it writes and never branches on the
version itself.

This package is a leaf: it imports nothing from fhirimg but :mod:`fhirimg.errors` and the JSON
alias of :mod:`fhirimg.jsonio`. The validator (:mod:`fhirimg.validate`) sits above it and asks it
for the models.
"""

from __future__ import annotations

from fhirimg.errors import ConfigError
from fhirimg.fhir.base import Release
from fhirimg.fhir.r4 import R4
from fhirimg.fhir.r5 import R5

_RELEASES: dict[str, Release] = {"r4": R4, "r5": R5}


def release(name: str) -> Release:
    """The :class:`Release` for a release name (``"r4"`` or ``"r5"``; case-insensitive).

    >>> release("R4").fhir_version
    '4.0.1'
    >>> release("r5").rendered_image_type
    'DocumentReference'
    """
    try:
        return _RELEASES[name.lower()]
    except KeyError:
        raise ConfigError(f"unknown FHIR release {name!r}: use r4 or r5") from None


__all__ = ["Release", "release"]
