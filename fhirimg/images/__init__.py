"""Image outputs: the pixels of a study inside FHIR, beside the ImagingStudy + Endpoint path.

Split by role (highdicom's ``seg/`` does the same):

- :mod:`fhirimg.images.binary`: the DICOM bytes as FHIR Binary, and the instance-binary link;
- :mod:`fhirimg.images.render`: one frame of a DICOM image as a PNG or JPEG (no FHIR here);
- :mod:`fhirimg.images.rendered`: a rendered image as a FHIR resource (R4 Media, R5
  DocumentReference, through the release seam :mod:`fhirimg.fhir`);
- :mod:`fhirimg.images.writer`: the pixel study writer, which streams a study's bundle(s) with its
  Binary and rendered-image entries (what ``convert --binary`` / ``--media`` use).
"""
