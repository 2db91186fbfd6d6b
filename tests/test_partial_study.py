"""One invalid instance no longer fails its whole study (issue 11, item 12).

A study of three synthetic instances (pydicom's CT_small.dcm with UIDs of their own) where one
carries a value that makes its instance invalid: it converts with the other two, the bad file is
``failed`` with the validation reason, the counts describe what is written, the bundle validates
with ``fhirimg validate --strict`` and is the same bytes on every run. ``--all-or-nothing`` fails
the study as before. :mod:`fhirimg.partial` itself is tested on hand-made findings.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import generate_uid
from typer.testing import CliRunner

from fhirimg.cli import app
from fhirimg.jsonio import JSON
from fhirimg.model import InstanceRecord
from fhirimg.partial import MAX_ROUNDS, Attempt, settle, trace
from fhirimg.validate import Finding, Severity
from tests.helpers import bundles, load, pydicom_file, report_bytes, resources

runner = CliRunner()

STUDY = generate_uid(entropy_srcs=["partial", "study"])
SERIES = generate_uid(entropy_srcs=["partial", "series"])

# Values seen in the wild that make one instance invalid, and what the reason says.
BAD_VALUES = {
    "sop-uid-leading-zero": ("SOPInstanceUID", "1.2.826.0.1.3680043.8.498.07", "leading zero"),
    "sop-uid-too-long": ("SOPInstanceUID", "1.2.826.0.1.3680043.8.498." + "1" * 50, "valid id"),
    "sop-class-not-a-uid": ("SOPClassUID", "1.2.840.10008.5.1.4.1.1.2.CT", "sopClass.code"),
    "series-uid-not-a-uid": ("SeriesInstanceUID", "1.2.840.113619.2.x", "only digits and dots"),
}


def _instance(folder: Path, n: int, **values: Any) -> Path:
    ds = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    ds.StudyInstanceUID = STUDY
    ds.SeriesInstanceUID = SERIES
    ds.SOPInstanceUID = generate_uid(entropy_srcs=["partial", "instance", str(n)])
    ds.InstanceNumber = n + 1
    with warnings.catch_warnings():  # pydicom warns of the invalid UIDs made on purpose
        warnings.simplefilter("ignore")
        for keyword, value in values.items():
            setattr(ds, keyword, value)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"i{n}.dcm"
    ds.save_as(path)
    return path


def _study(folder: Path, keyword: str, value: str) -> list[Path]:
    """Three instances; the second has ``keyword`` = ``value``."""
    return [_instance(folder, n, **({keyword: value} if n == 1 else {})) for n in range(3)]


def _convert(src: Path, out: Path, *options: str) -> tuple[int, dict[str, Any]]:
    result = runner.invoke(app, ["convert", str(src), "-o", str(out), "-q", *options])
    assert "Traceback" not in result.output, result.output
    return result.exit_code, load(out / "report.json")


def _files(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f["path"]: f for f in report["files"]}


@pytest.mark.parametrize("case", sorted(BAD_VALUES))
@pytest.mark.parametrize("version", ["r4", "r5"])
def test_bad_instance_is_left_out_and_the_rest_written(
    tmp_path: Path, case: str, version: str
) -> None:
    keyword, value, why = BAD_VALUES[case]
    good0, bad, good2 = _study(tmp_path / "in", keyword, value)
    code, report = _convert(tmp_path / "in", tmp_path / "out", "--fhir-version", version)
    assert code == 1, report["summary"]
    files = _files(report)
    assert files[str(bad)]["status"] == "failed"
    assert files[str(bad)]["reason"].startswith("instance not valid: Bundle.entry[")
    assert why in files[str(bad)]["reason"]
    assert files[str(good0)]["status"] == files[str(good2)]["status"] == "converted"
    (study_report,) = report["studies"]
    assert study_report["status"] == "written"
    assert study_report["instances"] == 2
    assert study_report["series"] == 1
    assert study_report["droppedFiles"] == [{"path": str(bad), "reason": files[str(bad)]["reason"]}]

    (bundle,) = bundles(tmp_path / "out").values()
    (study,) = resources(bundle, "ImagingStudy")
    uids = [i["uid"] for s in study["series"] for i in s["instance"]]
    assert len(uids) == 2
    assert value not in uids
    assert study["numberOfInstances"] == 2
    assert study["numberOfSeries"] == len(study["series"]) == 1
    assert study["series"][0]["numberOfInstances"] == 2

    checked = runner.invoke(app, ["validate", "--strict", str(tmp_path / "out")])
    assert checked.exit_code == 0, checked.output


def test_all_or_nothing_fails_the_study(tmp_path: Path) -> None:
    paths = _study(tmp_path / "in", *BAD_VALUES["sop-uid-leading-zero"][:2])
    code, report = _convert(tmp_path / "in", tmp_path / "out", "--all-or-nothing")
    assert code == 1
    assert bundles(tmp_path / "out") == {}
    (study_report,) = report["studies"]
    assert study_report["status"] == "failed"
    assert "droppedFiles" not in study_report
    files = _files(report)
    for path in paths:
        assert files[str(path)]["status"] == "failed"
        assert files[str(path)]["reason"].startswith("study not converted: ")
        assert "leading zero" in files[str(path)]["reason"]


def test_every_instance_bad_fails_the_study(tmp_path: Path) -> None:
    paths = [
        _instance(tmp_path / "in", n, SOPInstanceUID=f"1.2.826.0.1.3680043.8.498.0{n}")
        for n in range(3)
    ]
    code, report = _convert(tmp_path / "in", tmp_path / "out")
    assert code == 1
    assert bundles(tmp_path / "out") == {}
    assert report["studies"][0]["status"] == "failed"
    files = _files(report)
    assert {files[str(p)]["status"] for p in paths} == {"failed"}


def test_rebuilt_bundle_is_byte_identical_across_runs(tmp_path: Path) -> None:
    _study(tmp_path / "in", *BAD_VALUES["sop-uid-too-long"][:2])
    runs = []
    for n, jobs in enumerate(["1", "2", "1"]):
        out = tmp_path / f"out{n}"
        _convert(tmp_path / "in", out, "-j", jobs)
        runs.append(
            {p.name: p.read_bytes() for p in sorted(out.glob("study-*.json"))}
            | {"report.json": report_bytes(out).replace(str(out).encode(), b"OUT")}
        )
    assert len(runs[0]) == 2
    assert runs[0] == runs[1] == runs[2]


def test_binaries_of_the_dropped_instance_are_not_written(tmp_path: Path) -> None:
    keyword, value, _ = BAD_VALUES["sop-class-not-a-uid"]
    _study(tmp_path / "in", keyword, value)
    code, report = _convert(tmp_path / "in", tmp_path / "out", "--binary", "inline", "--media")
    assert code == 1
    (bundle,) = bundles(tmp_path / "out").values()
    assert len(resources(bundle, "Binary")) == 2
    assert len(resources(bundle, "Media")) == 2
    assert report["studies"][0]["renderedImages"] == 2
    (study,) = resources(bundle, "ImagingStudy")
    assert study["numberOfInstances"] == 2
    assert report["studies"][0]["binaries"] == 2
    checked = runner.invoke(app, ["validate", "--strict", str(tmp_path / "out")])
    assert checked.exit_code == 0, checked.output


def test_incremental_rerun_keeps_the_dropped_file_failed(tmp_path: Path) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    _, bad, _ = _study(src, *BAD_VALUES["sop-uid-leading-zero"][:2])
    first_code, first = _convert(src, out)
    (name,) = bundles(out)
    written = (out / name).stat().st_mtime_ns

    code, again = _convert(src, out)
    assert code == first_code == 1
    assert again["summary"]["run"]["studies"]["unchanged"] == 1
    assert (out / name).stat().st_mtime_ns == written  # not rewritten
    assert _files(again)[str(bad)] == _files(first)[str(bad)]
    assert again["summary"]["files"]["failed"] == 1

    # The file mended: the next run reads it again and the study gets its three instances.
    shutil.copy(_instance(tmp_path / "fixed", 1), bad)
    code, mended = _convert(src, out)
    assert code == 0, mended["summary"]
    assert _files(mended)[str(bad)]["status"] == "converted"
    assert "droppedFiles" not in mended["studies"][0]
    (study,) = resources(load(out / name), "ImagingStudy")
    assert study["numberOfInstances"] == 3


def test_switching_to_all_or_nothing_rewrites_the_study(tmp_path: Path) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    _study(src, *BAD_VALUES["sop-uid-leading-zero"][:2])
    _convert(src, out)
    code, report = _convert(src, out, "--all-or-nothing")
    assert code == 1
    assert report["studies"][0]["status"] == "failed"
    assert report["summary"]["files"]["failed"] == 3


# --- fhirimg.partial on hand-made findings ---


def _records(series: list[str]) -> list[InstanceRecord]:
    return [
        InstanceRecord(f"f{n}.dcm", 0, "1.2.1", f"1.2.3.{n}", "1.2.9", uid, instance_number=str(n))
        for n, uid in enumerate(series)
    ]


def _bundle(records: list[InstanceRecord]) -> JSON:
    study = {"resourceType": "ImagingStudy", "series": []}
    return {
        "resourceType": "Bundle",
        "entry": [
            {"fullUrl": "urn:uuid:p", "resource": {"resourceType": "Patient"}},
            {"fullUrl": "urn:uuid:s", "resource": study},
            *({"fullUrl": f"urn:uuid:b{r.path}", "resource": {}} for r in records),
        ],
    }


def _error(location: str) -> Finding:
    return Finding(Severity.ERROR, "<memory>", location, "bad", "schema")


def test_trace_by_location() -> None:
    recs = _records(["1.5", "1.4", "1.5"])  # series order: 1.4 (f1), then 1.5 (f0, f2)
    bundle = _bundle(recs)
    owners = {f"urn:uuid:b{r.path}": r for r in recs}
    errors = [
        _error("Bundle.entry[1].resource.series[1].instance[1].uid"),  # f2
        _error("Bundle.entry[1].resource.series[0].modality.code"),  # f1 (its series)
        _error("Bundle.entry[2].resource.data"),  # f0's Binary
        _error("Bundle.entry[1].resource.description"),  # the study
        _error("Bundle.entry[0].resource.name[0]"),  # the Patient
        _error("Bundle"),
    ]
    instances, study = trace(Attempt(bundle, errors, None, owners), recs)
    assert {recs[n].path: f.location for n, f in instances.items()} == {
        "f2.dcm": errors[0].location,
        "f1.dcm": errors[1].location,
        "f0.dcm": errors[2].location,
    }
    assert [f.location for f in study] == [e.location for e in errors[3:]]


def _build_failing(bad: set[str], rounds_bad: list[set[str]] | None = None) -> Any:
    """A build whose ImagingStudy instances listed in ``bad`` have an error; the builds it made."""
    built: list[list[str]] = []

    def build(recs: list[InstanceRecord]) -> Attempt[list[str]]:
        built.append([r.path for r in recs])
        now = rounds_bad[len(built) - 1] if rounds_bad else bad
        errors = [
            _error(f"Bundle.entry[1].resource.series[0].instance[{j}].uid")
            for j, r in enumerate(recs)
            if r.path in now
        ]
        return Attempt(_bundle(recs), errors, [r.path for r in recs])

    return build, built


def test_settle_drops_and_rebuilds() -> None:
    recs = _records(["1.4"] * 3)
    build, built = _build_failing({"f1.dcm"})
    settled = settle(recs, build)
    assert built == [["f0.dcm", "f1.dcm", "f2.dcm"], ["f0.dcm", "f2.dcm"]]
    assert settled.errors == []
    assert [path for path, _ in settled.dropped] == ["f1.dcm"]
    assert settled.dropped[0][1] == (
        "instance not valid: Bundle.entry[1].resource.series[0].instance[1].uid: bad [schema]"
    )
    assert settled.attempt.value == ["f0.dcm", "f2.dcm"]


def test_settle_all_or_nothing_and_all_bad() -> None:
    recs = _records(["1.4"] * 3)
    build, built = _build_failing({"f1.dcm"})
    settled = settle(recs, build, all_or_nothing=True)
    assert len(built) == 1
    assert settled.dropped == []
    assert len(settled.errors) == 1
    build, built = _build_failing({"f0.dcm", "f1.dcm", "f2.dcm"})
    settled = settle(recs, build)
    assert len(built) == 1  # nothing would be left: the study fails as a whole
    assert settled.dropped == []
    assert len(settled.errors) == 3


def test_settle_is_bounded() -> None:
    """A new instance goes bad in each round: after MAX_ROUNDS rebuilds the errors stay."""
    recs = _records(["1.4"] * 6)
    rounds = [{f"f{n}.dcm"} for n in range(MAX_ROUNDS + 1)]
    build, built = _build_failing(set(), rounds)
    settled = settle(recs, build)
    assert len(built) == MAX_ROUNDS + 1
    assert [p for p, _ in settled.dropped] == [f"f{n}.dcm" for n in range(MAX_ROUNDS)]
    assert len(settled.errors) == 1


def test_settle_study_error_drops_nothing() -> None:
    recs = _records(["1.4"] * 2)

    def build(recs: list[InstanceRecord]) -> Attempt[None]:
        errors = [
            _error("Bundle.entry[1].resource.series[0].instance[0].uid"),
            _error("Bundle.entry[1].resource.started"),
        ]
        return Attempt(_bundle(recs), errors, None)

    settled = settle(recs, build)
    assert settled.dropped == []
    assert len(settled.errors) == 2


def test_watch_once_all_or_nothing(tmp_path: Path) -> None:
    """watch takes the option too (``--once``: one conversion of the folder)."""
    src, out = tmp_path / "in", tmp_path / "out"
    _study(src, *BAD_VALUES["sop-uid-leading-zero"][:2])
    result = runner.invoke(app, ["watch", str(src), "-o", str(out), "--once", "-q"])
    assert result.exit_code == 1, result.output
    assert load(out / "report.json")["studies"][0]["status"] == "written"
    result = runner.invoke(
        app, ["watch", str(src), "-o", str(out), "--once", "-q", "--all-or-nothing"]
    )
    assert result.exit_code == 1, result.output
    report = load(out / "report.json")
    assert report["studies"][0]["status"] == "failed"
    assert report["summary"]["files"]["failed"] == 3
