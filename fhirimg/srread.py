"""Read a Structured Report's content tree into plain data (:class:`~fhirimg.model.SrContent`).

:func:`fhirimg.scan.read_file` reads headers only, and stops long before (0040,A730) Content
Sequence. For an instance of an SR SOP class (:func:`is_sr`), and only for those, it then reads
that one file in full and calls :func:`content_of`: every other file costs a set lookup. Sources
that give datasets instead of files (DICOMweb metadata, a DIMSE peer) call :func:`content_of` on
their dataset, so every source ends in the same :class:`~fhirimg.model.SrContent`.

The tree is walked with an explicit stack, never by recursion, and flattened (each item names its
parent), so that a tree 1,000 levels deep neither exhausts Python's recursion limit here nor when
the record is pickled to another process. Items deeper than :data:`MAX_DEPTH` are not read (one
warning names the first of them). An item that cannot be read costs that item and its children,
with a warning naming its position (PS3.3 C.17.3.2.5, ``1.3.2``), never the rest of the tree or
the record.

Why not highdicom's ``sr`` module at run time (it is used to write the test corpus,
``sample_data/make_sr.py``): its parsers reject the whole document for one bad item (a NUM
without Measurement Units Code Sequence raises AttributeError, a by-reference item raises, a tree
1,000 levels deep raises RecursionError), read only TID 1500 (no TID 1420 container, no dose
report), take 0.3 s for the corpus' two-group report, and importing highdicom costs another
0.57 s per worker process on top of pydicom (``python -X importtime``: 1.39 s against 0.82 s).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, BinaryIO

from fhirimg.model import Code, ContentItem, ImageReference, SrContent

if TYPE_CHECKING:  # pydicom is imported to read an SR, never for the header of other files
    from pydicom.dataset import Dataset

log = logging.getLogger(__name__)

SR_PREFIX = "1.2.840.10008.5.1.4.1.1.88."  # PS3.4 Annex B: the SR Storage SOP classes
KEY_OBJECT_SELECTION = "1.2.840.10008.5.1.4.1.1.88.59"  # a list of references, no content to map
MAX_DEPTH = 64
"""Content items nested deeper are not read. TID 1500 and TID 10011 trees are 5-6 levels deep."""
MAX_ITEMS = 100_000
"""A tree with more items is read up to this many (a warning says so)."""


def is_sr(sop_class_uid: str) -> bool:
    """Whether instances of ``sop_class_uid`` hold an SR content tree worth reading.

    >>> is_sr("1.2.840.10008.5.1.4.1.1.88.34"), is_sr("1.2.840.10008.5.1.4.1.1.2")
    (True, False)
    """
    return sop_class_uid.startswith(SR_PREFIX) and sop_class_uid != KEY_OBJECT_SELECTION


def read_content(path: str | BinaryIO) -> SrContent:
    """The content tree of the SR file at ``path`` or in the open file ``path`` (read in full,
    without pixel data).

    Never raises for bad content: what cannot be read becomes a warning of the result.
    """
    from pydicom import dcmread

    try:
        ds = dcmread(path, force=True, stop_before_pixels=True)
        return content_of(ds)
    except RecursionError:
        why = "nested too deep for pydicom's reader"
    except Exception as exc:  # pydicom raises many types for corrupt input
        # The type only: pydicom's words may quote header values (a patient's name).
        why = type(exc).__name__
        log.debug("%s: SR content not read: %s", path, exc)
    return SrContent(None, None, None, None, (), (f"SR content not read: {why}",))


def content_of(ds: Dataset) -> SrContent:
    """The content tree of an SR dataset, flattened (module docstring).

    >>> from pydicom.dataset import Dataset
    >>> ds = Dataset()
    >>> ds.ConceptNameCodeSequence = [Dataset()]
    >>> ds.ConceptNameCodeSequence[0].CodeValue = "126000"
    >>> content_of(ds).title
    Code(value='126000', scheme=None, meaning=None)
    """
    warnings: list[str] = []
    items: list[ContentItem] = []
    # (dataset, parent index, position, depth), children pushed in reverse to keep document order
    stack: list[tuple[Dataset, int, str, int]] = []
    stack.extend(_children(ds, -1, "1", 1, warnings))
    deep_noted = False
    while stack:
        item_ds, parent, position, depth = stack.pop()
        if depth > MAX_DEPTH:
            if not deep_noted:
                warnings.append(
                    f"content item {_short(position)}: nested deeper than {MAX_DEPTH} levels; "
                    "it and the items below it are not read"
                )
                deep_noted = True
            continue
        if len(items) >= MAX_ITEMS:
            warnings.append(f"more than {MAX_ITEMS} content items: the rest is not read")
            break
        try:
            item = _item(item_ds, parent, position)
        except Exception as exc:  # one malformed item costs itself and its children
            warnings.append(
                f"content item {_short(position)}: not readable ({type(exc).__name__}): "
                "it and the items below it are left out"
            )
            continue
        items.append(item)
        stack.extend(_children(item_ds, len(items) - 1, position, depth + 1, warnings))
    return SrContent(
        title=_first_code(ds, "ConceptNameCodeSequence"),
        template=_template(ds),
        preliminary=_str(ds.get("PreliminaryFlag")),
        device_uid=_str(ds.get("DeviceUID")),
        items=tuple(items),
        warnings=tuple(warnings),
    )


def _short(position: str) -> str:
    """A position fit for a message: a deep one keeps its start and its end."""
    return position if len(position) <= 60 else f"{position[:28]}…{position[-28:]}"


def _children(
    ds: Dataset, parent: int, position: str, depth: int, warnings: list[str]
) -> Iterator[tuple[Dataset, int, str, int]]:
    try:
        seq = ds.get("ContentSequence")  # (0040,A730)
        kids = list(seq) if seq is not None else []
    except Exception as exc:
        warnings.append(
            f"content item {_short(position)}: its Content Sequence (0040,A730) is not readable "
            f"({type(exc).__name__})"
        )
        return
    for n in range(len(kids), 0, -1):
        yield kids[n - 1], parent, f"{position}.{n}", depth


def _str(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip("\0 ")
    return text or None


def _code(item: Dataset) -> Code | None:
    code = Code(
        _str(item.get("CodeValue") or item.get("LongCodeValue") or item.get("URNCodeValue")),
        _str(item.get("CodingSchemeDesignator")),
        _str(item.get("CodeMeaning")),
    )
    return code if (code.value or code.meaning) else None


def _first_code(ds: Dataset, keyword: str) -> Code | None:
    seq = ds.get(keyword)
    return _code(seq[0]) if seq else None


def _template(ds: Dataset) -> str | None:
    seq = ds.get("ContentTemplateSequence")  # (0040,A504) > (0040,DB00) Template Identifier
    return _str(seq[0].get("TemplateIdentifier")) if seq else None


def _floats(value: Any) -> tuple[float, ...]:
    if value is None:
        return ()
    if isinstance(value, int | float):
        return (float(value),)
    return tuple(float(v) for v in value)


def _references(ds: Dataset) -> tuple[ImageReference, ...]:
    out = []
    for ref in ds.get("ReferencedSOPSequence") or ():  # (0008,1199)
        frames = ref.get("ReferencedFrameNumber")  # (0008,1160)
        if frames is None:
            numbers: tuple[int, ...] = ()
        elif isinstance(frames, int | str):
            numbers = (int(frames),)
        else:
            numbers = tuple(int(f) for f in frames)
        out.append(
            ImageReference(
                _str(ref.get("ReferencedSOPClassUID")),
                _str(ref.get("ReferencedSOPInstanceUID")),
                numbers,
            )
        )
    return tuple(out)


def _item(ds: Dataset, parent: int, position: str) -> ContentItem:
    value_type = _str(ds.get("ValueType"))
    number = unit = None
    measured = ds.get("MeasuredValueSequence")  # (0040,A300)
    if measured:
        number = _str(measured[0].get("NumericValue"))
        unit = _first_code(measured[0], "MeasurementUnitsCodeSequence")
    text = _str(ds.get("TextValue") or ds.get("UID") or ds.get("DateTime"))
    by_ref = ds.get("ReferencedContentItemIdentifier")  # (0040,DB73)
    reference_to = None
    if by_ref is not None:
        parts = [by_ref] if isinstance(by_ref, int) else list(by_ref)
        reference_to = ".".join(str(int(p)) for p in parts)
    return ContentItem(
        parent=parent,
        position=position,
        relationship=_str(ds.get("RelationshipType")),
        value_type=value_type,
        concept=_first_code(ds, "ConceptNameCodeSequence"),
        observation_uid=_str(ds.get("ObservationUID")),
        observation_datetime=_str(ds.get("ObservationDateTime")),
        text=text,
        number=number,
        unit=unit,
        code=_first_code(ds, "ConceptCodeSequence"),
        graphic_type=_str(ds.get("GraphicType")),
        graphic_data=_floats(ds.get("GraphicData")),
        frame_of_reference_uid=_str(ds.get("ReferencedFrameOfReferenceUID")),
        references=_references(ds),
        reference_to=reference_to,
    )


__all__ = ["MAX_DEPTH", "content_of", "is_sr", "read_content"]
