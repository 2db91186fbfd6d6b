"""--binary inline with more processes than studies: the Binary entries are written by the pool,
in place, while the head is checked (fhirimg.images.inline); the bundle and the report are those
of a run on one process, also when the check drops an instance or a file changes meanwhile."""

from __future__ import annotations

import functools
import shutil
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from fhirimg import ConvertOptions, convert
from fhirimg.bundle import EncodedEntry, SplitWriter, encode_entry
from fhirimg.convert import _render_in_pool
from fhirimg.images import writer as image_writer
from fhirimg.images.binary import BinaryMode, DicomSource, dicom_source
from fhirimg.images.inline import write_ahead
from fhirimg.images.writer import PixelOptions
from tests.helpers import REPO, load, report_bytes


@pytest.fixture(scope="module")
def one_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """study_c_mixed: a bare dataset (its Binary gets a PS3.10 header), an SR, a PDF, images."""
    src = tmp_path_factory.mktemp("inline") / "in"
    shutil.copytree(REPO / "sample_data/dicom/study_c_mixed", src)
    return src


def _run(src: Path, out: Path, jobs: int) -> tuple[bytes, bytes, dict[str, Any]]:
    report = convert([src], ConvertOptions(out_dir=out, jobs=jobs, binary=BinaryMode.INLINE))
    assert len(report.studies) == 1
    (bundle,) = out.glob("study-*.json")
    assert not list(out.glob(".study-*.tmp")), "a temporary bundle file was left behind"
    doc = load(out / "report.json")
    return bundle.read_bytes(), report_bytes(out).replace(b'"jobs": 2', b'"jobs": 1'), doc


def test_pool_writes_the_bytes_one_process_writes(one_study: Path, tmp_path: Path) -> None:
    one, report_one, _ = _run(one_study, tmp_path / "one", jobs=1)
    two, report_two, doc = _run(one_study, tmp_path / "two", jobs=2)
    assert two == one
    assert report_two.replace(b"/two", b"/one") == report_one
    assert doc["studies"][0]["binaries"] == len(list(one_study.iterdir()))
    assert any("got a PS3.10 header in its Binary" in w for w in doc["studies"][0]["warnings"])


def test_a_file_that_changes_fails_the_study_as_on_one_process(
    one_study: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fault injection: one file's source claims more bytes than the file holds (as when it is
    cut while the study is written): the study fails with the same error, no file is left."""

    def longer(
        path: str, sop_class_uid: str, sop_instance_uid: str, storage: Any = ()
    ) -> DicomSource:
        source = dicom_source(path, sop_class_uid, sop_instance_uid, storage)
        if path.endswith("us_rgb.dcm"):
            return DicomSource(source.path, source.header, source.file_size + 7, source.skip)
        return source

    monkeypatch.setattr(image_writer, "dicom_source", longer)  # before the pool forks
    errors = []
    for jobs in (1, 2):
        out = tmp_path / f"j{jobs}"
        report = convert(
            [one_study], ConvertOptions(out_dir=out, jobs=jobs, binary=BinaryMode.INLINE)
        )
        (study,) = report.studies
        assert study.bundle is None
        errors.append(study.errors)
        assert not list(out.glob("study-*"))
        assert not list(out.glob(".study-*"))
    assert errors[0] == errors[1]
    assert "source changed while reading" in errors[0][0]


def test_a_head_other_than_the_one_laid_out_is_not_taken(one_study: Path, tmp_path: Path) -> None:
    """The file written ahead is thrown away, with its tasks done, when the checked head is not
    the one the offsets came from; when it is, the file holds the one-process bytes."""
    paths = sorted(str(p) for p in one_study.iterdir())
    sources = [
        dicom_source(p, "1.2.840.10008.5.1.4.1.1.7", f"1.2.3.{n}") for n, p in enumerate(paths)
    ]
    entries = [
        encode_entry(
            {"fullUrl": f"urn:uuid:{n}", "resource": {"data": "@@fhirimg-streamed-data@@"}}, s
        )
        for n, s in enumerate(sources)
    ]
    head = [encode_entry({"fullUrl": "urn:uuid:head"})]
    with ThreadPoolExecutor(2) as pool:
        kept = SplitWriter(tmp_path, "kept.json", None, None)
        ahead = write_ahead(kept, head, entries, sources, pool, 2)
        assert ahead.take(head)
        assert kept.commit() == ["kept.json"]
        one = SplitWriter(tmp_path, "one.json", None, None)
        one.add_head(head[0])
        for item in entries:
            one.place(functools.partial(_same, item))
        one.commit()
        assert (tmp_path / "kept.json").read_bytes() == (tmp_path / "one.json").read_bytes()

        thrown = SplitWriter(tmp_path, "thrown.json", None, None)
        ahead = write_ahead(thrown, head, entries, sources, pool, 2)
        assert not ahead.take([EncodedEntry(b"    {}")])
        ahead.discard()
        assert not ahead.futures
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.json", "one.json"]


def _same(item: EncodedEntry, in_first: bool) -> EncodedEntry:
    return item


def test_the_pool_writes_a_study_only_with_inline_binaries_and_fewer_studies() -> None:
    inline = PixelOptions(binary=BinaryMode.INLINE)
    with ProcessPoolExecutor(1) as pool:  # no process is started without a task
        assert _render_in_pool(pool, inline, studies=1, jobs=2)
        assert not _render_in_pool(pool, inline, studies=2, jobs=2)
        assert not _render_in_pool(pool, PixelOptions(binary=BinaryMode.BESIDE), 1, 2)
    assert not _render_in_pool(None, inline, studies=1, jobs=1)
    with ThreadPoolExecutor(1) as elsewhere:  # not the local pool (a Dask cluster's, say)
        assert not _render_in_pool(elsewhere, inline, studies=1, jobs=2)
