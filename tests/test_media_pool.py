"""--media with more processes than studies: one study's images are rendered in the pool, and
the bundle, the report and the failures are those of a run on one process."""

from __future__ import annotations

import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from fhirimg import ConvertOptions, convert
from fhirimg.convert import _render_in_pool
from fhirimg.images.binary import BinaryMode
from fhirimg.images.render import Rendered
from fhirimg.images.rendered import MediaContent, MediaOptions
from fhirimg.images.writer import (
    PixelOptions,
    Prepared,
    _ImageContext,
    prepared_in_order,
    rendered_in_order,
)
from fhirimg.model import InstanceRecord
from fhirimg.scan import read_file
from tests.helpers import REPO, load


@pytest.fixture(scope="module")
def one_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """study_c_mixed (mono1, RLE, RGB, a bare dataset, SR, PDF) and a truncated CT image."""
    src = tmp_path_factory.mktemp("pool") / "in"
    shutil.copytree(REPO / "sample_data/dicom/study_c_mixed", src)
    bad = pydicom.dcmread(get_testdata_file("CT_small.dcm"))  # type: ignore[arg-type]
    bad.StudyInstanceUID = pydicom.dcmread(src / "cr_mono1.dcm").StudyInstanceUID
    bad.PixelData = bad.PixelData[:100]  # cannot be decoded
    bad.save_as(src / "bad.dcm")
    return src


def _run(src: Path, out: Path, jobs: int) -> tuple[bytes, list[tuple[str, str]]]:
    opts = ConvertOptions(out_dir=out, jobs=jobs, media=MediaOptions(), binary=BinaryMode.INLINE)
    report = convert([src], opts)
    assert len(report.studies) == 1
    (bundle,) = out.glob("study-*.json")
    failures = sorted((Path(p).name, why) for p, why in report.render_failures)
    return bundle.read_bytes(), failures


def test_one_study_on_two_processes_writes_what_one_process_writes(
    one_study: Path, tmp_path: Path
) -> None:
    one, failed_one = _run(one_study, tmp_path / "one", jobs=1)
    two, failed_two = _run(one_study, tmp_path / "two", jobs=2)
    assert two == one
    assert failed_two == failed_one
    assert [name for name, _ in failed_two] == ["bad.dcm"]
    doc = load(tmp_path / "two" / "report.json")
    (bad,) = [f for f in doc["files"] if f["path"].endswith("bad.dcm")]
    assert "cannot decode" in bad["renderError"]


def _records(folder: Path) -> list[InstanceRecord]:
    recs = []
    for path in sorted(folder.iterdir()):
        rec = read_file(str(path))
        assert isinstance(rec, InstanceRecord), rec
        recs.append(rec)
    return recs


def test_pool_renders_in_order_with_failures_and_non_images(one_study: Path) -> None:
    recs = _records(one_study)
    opts = MediaOptions(size=32)
    alone = list(rendered_in_order(recs, opts, None))
    with ProcessPoolExecutor(2) as pool:
        pooled = list(rendered_in_order(recs, opts, pool, jobs=2))
    assert pooled == alone
    images = [r for r in pooled if isinstance(r, Rendered)]
    assert len(images) == 4  # mono1, RLE, RGB, the bare dataset
    assert all(max(r.width, r.height) <= 32 for r in images)
    assert [r for r in pooled if isinstance(r, str)] == [alone[0]]  # bad.dcm, sorted first
    assert str(alone[0]).startswith("cannot decode")
    assert pooled.count(None) == 2  # the SR and the PDF: no pixel data, not a failure


def test_the_pool_renders_only_when_studies_are_fewer_than_processes() -> None:
    media = PixelOptions(media=MediaOptions())
    with ProcessPoolExecutor(1) as pool:
        assert _render_in_pool(pool, media, studies=1, jobs=2)
        assert not _render_in_pool(pool, media, studies=2, jobs=2)  # a study per process
        assert not _render_in_pool(pool, PixelOptions(binary=BinaryMode.BESIDE), 1, 2)
    assert not _render_in_pool(None, media, studies=1, jobs=1)


@pytest.mark.parametrize("content", [MediaContent.INLINE, MediaContent.BINARY])
def test_the_pool_builds_and_checks_the_image_resources(
    one_study: Path, content: MediaContent
) -> None:
    recs = _records(one_study)
    # strict: every layer; the study reference is one the check cannot resolve, so each
    # rendered-image resource has an error, found in the pool as in this process
    context = _ImageContext(
        MediaOptions(size=16, content=content), "r4", True, "urn:uuid:p", "not a reference", None
    )
    alone = list(prepared_in_order(recs, context, None))
    with ProcessPoolExecutor(2) as pool:
        pooled = list(prepared_in_order(recs, context, pool, jobs=2))
    assert pooled == alone
    done = [p for p in pooled if isinstance(p, Prepared)]
    assert len(done) == 4
    assert all(p.errors and len(p.errors) <= 3 for p in done)
    assert all("partOf" in e for p in done for e in p.errors), done[0].errors
    if content == MediaContent.INLINE:  # the bytes travel once, in the Attachment
        assert all(p.rendered.data == b"" and p.attachment["data"] for p in done)
    else:  # the image Binary is written from the bytes
        assert all(p.rendered.data and "data" not in p.attachment for p in done)
