"""``convert --modality/--since/--patient`` on file input, and ``convert --dry-run``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from typer.testing import CliRunner

from fhirimg.cli import app
from fhirimg.convert import ConvertOptions, StudyOutcome, convert
from fhirimg.select import StudySelection
from tests.helpers import REPO, SAMPLE

runner = CliRunner()
SCHEMA = json.loads((REPO / "docs" / "cli-json.schema.json").read_text(encoding="utf-8"))

CT = "2.25.85155649098386921766494752360926339228"  # CT, 20240312, FHIRIMG-0001
MR = "2.25.199473283427071051488146072373703684864"  # MR, 20240405, FHIRIMG-0002
MIXED = "2.25.158703524657881950489834333645645616012"  # CR DOC OT SR US, 20240520, FHIRIMG-0001
SAMPLE_FILES = sum(1 for p in SAMPLE.rglob("*") if p.is_file())


def _convert(out: Path, *args: str) -> tuple[int, dict[str, Any]]:
    result = runner.invoke(app, ["convert", str(SAMPLE), "-o", str(out), "-j", "1", "-q", *args])
    assert "Traceback" not in result.output
    return result.exit_code, json.loads((out / "report.json").read_text())


def _studies(report: dict[str, Any]) -> set[str]:
    return {s["studyInstanceUid"] for s in report["studies"] if s["status"] == "written"}


def _reasons(report: dict[str, Any]) -> dict[str, int]:
    out: dict[str, int] = {}
    for f in report["files"]:
        if f["reason" if "reason" in f else "status"].startswith("filtered out"):
            out[f["reason"]] = out.get(f["reason"], 0) + 1
    return out


def test_modality_keeps_whole_studies_and_accounts_for_every_file(tmp_path: Path) -> None:
    code, report = _convert(tmp_path, "--modality", "mr", "--modality", "SR")
    assert code == 1  # the sample's truncated file
    # SR matches one series of the mixed study: the whole study is written, all its series
    assert _studies(report) == {MR, MIXED}
    mixed = next(s for s in report["studies"] if s["studyInstanceUid"] == MIXED)
    assert (mixed["series"], mixed["instances"]) == (6, 6)
    assert len(report["files"]) == SAMPLE_FILES == report["summary"]["files"]["total"]
    assert _reasons(report) == {"filtered out (--modality)": 10}  # CT, CR and the DICOMDIR's
    assert len(list(tmp_path.glob("study-*.json"))) == 2


def test_since_and_patient_together(tmp_path: Path) -> None:
    code, report = _convert(tmp_path, "--since", "2024-04-01", "--patient", "FHIRIMG-0001")
    assert code == 1
    assert _studies(report) == {MIXED}
    reasons = _reasons(report)
    assert reasons["filtered out (--patient)"] == 4  # the MR study: after the date, patient 0002
    assert reasons["filtered out (--since)"] == 10  # the CT study (20240312) and older ones
    assert len(report["files"]) == SAMPLE_FILES


def test_filtered_run_neither_prunes_nor_forgets_the_catalog(tmp_path: Path) -> None:
    code, first = _convert(tmp_path)
    assert code == 1
    before = {p.name: p.read_bytes() for p in tmp_path.glob("study-*.json")}
    assert len(before) == 5
    code, filtered = _convert(tmp_path, "--modality", "MR")
    assert code == 1
    assert _studies(filtered) == {MR}
    # the studies left out keep their bundles, untouched
    assert {p.name: p.read_bytes() for p in tmp_path.glob("study-*.json")} == before
    code, again = _convert(tmp_path)
    assert code == 1
    run = again["summary"]["run"]
    assert run["files"]["missing"] == run["files"]["pruned"] == 0
    assert run["studies"]["written"] == 5  # the filtered run marked every study to rewrite
    assert _studies(again) == _studies(first)
    assert again["summary"]["files"] == first["summary"]["files"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--since", "last week"], "--since wants a date"),
        (["--study", "1.2.3"], "need --from-dicomweb or --from-pacs"),
        (["--dry-run", "--push", "http://127.0.0.1:9/fhir"], "--dry-run reads files"),
    ],
)
def test_bad_filter_use_exits_2(tmp_path: Path, args: list[str], message: str) -> None:
    result = runner.invoke(app, ["convert", str(SAMPLE), "-o", str(tmp_path / "o"), *args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not (tmp_path / "o").exists()


def test_dry_run_lists_studies_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = runner.invoke(app, ["convert", str(SAMPLE), "-o", str(out), "-j", "1", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert not out.exists()
    for uid in (CT, MR, MIXED):
        assert f"study {uid}:" in result.stderr
    assert "FHIRIMG-000" not in result.output  # no patient data at the default level
    assert f"in {out.resolve()}/" in result.stderr
    assert "nothing written" in result.stderr


def test_dry_run_json_and_an_existing_folder_left_alone(tmp_path: Path) -> None:
    code, _ = _convert(tmp_path, "--modality", "CT")
    assert code == 1
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    result = runner.invoke(
        app,
        ["convert", str(SAMPLE), "-o", str(tmp_path), "-j", "1", "--dry-run", "--json", "-v"],
    )
    assert result.exit_code == 0, result.output
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
    doc = json.loads(result.stdout)
    jsonschema.validate(doc, SCHEMA)
    summary = doc["summary"]
    assert summary["dryRun"] is True
    assert summary["output"] == str(tmp_path.resolve())
    assert summary["studies"]["count"] == 5
    listed = {s["studyInstanceUid"]: s for s in summary["studies"]["list"]}
    assert listed[MR] == {
        "studyInstanceUid": MR,
        "patientId": "FHIRIMG-0002",  # -v: asked for
        "series": 2,
        "instances": 4,
    }
    assert summary["files"]["total"] == SAMPLE_FILES
    assert summary["files"]["failed"] == 1


def test_dry_run_with_nothing_to_convert_exits_4(tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        [
            "convert",
            str(SAMPLE),
            "-o",
            str(tmp_path / "o"),
            "-j",
            "1",
            "--dry-run",
            "--json",
            "--patient",
            "NOBODY",
        ],
    )
    assert result.exit_code == 4, result.output
    doc = json.loads(result.stdout)
    assert doc["exitCode"] == 4
    assert doc["summary"]["studies"]["list"] == []
    assert "patientId" not in json.dumps(doc)
    assert not (tmp_path / "o").exists()


def test_filters_refused_with_deidentify(tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        ["convert", str(SAMPLE), "-o", str(tmp_path / "o"), "--deidentify", "--patient", "P"],
        env={"FHIRIMG_DEID_KEY": "k" * 32},
    )
    assert result.exit_code == 2, result.output
    assert "not with --deidentify" in result.output
    assert not (tmp_path / "o").exists()


def test_dry_run_deidentified_lists_the_new_uids(tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        ["convert", str(SAMPLE / "study_b_mr"), "-o", str(tmp_path / "o"), "-j", "1"]
        + ["--dry-run", "--json", "-v", "--deidentify"],
        env={"FHIRIMG_DEID_KEY": "k" * 32},
    )
    assert result.exit_code == 0, result.output
    (study,) = json.loads(result.stdout)["summary"]["studies"]["list"]
    assert study["studyInstanceUid"] != MR
    assert study["patientId"] != "FHIRIMG-0002"
    assert (study["series"], study["instances"]) == (2, 4)
    assert not (tmp_path / "o").exists()


def test_selection_reaches_the_streaming_hook(tmp_path: Path) -> None:
    """``convert --push`` goes through :func:`convert` with ``on_study``: only the studies kept
    reach it (the push itself is tested in test_convert_push)."""
    seen: list[str] = []

    def hook(outcome: StudyOutcome, folder: Path) -> StudyOutcome:
        assert folder == tmp_path / "stream"
        seen.append(outcome.study_instance_uid)
        return outcome

    (tmp_path / "stream").mkdir()
    opts = ConvertOptions(
        out_dir=tmp_path / "out", jobs=1, select=StudySelection.of(["MR"], None, None)
    )
    report = convert([SAMPLE], opts, on_study=hook, bundle_dir=tmp_path / "stream")
    assert seen == [MR]
    # 16 filtered out, the DICOMDIR, the non-DICOM file; the truncated one failed
    assert report.files == {"converted": 4, "skipped": 18, "duplicate": 0, "failed": 1}


def test_a_filtered_run_reports_the_reading_stage(tmp_path: Path) -> None:
    """A filtered run shows "reading headers" (stage "read") like an unfiltered one: every file
    once, of the same total."""
    seen: dict[str, list[tuple[int, int | None]]] = {"filtered": [], "all": []}
    for name, select in (("filtered", StudySelection.of(["MR"], None, None)), ("all", None)):
        opts = ConvertOptions(out_dir=tmp_path / name, jobs=1)
        if select is not None:
            opts = ConvertOptions(out_dir=tmp_path / name, jobs=1, select=select)

        def progress(stage: str, advance: int, total: int | None, name: str = name) -> None:
            if stage == "read":
                seen[name].append((advance, total))

        convert([SAMPLE], opts, progress)
    for name, reads in seen.items():
        assert reads, name
        totals = {total for _, total in reads}
        assert len(totals) == 1, (name, reads)
        assert sum(advance for advance, _ in reads) == totals.pop(), (name, reads)
    assert seen["filtered"][-1][1] == seen["all"][-1][1]
