"""The streaming split of a WADO-RS answer (PartWriter): any chunking gives the part's bytes."""

from __future__ import annotations

import io

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fhirimg.dicomweb.client import PartWriter
from fhirimg.errors import DicomwebError

BOUNDARY = "abc123"


def _body(content: bytes, boundary: str = BOUNDARY) -> bytes:
    return (
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        + content
        + f"\r\n--{boundary}--\r\n".encode()
    )


@given(
    content=st.binary(max_size=2000),
    cuts=st.lists(st.integers(min_value=0, max_value=2100), max_size=12),
)
def test_any_chunking_gives_the_content(content: bytes, cuts: list[int]) -> None:
    body = _body(content)
    edges = sorted({0, len(body), *(c for c in cuts if c < len(body))})
    out = io.BytesIO()
    writer = PartWriter(out)
    for start, end in zip(edges, edges[1:], strict=False):
        writer(body[start:end])
    writer.finish(BOUNDARY)
    assert out.getvalue() == content
    assert writer.written == len(content)


def test_content_holding_a_near_boundary_is_kept() -> None:
    content = b"x\r\n--abc12 not quite\r\n--abc1"
    out = io.BytesIO()
    writer = PartWriter(out)
    for byte in _body(content):
        writer(bytes([byte]))
    writer.finish(BOUNDARY)
    assert out.getvalue() == content


@pytest.mark.parametrize(
    ("body", "boundary"),
    [
        (_body(b"DICM")[:-12], BOUNDARY),  # cut short
        (_body(b"DICM"), "other"),  # not the Content-Type's boundary
    ],
)
def test_bad_answers_are_errors(body: bytes, boundary: str) -> None:
    writer = PartWriter(io.BytesIO())
    writer(body)
    with pytest.raises(DicomwebError):
        writer.finish(boundary)


def test_an_answer_without_a_boundary_line_is_an_error() -> None:
    with pytest.raises(DicomwebError):
        PartWriter(io.BytesIO())(b"HTTP/1.1 junk\r\n\r\n")
