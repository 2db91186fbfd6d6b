"""De-identification: DICOM PS3.15 Annex E, the Basic Application Level Confidentiality Profile.

One implementation behind ``convert --deidentify`` and ``fhirimg deidentify`` (docs/deidentify.md):

- :mod:`fhirimg.deid.table`: Table E.1-1, generated from the standard's published data by
  ``scripts/gen_deid_table.py`` (never typed by hand);
- :mod:`fhirimg.deid.keys`: the options and the keyed functions (HMAC-SHA-256 pseudonyms, ``2.25.``
  UIDs, the date shift per patient), the only place the key is used;
- :mod:`fhirimg.deid.actions`: what the table and the options say for one attribute, and the value
  it gets, for text values: shared by both paths below, so FHIR and DICOM outputs agree;
- :mod:`fhirimg.deid.record`: a header record (:class:`~fhirimg.model.InstanceRecord`, what the
  mapping reads) de-identified, applied right after reading (every source: files, DICOMweb, DIMSE);
- :mod:`fhirimg.deid.dataset`: a whole pydicom Dataset de-identified (Binary bytes, rendered
  images, the ``deidentify`` command's files);
- :mod:`fhirimg.deid.files`: the ``deidentify`` command: DICOM files in, de-identified Part 10
  files out.

Nothing here imports pydicom at module level but :mod:`fhirimg.deid.dataset`.
"""

from __future__ import annotations

from fhirimg.deid.keys import DeidOptions, Keyed

__all__ = ["DeidOptions", "Keyed"]
