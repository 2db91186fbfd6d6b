"""--media: rendered images as R4 Media (and, with --fhir-version r5, DocumentReference)."""

from __future__ import annotations

import base64
import hashlib
import io
import shutil
from pathlib import Path
from typing import Any

import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from fhirimg import ConvertOptions, convert
from fhirimg.images.binary import BinaryMode
from fhirimg.images.rendered import FRAME_SYSTEM, MediaContent, MediaOptions, MediaPer
from fhirimg.validate import resource_errors
from tests.helpers import REPO, load, resources
from tests.test_binary import all_bundles, errors_of, run


@pytest.fixture(scope="module")
def media_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return run(tmp_path_factory.mktemp("media"), media=MediaOptions())


def all_media(out: Path, kind: str = "Media") -> list[dict[str, Any]]:
    return [m for b in all_bundles(out).values() for m in resources(b, kind)]


def test_one_media_per_image_instance(media_out: Path) -> None:
    media = all_media(media_out)
    # 20 converted files: 18 images, an SR and an encapsulated PDF (no Media, no error)
    assert len(media) == 18
    report = load(media_out / "report.json")
    assert report["summary"]["renderedImages"] == {"written": 18, "failed": 0}
    sops = {m["identifier"][0]["value"] for m in media}
    for name in ("sr_basic_text.dcm", "doc_pdf.dcm"):
        ds = pydicom.dcmread(REPO / "sample_data/dicom/study_c_mixed" / name)
        assert "urn:oid:" + ds.SOPInstanceUID not in sops


def test_media_images_open_with_the_right_size(media_out: Path) -> None:
    for m in all_media(media_out):
        content = m["content"]
        data = base64.b64decode(content["data"])
        assert content["size"] == len(data)
        assert content["hash"] == base64.b64encode(hashlib.sha1(data).digest()).decode()
        assert content["contentType"] == "image/png"
        image = Image.open(io.BytesIO(data))
        assert image.format == "PNG"
        assert image.size == (m["width"], m["height"])
        assert m["status"] == "completed"
        assert m["type"]["coding"][0]["code"] == "image"
        assert (
            m["modality"]["coding"][0]["system"] == "http://dicom.nema.org/resources/ontology/DCM"
        )


def test_media_links_and_request(media_out: Path) -> None:
    for bundle in all_bundles(media_out).values():
        urls = {e["resource"]["resourceType"]: e["fullUrl"] for e in bundle["entry"]}
        for e in bundle["entry"]:
            m = e["resource"]
            if m["resourceType"] != "Media":
                continue
            assert m["subject"] == {"reference": urls["Patient"]}
            assert m["partOf"] == [{"reference": urls["ImagingStudy"]}]
            key = m["identifier"][1]
            assert key["system"] == FRAME_SYSTEM
            assert e["request"] == {
                "method": "PUT",
                "url": f"Media?identifier={FRAME_SYSTEM}|{key['value']}",
            }


def test_multiframe_middle_frame(media_out: Path) -> None:
    ds = pydicom.dcmread(REPO / "sample_data/dicom/study_b_mr/mr_enhanced_multiframe.dcm")
    (m,) = [
        m
        for m in all_media(media_out)
        if m["identifier"][0]["value"] == "urn:oid:" + ds.SOPInstanceUID
    ]
    assert m["identifier"][1]["value"] == f"{ds.SOPInstanceUID}/frames/2"  # middle of 4
    assert m["frames"] == 1  # the image shows one frame
    assert "frame 2 of 4" in m["content"]["title"]


def test_media_bundles_validate(media_out: Path) -> None:
    for name, bundle in all_bundles(media_out).items():
        assert resource_errors(bundle, "r4") == [], name
        assert errors_of(bundle, "r4") == [], name


def test_per_series_size_jpeg_and_binary_content(tmp_path: Path) -> None:
    out = run(
        tmp_path,
        media=MediaOptions(
            per=MediaPer.SERIES, fmt="jpeg", size=16, frame=3, content=MediaContent.BINARY
        ),
        binary=BinaryMode.BESIDE,
    )
    media = all_media(out)
    # image series: A localizer + axial, B T1 + enhanced, C US + OT + CR + CT(no meta), ODD, D
    assert len(media) == 10
    for name, bundle in all_bundles(out).items():
        kinds = [e["resource"]["resourceType"] for e in bundle["entry"]]
        first_media = kinds.index("Media") if "Media" in kinds else len(kinds)
        assert "Binary" not in kinds[first_media:]  # Binaries before Media
        binaries = {
            e["request"]["url"]: e["resource"]
            for e in bundle["entry"]
            if e["resource"]["resourceType"] == "Binary"
        }
        for m in resources(bundle, "Media"):
            content = m["content"]
            assert "data" not in content
            image_binary = binaries[content["url"]]
            data = base64.b64decode(image_binary["data"])
            assert image_binary["contentType"] == content["contentType"] == "image/jpeg"
            assert content["size"] == len(data)
            image = Image.open(io.BytesIO(data))
            assert max(image.size) <= 16
            assert image.size == (m["width"], m["height"])
        assert errors_of(bundle, "r4", beside=out, name=name) == [], name


def test_undecodable_image_is_reported_and_the_study_converts(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(get_testdata_file("CT_small.dcm"), src / "ct.dcm")  # type: ignore[arg-type]
    bad = pydicom.dcmread(get_testdata_file("CT_small.dcm"))  # type: ignore[arg-type]
    bad.SOPInstanceUID = bad.SOPInstanceUID + ".9"
    bad.PixelData = bad.PixelData[:100]  # truncated pixel data
    bad.save_as(src / "bad.dcm")
    report = convert([src], ConvertOptions(out_dir=tmp_path / "out", jobs=1, media=MediaOptions()))
    assert report.files["converted"] == 2
    assert [s.ok for s in report.studies] == [True]
    assert len(report.render_failures) == 1
    assert report.render_failures[0][0].endswith("bad.dcm")
    assert int(report.exit_code) == 1
    doc = load(tmp_path / "out" / "report.json")
    (item,) = [f for f in doc["files"] if f["path"].endswith("bad.dcm")]
    assert item["status"] == "converted"
    assert "cannot decode" in item["renderError"]
    assert len(all_media(tmp_path / "out")) == 1


def test_media_in_split_parts_use_conditional_references(tmp_path: Path) -> None:
    out = run(tmp_path, media=MediaOptions(), max_entries=3)
    checked = 0
    for path in sorted(out.glob("study-*.part-*.json")):
        bundle = load(path)
        assert len(bundle["entry"]) <= 3
        for m in resources(bundle, "Media"):
            assert m["subject"]["reference"].startswith(("Patient?identifier=", "Patient/"))
            (part_of,) = m["partOf"]
            assert part_of["reference"].startswith("ImagingStudy?identifier=urn:dicom:uid|urn:oid:")
            checked += 1
        assert errors_of(bundle, "r4", name=path.name) == [], path.name
    assert checked
