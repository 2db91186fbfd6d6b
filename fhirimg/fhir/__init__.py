"""The FHIR release seam: every difference between R4 and R5 lives in one module per release.

Only :mod:`fhirimg.fhir.r4` imports ``fhir.resources.R4B`` and only :mod:`fhirimg.fhir.r5` imports
the R5 models; the pipeline asks :func:`release` for the one it writes and never branches on the
version itself.
"""

from __future__ import annotations

from fhirimg.fhir.base import Release


def release(name: str) -> Release:
    """The :class:`Release` for a release name (``"r4"`` or ``"r5"``; case-insensitive).

    >>> release("R4").fhir_version
    '4.0.1'
    >>> release("r5").rendered_image_type
    'DocumentReference'
    """
    key = name.lower()
    if key == "r4":
        from fhirimg.fhir.r4 import R4

        return R4
    if key == "r5":
        from fhirimg.fhir.r5 import R5

        return R5
    from fhirimg.errors import ConfigError

    raise ConfigError(f"unknown FHIR release {name!r}: use r4 or r5")


__all__ = ["Release", "release"]
