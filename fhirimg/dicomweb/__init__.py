"""The DICOMweb path: images in a DICOM archive, FHIR pointing at them.

- :mod:`fhirimg.dicomweb.client`: STOW-RS, QIDO-RS, WADO-RS and the multipart/related codec;
- :mod:`fhirimg.dicomweb.records`: DICOM JSON to the internal model, conversion from a PACS;
- :mod:`fhirimg.dicomweb.store`: store converted studies' instances in a PACS (``push --dicomweb``),
  as :mod:`~fhirimg.dicomweb.store_plan` plans it, reporting in :mod:`~fhirimg.dicomweb.store_results`;
- :mod:`fhirimg.dicomweb.verify`: check that ImagingStudies and the PACS agree (``verify``).

HTTP, retries and authentication are :mod:`fhirimg.http`'s, shared with ``push``; errors are in
:mod:`fhirimg.errors` (:class:`~fhirimg.errors.DicomwebError`). Docs: ``docs/dicomweb.md``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fhirimg._lazy import exports

if TYPE_CHECKING:
    from fhirimg.dicomweb.client import (
        DicomwebClient,
        StowResult,
        decode_multipart,
        encode_multipart,
    )
    from fhirimg.dicomweb.records import (
        StudyQuery,
        convert_from_dicomweb,
        find_studies,
        record_from_json,
    )

_WHERE = {
    "DicomwebClient": "fhirimg.dicomweb.client",
    "StowResult": "fhirimg.dicomweb.client",
    "StudyQuery": "fhirimg.dicomweb.records",
    "convert_from_dicomweb": "fhirimg.dicomweb.records",
    "decode_multipart": "fhirimg.dicomweb.client",
    "encode_multipart": "fhirimg.dicomweb.client",
    "find_studies": "fhirimg.dicomweb.records",
    "record_from_json": "fhirimg.dicomweb.records",
}

__all__ = [
    "DicomwebClient",
    "StowResult",
    "StudyQuery",
    "convert_from_dicomweb",
    "decode_multipart",
    "encode_multipart",
    "find_studies",
    "record_from_json",
]

__getattr__, __dir__ = exports(globals(), _WHERE)
