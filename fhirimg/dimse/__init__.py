"""The DIMSE path: classic PACS and modalities that speak only DICOM's own network protocol.

- :mod:`fhirimg.dimse.address`: ``AET@HOST:PORT`` peers and AE titles (no pynetdicom needed);
- :mod:`fhirimg.dimse.scu`: the client side, C-ECHO, C-FIND, C-GET and C-MOVE (pynetdicom);
- :mod:`fhirimg.dimse.storage`: received instances written atomically as PS3.10 files;
- :mod:`fhirimg.dimse.records`: C-FIND answers to the internal model, conversion from a PACS
  (``convert --from-pacs``).

pynetdicom is an optional dependency (``pip install 'fhirimg[dimse]'``): only these modules import
it, and only when a DIMSE command runs, so every other command works without it. Errors are
:class:`~fhirimg.errors.DimseError` and :class:`~fhirimg.errors.ServerUnreachableError`. Docs:
``docs/pacs.md``.
"""

from __future__ import annotations

from fhirimg.dimse.address import PacsAddress, check_ae_title, require_pynetdicom

__all__ = ["PacsAddress", "check_ae_title", "require_pynetdicom"]
