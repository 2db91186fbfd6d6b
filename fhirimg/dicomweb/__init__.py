"""The DICOMweb path: images in a DICOM archive, FHIR pointing at them.

- :mod:`fhirimg.dicomweb.client`: STOW-RS, QIDO-RS, WADO-RS and the multipart/related codec;
- :mod:`fhirimg.dicomweb.records`: DICOM JSON to the internal model, conversion from a PACS;
- :mod:`fhirimg.dicomweb.store`: store converted studies' instances in a PACS (``push --dicomweb``);
- :mod:`fhirimg.dicomweb.verify`: check that ImagingStudies and the PACS agree (``verify``).

Docs: ``docs/dicomweb.md``.
"""

from __future__ import annotations

from fhirimg.dicomweb.client import (
    DicomwebClient,
    DicomwebError,
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

__all__ = [
    "DicomwebClient",
    "DicomwebError",
    "StowResult",
    "StudyQuery",
    "convert_from_dicomweb",
    "decode_multipart",
    "encode_multipart",
    "find_studies",
    "record_from_json",
]
