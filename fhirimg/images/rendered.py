"""Rendered images as FHIR resources: R4 Media, R5 DocumentReference (via the release seam).

Which instances get an image (:func:`representatives`), the identifiers that make the conditional
update idempotent (:func:`identifiers`), the Attachment (:func:`attachment`) and the release-neutral
:class:`~fhirimg.fhir.base.ImageParts`; the release seam (:mod:`fhirimg.fhir`) turns those into an
R4 Media or an R5 DocumentReference. Pixels are rendered by :mod:`fhirimg.images.render`.

Identifier of a rendered image (``Media.identifier``, ``DocumentReference.identifier``):

- ``urn:dicom:uid`` | ``urn:oid:<SOP Instance UID>``: the instance it shows (searchable);
- :data:`FRAME_SYSTEM` | ``<SOP Instance UID>/frames/<n>``: the instance *and* frame (1-based, the
  DICOMweb frame path form of PS3.18). This one is the conditional-update key
  (``PUT Media?identifier=<FRAME_SYSTEM>|<uid>/frames/<n>``), so one frame of one instance is one
  resource, however often it is converted or re-rendered at another size or format.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from fhirimg import ids, values
from fhirimg.errors import ConfigError
from fhirimg.fhir.base import ImageParts
from fhirimg.jsonio import JSON
from fhirimg.mapping import BODY_PARTS, DCM, DICOM_UID_SYSTEM, SNOMED, search_token
from fhirimg.model import InstanceRecord

if TYPE_CHECKING:
    from fhirimg.images.render import Rendered

FRAME_SYSTEM = "https://fhirimg.dev/fhir/sid/dicom-frame"


class MediaPer(StrEnum):
    """Which instances get a rendered image."""

    INSTANCE = "instance"  # every image instance
    SERIES = "series"  # one representative per series: its middle image instance


class MediaContent(StrEnum):
    """Where the rendered image bytes go."""

    INLINE = "inline"  # Attachment.data (base64) in the Media
    BINARY = "binary"  # a Binary entry (PUT Binary/<id>) the Attachment.url names


@dataclass(frozen=True)
class MediaOptions:
    """How rendered images are made (the CLI's ``--media-*`` flags)."""

    per: MediaPer = MediaPer.INSTANCE
    fmt: str = "png"
    """``png`` (lossless) or ``jpeg`` (quality 90)."""
    size: int | None = None
    """Fit into size x size pixels (thumbnail); None keeps the image's own size."""
    frame: int | None = None
    """1-based frame of multi-frame images; None is the middle frame."""
    content: MediaContent = MediaContent.INLINE

    def __post_init__(self) -> None:
        from fhirimg.images.render import FORMATS  # numpy and Pillow: only once media is asked for

        if self.fmt not in FORMATS:
            raise ConfigError(f"unknown media format {self.fmt!r}: use png or jpeg")
        if self.size is not None and self.size < 1:
            raise ConfigError("media size must be at least 1 pixel")
        if self.frame is not None and self.frame < 1:
            raise ConfigError("media frame numbers start at 1")


def might_have_pixels(rec: InstanceRecord) -> bool:
    """Worth opening for rendering: the header saw Pixel Data, or image rows, or could not tell
    (a bare dataset without File Meta). SR, PDF, RT plans and the like are not opened."""
    return rec.has_pixels or rec.rows is not None or rec.transfer_syntax_uid is None


def representatives(records: Sequence[InstanceRecord], per: MediaPer) -> list[InstanceRecord]:
    """The instances to render, in output order (``records`` already sorted).

    >>> representatives([], MediaPer.SERIES)
    []
    """
    images = [r for r in records if might_have_pixels(r)]
    if per == MediaPer.INSTANCE:
        return images
    by_series: dict[str, list[InstanceRecord]] = {}
    for rec in images:
        by_series.setdefault(rec.series_instance_uid, []).append(rec)
    # The middle instance of each series (the lower of two), as a radiologist's key image guess.
    return [group[(len(group) - 1) // 2] for group in by_series.values()]


def identifiers(sop_instance_uid: str, frame: int) -> tuple[JSON, JSON]:
    """The two identifiers of a rendered frame (module docstring); the second is the key.

    >>> identifiers("1.2.3", 2)[1]
    {'system': 'https://fhirimg.dev/fhir/sid/dicom-frame', 'value': '1.2.3/frames/2'}
    """
    return (
        {"system": DICOM_UID_SYSTEM, "value": "urn:oid:" + sop_instance_uid},
        {"system": FRAME_SYSTEM, "value": f"{sop_instance_uid}/frames/{frame}"},
    )


def request(resource_type: str, sop_instance_uid: str, frame: int) -> JSON:
    """The conditional update of a rendered image, keyed on its frame identifier.

    >>> request("Media", "1.2.3", 1)["url"]
    'Media?identifier=https://fhirimg.dev/fhir/sid/dicom-frame|1.2.3/frames/1'
    """
    key = identifiers(sop_instance_uid, frame)[1]
    return {"method": "PUT", "url": f"{resource_type}?{search_token(key['system'], key['value'])}"}


def image_binary_id(sop_instance_uid: str, frame: int) -> str:
    """The Binary id of a rendered frame (``--media-content binary``): deterministic per frame."""
    return ids.resource_uuid("Binary", "rendered", sop_instance_uid, str(frame))


def full_url(resource_type: str, sop_instance_uid: str, frame: int) -> str:
    return ids.full_url(resource_type, "rendered", sop_instance_uid, str(frame))


def title(rec: InstanceRecord, rendered: Rendered) -> str:
    """Attachment.title: what the picture shows, without patient data."""
    parts = [rec.modality or "image"]
    if rec.series_number:
        parts.append(f"series {rec.series_number.strip()}")
    if rec.instance_number:
        parts.append(f"instance {rec.instance_number.strip()}")
    if rendered.frames > 1:
        parts.append(f"frame {rendered.frame} of {rendered.frames}")
    return ", ".join(parts)


def attachment(rendered: Rendered, title_: str, url: str | None) -> JSON:
    """Attachment of a rendered image: contentType, data (unless ``url``), size and hash of the
    raw image bytes (Attachment.hash: base64 SHA-1, FHIR datatypes.html#Attachment), title."""
    att: JSON = {"contentType": rendered.content_type}
    if url is None:
        att["data"] = base64.b64encode(rendered.data).decode("ascii")
    else:
        att["url"] = url
    att["size"] = len(rendered.data)
    att["hash"] = base64.b64encode(hashlib.sha1(rendered.data).digest()).decode("ascii")
    att["title"] = title_
    return att


def created(rec: InstanceRecord, zone: str | None) -> tuple[str | None, list[str]]:
    """When the image was made: (0008,0023)+(0008,0033) Content Date/Time, else (0008,002A)
    Acquisition DateTime, else (0008,0021)+(0008,0031) Series Date/Time."""
    if rec.content_date:
        return values.fhir_datetime(rec.content_date, rec.content_time, rec.timezone_offset, zone)
    if rec.acquisition_datetime:
        return values.fhir_datetime_from_dt(rec.acquisition_datetime, rec.timezone_offset, zone)
    return values.fhir_datetime(rec.series_date, rec.series_time, rec.timezone_offset, zone)


def image_parts(
    rec: InstanceRecord,
    rendered: Rendered,
    att: JSON,
    subject_ref: str,
    study_ref: str,
    zone: str | None,
) -> tuple[ImageParts, list[str]]:
    """The release-neutral facts of one rendered frame, and warnings met on the way."""
    when, warnings = created(rec, zone)
    device = " ".join(x for x in (rec.manufacturer, rec.model_name) if x) or None
    site: JSON | None = None
    if rec.body_part_examined:  # (0018,0015) Body Part Examined, as for ImagingStudy.series
        known = BODY_PARTS.get(rec.body_part_examined.upper())
        site = (
            {"system": SNOMED, "code": known[0], "display": known[1]}
            if known
            else {"display": rec.body_part_examined}
        )
    parts = ImageParts(
        identifiers=identifiers(rec.sop_instance_uid, rendered.frame),
        subject_ref=subject_ref,
        study_ref=study_ref,
        modality={"system": DCM, "code": rec.modality or "OT"},
        attachment=att,
        height=rendered.height,
        width=rendered.width,
        # Media.frames "SHALL be present when more than one": the image shows one frame of a
        # multi-frame source, so it says 1 explicitly; the identifier and title name the frame.
        frames=1 if rendered.frames > 1 else None,
        created=when,
        device_name=device,
        body_site=site,
        description=att.get("title"),
    )
    return parts, [f"rendered image created: {w}" for w in warnings]
